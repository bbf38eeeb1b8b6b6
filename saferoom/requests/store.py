"""Where requests are kept: one JSON record per request, and each request's files, under the gateway's state.

The engine speaks to :class:`RequestStore` only (records and a lock); a store on another backend
(a database shared by several gateways) implements the same few methods.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from saferoom.files import atomic_write
from saferoom.requests.model import Request

ID_CHARS = frozenset("rq_0123456789abcdef")


class RequestStore(Protocol):
    def get(self, request_id: str) -> Request | None: ...

    def put(self, request: Request) -> None: ...

    def all(self) -> list[Request]: ...

    def locked(self) -> contextlib.AbstractContextManager[None]: ...

    def folder(self, request_id: str) -> Path: ...

    def stamp(self) -> int: ...


class FileStore:
    """Records in ``ROOT/records/<id>.json`` (written whole, atomically); files in ``ROOT/files/<id>/``.

    One writer at a time, across threads and processes (``locked``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("records", "files"):
            (root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        self._thread_lock = threading.Lock()

    def get(self, request_id: str) -> Request | None:
        if not _valid(request_id):
            return None  # an id that could be a path is no id
        try:
            return Request.from_dict(json.loads((self.root / "records" / f"{request_id}.json").read_text()))
        except FileNotFoundError:
            return None

    def put(self, request: Request) -> None:
        atomic_write(self.root / "records" / f"{request.id}.json", json.dumps(request.to_dict(), indent=1).encode())

    def all(self) -> list[Request]:
        found = (self.get(p.stem) for p in (self.root / "records").glob("rq_*.json"))
        return sorted((r for r in found if r is not None), key=lambda r: r.created)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with self._thread_lock, (self.root / ".lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def stamp(self) -> int:
        """Changes whenever a record is written (by any process sharing the folder): a record is renamed in."""
        return (self.root / "records").stat().st_mtime_ns

    def folder(self, request_id: str) -> Path:
        if not _valid(request_id):
            raise ValueError("not a request id")
        return self.root / "files" / request_id


def _valid(request_id: str) -> bool:
    return request_id.startswith("rq_") and len(request_id) == 23 and set(request_id) <= ID_CHARS
