"""Requests in the gateway's PostgreSQL state, shared by every gateway on it.

- Records: the store's generic records, namespace ``requests`` (one per request, compare-and-set).
- Files: ``saferoom_request_files``, each file in chunks of :data:`CHUNK` bytes of bytea, written and read
  chunk by chunk (a file is never whole in memory); the caps on uploads are the engine's, as with folders.
  A gateway works on a file through a local copy named by its content hash, brought from PostgreSQL when
  first asked, so a copy is never of a version other than the one the record names. Copies go when the
  request is done on that gateway (released, rejected, withdrawn) and all of them when it stops.
- The lock: a PostgreSQL advisory lock, held by whichever gateway changes a request.
- Changes seen elsewhere: :meth:`PgRequests.stamp` is the sum of the records' versions, which grows on every
  write by any gateway; the gateway's sweep (every second) compares it, so a grant approved on one gateway
  works on the others within a second and a round trip.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saferoom import scratch
from saferoom.errors import NotFound
from saferoom.files import fsync_dir
from saferoom.requests.model import File, Request, State
from saferoom.requests.store import REPORT, valid

if TYPE_CHECKING:
    import psycopg

    from saferoom.store.postgres import PostgresStore

NAMESPACE = "requests"
REQUESTS_LOCK = 0x5AFE_0010
CHUNK = 1 << 20
DONE = frozenset({State.RELEASED, State.REJECTED, State.WITHDRAWN})  # no file of theirs is read again


class PgRequests:
    """Requests in ``store`` (PostgreSQL); ``cache`` is this gateway's folder for uploads and local copies."""

    def __init__(self, store: PostgresStore, cache: Path) -> None:
        self.store, self.cache = store, cache
        cache.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._thread_lock = threading.Lock()

    def get(self, request_id: str) -> Request | None:
        if not valid(request_id):
            return None
        found = self.store.get(NAMESPACE, request_id)
        return None if found is None else Request.from_dict(dict(found.value))

    def put(self, request: Request) -> None:
        """Written under ``locked`` (every engine change is), so the version read is the one replaced."""
        found = self.store.get(NAMESPACE, request.id)
        self.store.put(NAMESPACE, request.id, request.to_dict(), 0 if found is None else found.version)
        if request.state in DONE:
            shutil.rmtree(self.folder(request.id), ignore_errors=True)  # this gateway's copies are not read again

    def all(self) -> list[Request]:
        return stored(self.store)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One writer across every gateway: a transaction-scoped advisory lock, released however the block ends
        (a gateway killed while holding it releases it with its connection)."""
        with self._thread_lock, self.store.db.transaction() as db:
            db.execute("SELECT pg_advisory_xact_lock(%s)", (REQUESTS_LOCK,))
            yield

    def stamp(self) -> int:
        with self.store.db.transaction() as db:
            row = db.execute("SELECT coalesce(sum(version), 0) FROM saferoom_records WHERE namespace = %s",
                             (NAMESPACE,)).fetchone()
        return int(row[0]) if row else 0

    def folder(self, request_id: str) -> Path:
        if not valid(request_id):
            raise ValueError("not a request id")
        return self.cache / request_id

    def keep(self, request_id: str, part: Path, file: File) -> None:
        with self.store.db.transaction() as db, part.open("rb") as source:
            db.execute("DELETE FROM saferoom_request_files WHERE request_id = %s AND name = %s", (request_id, file.name))
            write_chunks(db, request_id, file.name, file.sha256, source)
        local = self._local(request_id, file)
        local.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.replace(part, local)

    def path(self, request_id: str, file: File) -> Path:
        local = self._local(request_id, file)
        if not local.exists():
            self._bring(request_id, file, local)
        return local

    def save_report(self, request_id: str, data: bytes) -> None:
        with self.store.db.transaction() as db:
            db.execute("DELETE FROM saferoom_request_files WHERE request_id = %s AND name = %s", (request_id, REPORT))
            db.execute("INSERT INTO saferoom_request_files VALUES (%s, %s, %s, 0, %s)",
                       (request_id, REPORT, hashlib.sha256(data).hexdigest(), data))

    def load_report(self, request_id: str) -> bytes | None:
        with self.store.db.transaction() as db:
            row = db.execute("SELECT chunk FROM saferoom_request_files WHERE request_id = %s AND name = %s",
                             (request_id, REPORT)).fetchone()
        return None if row is None else bytes(row[0])

    def close(self) -> None:
        scratch.remove(self.cache)

    def _local(self, request_id: str, file: File) -> Path:
        return self.folder(request_id) / file.sha256 / file.name

    def _bring(self, request_id: str, file: File, local: Path) -> None:
        """Copy the file from PostgreSQL, chunk by chunk, to a part file renamed into place once its hash matches."""
        local.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        part = local.with_name(f".{file.name}.{os.getpid()}.{threading.get_ident()}.part")
        digest = hashlib.sha256()
        try:
            with self.store.db.transaction() as db, part.open("wb") as out:
                each = db.cursor(name="saferoom_request_file")  # server side: rows arrive as they are read
                each.itersize = 4
                each.execute("SELECT chunk FROM saferoom_request_files WHERE request_id = %s AND name = %s "
                             "AND sha256 = %s ORDER BY n", (request_id, file.name, file.sha256))
                for (chunk,) in each:
                    digest.update(chunk)
                    out.write(chunk)
                each.close()
            if digest.hexdigest() != file.sha256:
                raise NotFound(f"{file.name} in request {request_id} is not in the gateway's state in this version; "
                               "open the request again")
            os.replace(part, local)
            fsync_dir(local.parent)
        finally:
            part.unlink(missing_ok=True)


def stored(store: PostgresStore) -> list[Request]:
    """Every request ``store`` holds, oldest first."""
    with store.db.transaction() as db:
        rows = db.execute("SELECT value FROM saferoom_records WHERE namespace = %s", (NAMESPACE,)).fetchall()
    return sorted((Request.from_dict(dict(row[0])) for row in rows), key=lambda r: r.created)


def approved_packages(url: str) -> list[str]:
    """The requirements approved package requests in the PostgreSQL state at ``url`` add to the next sync."""
    from saferoom.requests.packages import requirements
    from saferoom.store.postgres import PostgresStore

    store = PostgresStore(url)
    try:
        return requirements(stored(store))
    finally:
        store.close()


def write_chunks(db: psycopg.Connection[Any], request_id: str, name: str, sha256: str, source: Any) -> None:
    """Insert ``source`` (a binary file) as chunks, reading one chunk at a time."""
    n = 0
    while chunk := source.read(CHUNK):
        db.execute("INSERT INTO saferoom_request_files VALUES (%s, %s, %s, %s, %s)", (request_id, name, sha256, n, chunk))
        n += 1


def copier(root: Path) -> Callable[[psycopg.Connection[Any]], int]:
    """What `saferoom state migrate` runs inside its transaction: the requests under ``root`` (a state folder's
    ``requests``) copied in, records and files; returns how many requests."""
    return lambda db: copy_requests(db, root)


def copy_requests(db: psycopg.Connection[Any], root: Path) -> int:
    from psycopg.types.json import Jsonb

    records = sorted((root / "records").glob("rq_*.json")) if (root / "records").is_dir() else []
    for path in records:
        data = json.loads(path.read_text())
        request = Request.from_dict(dict(data))
        added = db.execute("INSERT INTO saferoom_records VALUES (%s, %s, 1, %s) ON CONFLICT DO NOTHING RETURNING 1",
                           (NAMESPACE, request.id, Jsonb(data))).fetchone()
        if added is not None:
            _copy_files(db, root / "files" / request.id, request)
    return len(records)


def _copy_files(db: psycopg.Connection[Any], folder: Path, request: Request) -> None:
    for file in request.files:
        with (folder / file.name).open("rb") as source:
            write_chunks(db, request.id, file.name, file.sha256, source)
    report = folder / REPORT
    if report.exists():
        data = report.read_bytes()
        db.execute("INSERT INTO saferoom_request_files VALUES (%s, %s, %s, 0, %s)",
                   (request.id, REPORT, hashlib.sha256(data).hexdigest(), data))
