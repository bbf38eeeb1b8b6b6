"""Results kept for the web page, read back a page at a time.

A browser cannot hold a large result: 50,000 rows put into a page freeze it for
seconds. So for the page, the gateway writes a query's rows to an Arrow file in
its state folder (the same rows, cut at the same limits, recorded in the audit
log like any other result) and sends only the first page; the page asks for the
next ones by the result's id. Only the user and role that ran the query can read
its pages. Each user keeps their last few results for a while; the folder is
emptied when the gateway starts and stops, so no result outlives its gateway.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from saferoom.decision import Decision
from saferoom.errors import LimitExceeded, NotFound, SaferoomError, UsageError
from saferoom.result import Result
from saferoom.server.streams import Outcome, trailer

PAGE_ROWS = 100  # the first page, when the request names no size
MAX_PAGE_ROWS = 1000  # a page the browser still lays out at once (and the most a chart draws)
KEEP_PER_USER = 3  # the results a user can page through at once: their latest queries
KEEP_SECONDS = 30 * 60
MAX_BYTES = 256 << 20  # a result is kept up to this size; past it the page says the rest was not kept


@dataclass(frozen=True)
class Kept:
    """One result on disk: whose it is, where, and how many rows it holds."""

    id: str
    user: str
    role: str
    path: Path
    rows: int
    made: float
    cut: bool  # the size cap stopped it: the rows after ``rows`` were not kept


class Pages:
    """The kept results of one gateway, in ``folder`` (private to the gateway, like its state)."""

    def __init__(self, folder: Path, *, keep: int = KEEP_PER_USER, seconds: float = KEEP_SECONDS,
                 max_bytes: int = MAX_BYTES) -> None:
        self.folder, self.keep, self.seconds, self.max_bytes = folder, keep, seconds, max_bytes
        shutil.rmtree(folder, ignore_errors=True)  # what a gateway killed before it could clean up left behind
        folder.mkdir(mode=0o700, parents=True)
        self._kept: dict[str, Kept] = {}
        self._lock = threading.Lock()

    def body(self, result: Result, outcome: Outcome, decision: Decision, size: int) -> Iterator[bytes]:
        """The whole response for the page: the decision, the columns and their kinds, the first ``size`` rows,
        the status (rows in all, cut, notices, error) and the kept result's id for the pages after it."""
        kept = None
        try:
            kept = self._spool(result, outcome, decision)
        except SaferoomError as exc:
            outcome.error = exc
        status = json.loads(trailer(result, outcome))
        if kept is not None and kept.cut:
            status["notices"].append(self._cut_notice(kept.rows))
        first = self.page(kept.user, kept.role, kept.id, 0, size) if kept else {"rows": []}
        body = {"decision": decision.to_dict(), "columns": result.schema.names, "kinds": kinds(result.schema),
                "rows": first["rows"], "status": status, "result": _summary(kept)}
        outcome.count(encoded := json.dumps(body, default=str).encode())
        yield encoded

    def _spool(self, result: Result, outcome: Outcome, decision: Decision) -> Kept:
        path = self.folder / f"{uuid.uuid4().hex}.arrow"
        try:
            cut = self._write(path, result, outcome)
        except OSError as exc:
            path.unlink(missing_ok=True)
            raise LimitExceeded(f"the gateway could not keep this result for the page ({str(exc).splitlines()[0]}); "
                                "add a limit or an aggregate to the query, or fetch it with the Python client") from None
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        kept = Kept(uuid.uuid4().hex, decision.user, decision.role, path, outcome.rows, time.monotonic(), cut)
        self._add(kept)
        return kept

    def _write(self, path: Path, result: Result, outcome: Outcome) -> bool:
        """Write the rows to ``path``; whether the size cap stopped it first."""
        cut = False
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, result.schema) as writer:
            path.chmod(0o600)
            for batch in result.stream():
                writer.write_batch(batch)
                outcome.rows += batch.num_rows
                if sink.tell() > self.max_bytes:
                    result.close()  # the engine stops: nobody will see the rest
                    cut = True
                    break
        outcome.bytes += path.stat().st_size
        return cut

    def _cut_notice(self, rows: int) -> str:
        return (f"the web page keeps only the first {rows:,} rows ({self.max_bytes >> 20} MB) of this result; "
                "narrow the query, or fetch the whole result with the Python client")

    def _add(self, kept: Kept) -> None:
        with self._lock:
            self._kept[kept.id] = kept
            mine = sorted((k for k in self._kept.values() if k.user == kept.user), key=lambda k: k.made)
            gone = mine[: max(0, len(mine) - self.keep)] + self._expired()
            for old in gone:
                self._forget(old)

    def _expired(self) -> list[Kept]:
        horizon = time.monotonic() - self.seconds
        return [k for k in self._kept.values() if k.made < horizon]

    def _forget(self, kept: Kept) -> None:
        if self._kept.pop(kept.id, None) is not None:
            kept.path.unlink(missing_ok=True)

    def page(self, user: str, role: str, result_id: str, offset: int, size: int) -> dict[str, Any]:
        """Rows ``offset`` to ``offset + size`` of a kept result, for the user and role that ran it only."""
        if not 1 <= size <= MAX_PAGE_ROWS or offset < 0:
            raise UsageError(f"a page is 1 to {MAX_PAGE_ROWS:,} rows from an offset of 0 or more")
        kept = self._find(user, role, result_id)
        with pa.memory_map(str(kept.path)) as source:  # read in place: only the page's rows are touched
            rows = pa.ipc.open_file(source).read_all().slice(offset, size).to_pylist()
        return {"result": kept.id, "offset": offset, "total": kept.rows, "rows": [list(r.values()) for r in rows]}

    def _find(self, user: str, role: str, result_id: str) -> Kept:
        with self._lock:
            for old in self._expired():
                self._forget(old)
            kept = self._kept.get(result_id)
        if kept is None or (kept.user, kept.role) != (user, role):  # someone else's result is as absent as a lost one
            raise NotFound("that result is no longer kept (results are kept for 30 minutes, the latest 3 per user); "
                           "run the query again")
        return kept

    def drop(self, user: str) -> int:
        """Forget every result of ``user`` (on sign-out); how many there were."""
        with self._lock:
            mine = [k for k in self._kept.values() if k.user == user]
            for kept in mine:
                self._forget(kept)
        return len(mine)

    def close(self) -> None:
        with self._lock:
            self._kept.clear()
        shutil.rmtree(self.folder, ignore_errors=True)


def kinds(schema: pa.Schema) -> list[str]:
    """Each column as the page's chart reads it: number, time, text or other."""
    return [_kind(field.type) for field in schema]


def _kind(kind: pa.DataType) -> str:
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        return "number"
    if pa.types.is_temporal(kind):
        return "time"
    return "text" if pa.types.is_string(kind) or pa.types.is_large_string(kind) else "other"


def _summary(kept: Kept | None) -> dict[str, Any] | None:
    return None if kept is None else {"id": kept.id, "rows": kept.rows}
