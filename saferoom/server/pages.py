"""Results kept for the web page, read back a page at a time.

A browser cannot hold a large result: 50,000 rows put into a page freeze it for
seconds. So for the page, the gateway writes a query's rows to an Arrow file in
its state folder (the same rows, cut at the same limits, recorded in the audit
log like any other result) and sends only the first page; the page asks for the
next ones by the result's id. Only the user and role that ran the query can read
its pages, and only under the policy it ran under. Each user keeps their last
few results for a while, all users together a bounded amount; the folder is
emptied when the gateway starts and stops, so no result outlives its gateway.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from saferoom.decision import Decision
from saferoom.errors import LimitExceeded, NotFound, SaferoomError, UsageError
from saferoom.result import Result
from saferoom.server.streams import Outcome, json_rows, trailer

PAGE_ROWS = 100  # the first page, when the request names no size
MAX_PAGE_ROWS = 1000  # a page the browser still lays out at once (and the most a chart draws)
PAGE_BYTES = 4 << 20  # a page of wide rows holds fewer of them: the page goes on from where it stopped
KEEP_PER_USER = 3  # the results a user can page through at once: their latest queries
KEEP_SECONDS = 30 * 60
MAX_BYTES = 256 << 20  # one result is kept up to this size; past it the page says the rest was not kept
MAX_TOTAL_BYTES = 4 << 30  # all users' kept results together; the oldest go first
READS_PER_USER = 2  # page reads of one user at once: each holds a page in memory


@dataclass(frozen=True)
class Kept:
    """One result on disk: whose it is, under which policy, where, and how many rows it holds."""

    id: str
    user: str
    role: str
    policy: str  # the policy's hash: a reload that changes it makes the result unreadable
    path: Path
    rows: int
    size: int
    made: float
    cut: bool  # the size cap stopped it: rows after ``rows`` were not kept


class Pages:
    """The kept results of one gateway, in ``folder`` (private to the gateway, like its state)."""

    def __init__(self, folder: Path, *, keep: int = KEEP_PER_USER, seconds: float = KEEP_SECONDS,
                 max_bytes: int = MAX_BYTES, max_total: int = MAX_TOTAL_BYTES) -> None:
        self.folder, self.keep, self.seconds = folder, keep, seconds
        self.max_bytes, self.max_total = max_bytes, max_total
        shutil.rmtree(folder, ignore_errors=True)  # what a gateway killed before it could clean up left behind
        folder.mkdir(mode=0o700, parents=True)
        self._kept: dict[str, Kept] = {}
        self._reading: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()

    # keeping ---------------------------------------------------------------
    def body(self, result: Result, outcome: Outcome, decision: Decision, policy: str, size: int) -> Iterator[bytes]:
        """The whole response for the page: the decision, the columns and their kinds, the first ``size`` rows,
        the status (rows in all, cut, notices, error) and the kept result's id for the pages after it."""
        kept, first = None, None
        try:
            kept, first = self._spool(result, outcome, decision, policy, size)
        except SaferoomError as exc:
            outcome.error = exc
        status = json.loads(trailer(result, outcome))
        if kept is not None and kept.cut:
            status["truncated"] = True
            status["notices"].append(self._cut_notice(kept.rows))
        head = {"decision": decision.to_dict(), "columns": result.schema.names, "kinds": kinds(result.schema),
                "status": status, "result": None if kept is None else {"id": kept.id, "rows": kept.rows}}
        encoded = json.dumps(head).encode()[:-1] + b', "rows": ' + (first or b"[]") + b"}"
        yield outcome.count(encoded)

    def _spool(self, result: Result, outcome: Outcome, decision: Decision, policy: str,
               size: int) -> tuple[Kept, bytes]:
        path = self.folder / f"{uuid.uuid4().hex}.arrow"
        try:
            outcome.cut = self._write(path, result, outcome)
            kept = Kept(uuid.uuid4().hex, decision.user, decision.role, policy, path, outcome.rows,
                        path.stat().st_size, time.monotonic(), outcome.cut)
            first = self._read(path, 0, size).encode()  # before it is added: nothing can evict it yet
        except OSError as exc:
            path.unlink(missing_ok=True)
            raise LimitExceeded(f"the gateway could not keep this result for the page ({str(exc).splitlines()[0]}); "
                                "add a limit or an aggregate to the query, or fetch it with the Python client") from None
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        outcome.bytes += kept.size
        self._add(kept)
        return kept, first

    def _write(self, path: Path, result: Result, outcome: Outcome) -> bool:
        """Write the rows to ``path``; whether the size cap stopped it with rows left over."""
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, result.schema) as writer:
            path.chmod(0o600)
            for batch in result.stream():
                fits = _rows_within(batch, self.max_bytes - sink.tell())
                writer.write_batch(batch.slice(0, fits))
                outcome.rows += fits
                if fits < batch.num_rows:  # a batch is cut, not skipped: the cap holds to the batch's row
                    result.close()  # the engine stops: nobody will see the rest
                    return True
        return False

    def _cut_notice(self, rows: int) -> str:
        return (f"the web page keeps only the first {rows:,} rows ({self.max_bytes >> 20} MB) of this result; "
                "narrow the query, or fetch the whole result with the Python client")

    def _add(self, kept: Kept) -> None:
        with self._lock:
            self._kept[kept.id] = kept
            mine = sorted((k for k in self._kept.values() if k.user == kept.user), key=lambda k: k.made)
            for old in mine[: max(0, len(mine) - self.keep)] + self._expired() + self._over_total():
                self._forget(old)

    def _expired(self) -> list[Kept]:
        horizon = time.monotonic() - self.seconds
        return [k for k in self._kept.values() if k.made < horizon]

    def _over_total(self) -> list[Kept]:
        """The oldest results past the folder's budget (never the newest: a query just answered stays)."""
        gone, total = [], sum(k.size for k in self._kept.values())
        for kept in sorted(self._kept.values(), key=lambda k: k.made)[:-1]:
            if total <= self.max_total:
                break
            gone.append(kept)
            total -= kept.size
        return gone

    def _forget(self, kept: Kept) -> None:
        if self._kept.pop(kept.id, None) is not None:
            kept.path.unlink(missing_ok=True)

    # reading ---------------------------------------------------------------
    def page(self, user: str, role: str, policy: str, result_id: str, offset: int, size: int) -> dict[str, Any]:
        """Rows ``offset`` to ``offset + size`` of a kept result (fewer when they pass PAGE_BYTES), for the user
        and role that ran it, under the policy it ran under."""
        if not 1 <= size <= MAX_PAGE_ROWS or offset < 0:
            raise UsageError(f"a page is 1 to {MAX_PAGE_ROWS:,} rows from an offset of 0 or more")
        source, kept = self._open(user, role, policy, result_id)
        try:
            rows = _page(source, offset, size)
        finally:
            source.close()
            self._done_reading(user)
        return {"result": kept.id, "offset": offset, "total": kept.rows, "rows": json.loads(rows)}

    def _read(self, path: Path, offset: int, size: int) -> str:
        with pa.memory_map(str(path)) as source:
            return _page(source, offset, size)

    def _open(self, user: str, role: str, policy: str, result_id: str) -> tuple[pa.MemoryMappedFile, Kept]:
        """The kept result's file, mapped while it is known to exist (a mapping outlives its file's removal)."""
        with self._lock:
            for old in self._expired():
                self._forget(old)
            kept = self._kept.get(result_id)
            if kept is None or (kept.user, kept.role, kept.policy) != (user, role, policy):
                # someone else's result is as absent as a lost one
                raise NotFound("that result is no longer kept (results are kept for 30 minutes, the latest 3 per user, "
                               "and not past a change of the policy); run the query again")
            if self._reading[user] >= READS_PER_USER:
                raise LimitExceeded(f"{user} is already reading {READS_PER_USER} pages; wait for one")
            self._reading[user] += 1
            return pa.memory_map(str(kept.path)), kept

    def _done_reading(self, user: str) -> None:
        with self._lock:
            self._reading[user] -= 1

    # forgetting ------------------------------------------------------------
    def drop(self, user: str, role: str | None = None) -> int:
        """Forget the results of ``user`` (of one role, for a token bound to it) on sign-out; how many there were."""
        with self._lock:
            mine = [k for k in self._kept.values() if k.user == user and role in (None, k.role)]
            for kept in mine:
                self._forget(kept)
        return len(mine)

    def sweep(self) -> None:
        """Forget the results past their time."""
        with self._lock:
            for old in self._expired():
                self._forget(old)

    def close(self) -> None:
        with self._lock:
            self._kept.clear()
        shutil.rmtree(self.folder, ignore_errors=True)


def _rows_within(batch: pa.RecordBatch | pa.Table, room: int) -> int:
    """How many of the batch's first rows fit in ``room`` bytes, at the batch's mean row size."""
    rows, size = int(batch.num_rows), int(batch.nbytes)
    return rows if size <= room else max(0, room * rows // max(1, size))


def _page(source: pa.MemoryMappedFile, offset: int, size: int) -> str:
    """Rows of a kept file as JSON, read in place: only the page's rows are touched; at least one row, so that
    a page of very wide rows still moves on."""
    rows = pa.ipc.open_file(source).read_all().slice(offset, size)
    return json_rows(rows.slice(0, max(1, _rows_within(rows, PAGE_BYTES))))


def kinds(schema: pa.Schema) -> list[str]:
    """Each column as the page's chart reads it: number, time, text or other."""
    return [_kind(field.type) for field in schema]


def _kind(kind: pa.DataType) -> str:
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        return "number"
    if pa.types.is_temporal(kind):
        return "time"
    return "text" if pa.types.is_string(kind) or pa.types.is_large_string(kind) else "other"
