"""Where requests are kept: one record per request, and each request's files, in the gateway's state.

The engine speaks to :class:`RequestStore` only. :class:`FileStore` keeps them under a folder (the state
folder's ``requests``, or ``serve --requests DIR``); :class:`saferoom.requests.pgstore.PgRequests` keeps
them in the gateway's PostgreSQL state, for several gateways. Either way a file is worked on through a
local path (``path``): the folder itself, or a copy a gateway brings from PostgreSQL when first asked.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from saferoom.files import atomic_write, fsync_dir
from saferoom.requests.model import File, Request

ID_CHARS = frozenset("rq_0123456789abcdef")


class RequestStore(Protocol):
    def get(self, request_id: str) -> Request | None: ...

    def put(self, request: Request) -> None: ...

    def all(self) -> list[Request]: ...

    def locked(self) -> contextlib.AbstractContextManager[None]: ...

    def stamp(self) -> int: ...

    def folder(self, request_id: str) -> Path:
        """This gateway's working folder for the request: uploads arrive here before they are kept."""
        ...

    def keep(self, request_id: str, part: Path, file: File) -> None:
        """Make the upload at ``part`` (in ``folder``) the request's file ``file.name``, durably."""
        ...

    def path(self, request_id: str, file: File) -> Path:
        """The file, in exactly the version ``file`` names when the store holds one per version, on local disk."""
        ...

    def save_report(self, request_id: str, data: bytes) -> None: ...

    def load_report(self, request_id: str) -> bytes | None: ...

    def close(self) -> None: ...


REPORT = "check.json"


class FileStore:
    """Records in ``ROOT/records/<id>.json`` (written whole, atomically); files in ``ROOT/files/<id>/``.

    One writer at a time, across threads and processes (``locked``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("records", "files"):
            (root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        self._thread_lock = threading.Lock()

    def get(self, request_id: str) -> Request | None:
        if not valid(request_id):
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
        if not valid(request_id):
            raise ValueError("not a request id")
        return self.root / "files" / request_id

    def keep(self, request_id: str, part: Path, file: File) -> None:
        os.replace(part, self.folder(request_id) / file.name)
        fsync_dir(self.folder(request_id))

    def path(self, request_id: str, file: File) -> Path:
        return self.folder(request_id) / file.name  # one version per name: the caller checks its hash

    def save_report(self, request_id: str, data: bytes) -> None:
        atomic_write(self.folder(request_id) / REPORT, data)

    def load_report(self, request_id: str) -> bytes | None:
        try:
            return (self.folder(request_id) / REPORT).read_bytes()
        except FileNotFoundError:
            return None

    def close(self) -> None:
        """Nothing is held open between calls."""


def valid(request_id: str) -> bool:
    return request_id.startswith("rq_") and len(request_id) == 23 and set(request_id) <= ID_CHARS
