"""The audit log: one JSON line per event, each carrying the hash of the one before.

Every record holds ``seq`` (1, 2, 3, …), ``prev`` (the previous record's
hash) and ``hash`` = SHA-256 of ``prev`` and the record's canonical JSON.
Editing, deleting or reordering any record breaks the chain; a separate head
file (``audit.head``, the last seq and hash) makes cutting records off the end
detectable too. Writes are durable (fsync) before ``append`` returns, and
concurrent appends share one fsync (group commit), so durability does not
cost a disk flush per query.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from saferoom.errors import AuditError

log = logging.getLogger("saferoom.audit")
GENESIS = "0" * 64
LOG, HEAD = "audit.log", "audit.head"


def _digest(prev: str, record: dict[str, Any]) -> str:
    body = json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256((prev + body).encode()).hexdigest()


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


@dataclass
class _Pending:
    record: dict[str, Any]
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class AuditLog:
    """Appends chained records to ``DIR/audit.log``; raises :class:`AuditError` when it cannot."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path, self.head_path = folder / LOG, folder / HEAD
        self._seq, self._prev = self._recover()
        self._queue: list[_Pending] = []
        self._cond = threading.Condition()
        self._closed = False
        self._later: list[_Pending] = []
        self._file = self.path.open("a", encoding="utf-8")
        self._writer = threading.Thread(target=self._run, name="saferoom-audit", daemon=True)
        self._writer.start()

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Write ``record`` durably and return it with seq, prev and hash."""
        pending = _Pending(dict(record))
        with self._cond:
            if self._closed:
                raise AuditError("the audit log is closed; nothing runs without it")
            self._queue.append(pending)
            self._cond.notify()
        pending.done.wait()
        if pending.error is not None:
            raise AuditError(f"the audit log cannot be written, so the query does not run: {pending.error}") from None
        return pending.record

    def append_later(self, record: dict[str, Any]) -> None:
        """Queue ``record`` for the next group commit without waiting for it (failures are logged)."""
        pending = _Pending(dict(record))
        with self._cond:
            if self._closed:
                raise AuditError("the audit log is closed")
            self._queue.append(pending)
            self._later.append(pending)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._writer.join()
        self._file.close()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                batch, self._queue = self._queue, []
                if not batch and self._closed:
                    return
            self._commit(batch)

    def _commit(self, batch: list[_Pending]) -> None:
        seq, prev = self._seq, self._prev
        lines = []
        for pending in batch:
            seq += 1
            record = {**pending.record, "seq": seq, "prev": prev}
            record["hash"] = prev = _digest(record["prev"], record)
            pending.record = record
            lines.append(json.dumps(record, sort_keys=True, default=str))
        try:
            self._file.write("\n".join(lines) + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
            _write_head(self.head_path, seq, prev)
        except OSError as exc:
            for pending in batch:
                pending.error = exc
            self._truncate_partial()
        else:
            self._seq, self._prev = seq, prev
        for pending in batch:
            pending.done.set()
        with self._cond:
            failed = [p for p in self._later if p.done.is_set() and p.error is not None]
            self._later = [p for p in self._later if not p.done.is_set()]
        for pending in failed:
            log.error("an audit record could not be written: %s", pending.error)

    def _truncate_partial(self) -> None:
        """After a failed write, drop whatever part of it reached the file."""
        try:
            self._file.close()
            _repair(self.path)
            self._file = self.path.open("a", encoding="utf-8")
        except OSError:
            pass

    def _recover(self) -> tuple[int, str]:
        _repair(self.path)
        last = _last_line(self.path)
        if last is None:
            return 0, GENESIS
        record = json.loads(last)
        return int(record["seq"]), str(record["hash"])


def _write_head(path: Path, seq: int, digest: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as out:
        out.write(json.dumps({"seq": seq, "hash": digest}))
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def _repair(path: Path) -> None:
    """A crash can leave a last line half-written: it was never acknowledged, so drop it."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as out:
            out.truncate(data.rfind(b"\n") + 1)


def _last_line(path: Path) -> str | None:
    if not path.exists() or path.stat().st_size == 0:
        return None
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - 65536))
        lines = f.read().splitlines()
    return lines[-1].decode() if lines else None


@dataclass(frozen=True)
class Verification:
    ok: bool
    records: int
    problem: str | None = None
    line: int | None = None


def verify(folder: Path) -> Verification:
    """Check the whole chain and the head; the first break is reported with its line."""
    path = folder / LOG
    if not path.exists():
        return Verification(False, 0, f"no audit log in {folder}")
    prev, seq, count = GENESIS, 0, 0
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            problem = _check(line, prev, seq + 1)
            if problem:
                return Verification(False, count, problem, number)
            record = json.loads(line)
            prev, seq, count = record["hash"], record["seq"], count + 1
    return _check_head(folder, seq, prev, count)


def _check(line: str, prev: str, seq: int) -> str | None:
    try:
        record = json.loads(line)
    except ValueError:
        return "not a JSON record (edited or corrupted)"
    if not isinstance(record, dict) or record.get("seq") != seq:
        return f"expected record {seq}, found {record.get('seq') if isinstance(record, dict) else '?'} (deleted or reordered)"
    if record.get("prev") != prev:
        return "does not follow the record before it (deleted or reordered)"
    claimed = record.pop("hash", None)
    if _digest(prev, record) != claimed:
        return "its hash does not match its content (edited)"
    return None


def _check_head(folder: Path, seq: int, digest: str, count: int) -> Verification:
    try:
        head = json.loads((folder / HEAD).read_text())
    except (OSError, ValueError):
        return Verification(count == 0, count, None if count == 0 else "the head file is missing or unreadable")
    if head.get("seq") != seq or head.get("hash") != digest:
        return Verification(False, count, f"the log ends at record {seq} but the head says {head.get('seq')} (records cut off the end)")
    return Verification(True, count)


def read(folder: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Every record, oldest first; with ``limit``, only the last ``limit``, read from the end of the file."""
    path = folder / LOG
    if not path.exists():
        return []
    if limit:
        newest = []
        for record in newest_first(folder):
            if len(newest) == limit:
                break
            newest.append(record)
        return newest[::-1]
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines if line.strip()]


def newest_first(folder: Path, block: int = 1 << 20) -> Iterator[dict[str, Any]]:
    """Records from the end of the log backwards, a block at a time: the cost is what is read, not the log's size."""
    path = folder / LOG
    if not path.exists():
        return
    with path.open("rb") as handle:
        end = handle.seek(0, os.SEEK_END)
        carry = b""
        while end > 0:
            start = max(0, end - block)
            handle.seek(start)
            lines = (handle.read(end - start) + carry).split(b"\n")
            carry = lines.pop(0) if start > 0 else b""  # the first line may begin in the block before
            for line in reversed(lines):
                if line.strip():
                    yield json.loads(line)
            end = start


def report(folder: Path, jump: float = 10.0) -> dict[str, Any]:
    """Per user and per tag: queries, refusals, rows and bytes; flags a user whose last day jumps above their own baseline."""
    users: dict[str, Counter[str]] = defaultdict(Counter)
    tags: Counter[str] = Counter()
    daily: dict[str, Counter[str]] = defaultdict(Counter)
    for record in read(folder):
        user = record.get("user") or "?"
        if record.get("event") == "decision":
            users[user]["queries"] += 1
            users[user]["refused"] += record.get("decision") == "refused"
            tags.update(record.get("tags") or [])
        elif record.get("event") == "result":
            users[user]["refused"] += record.get("error_type") == "QueryRejected"
            users[user]["rows"] += record.get("rows") or 0
            users[user]["bytes"] += record.get("bytes") or 0
            daily[user][str(record.get("time", ""))[:10]] += record.get("bytes") or 0
    flags = [_jump(user, days, jump) for user, days in daily.items()]
    return {"users": {u: dict(c) for u, c in users.items()}, "tags": dict(tags), "flags": [f for f in flags if f]}


def _jump(user: str, days: Counter[str], factor: float) -> str | None:
    if len(days) < 2:
        return None
    ordered = [days[d] for d in sorted(days)]
    baseline = sum(ordered[:-1]) / len(ordered[:-1])
    if baseline and ordered[-1] > factor * baseline:
        return f"{user}: {ordered[-1]:,} bytes on {sorted(days)[-1]}, {ordered[-1] / baseline:.0f}× their daily average"
    return None
