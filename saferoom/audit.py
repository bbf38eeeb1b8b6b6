"""The audit log: one JSON line per event, each carrying the hash of the one before.

Every record holds ``seq`` (1, 2, 3, …), ``prev`` (the previous record's
hash) and ``hash`` = SHA-256 of ``prev`` and the record's canonical JSON.
Editing, deleting or reordering any record breaks the chain; a separate head
file (``audit.head``, the last seq and hash) makes cutting records off the end
detectable too. Writes are durable (fsync) before ``append`` returns, and
concurrent appends share one fsync (group commit), so durability does not
cost a disk flush per query.

The head is two fixed 128-byte slots written in place, in turn, each with a
checksum: a write torn by a crash leaves the other slot whole, and no file is
created or renamed per commit. The log is flushed before the head, so after a
crash the head may lag the log, never lead it; a log that ends before its head
has lost records, and nothing more is written to it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from saferoom.errors import AuditError
from saferoom.files import fsync_dir, try_lock

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
        self._writer_lock = _only_writer(folder)
        try:
            self._seq, self._prev = self._recover()
            self._head = Head(self.head_path)
            self._head.write(self._seq, self._prev)
        except BaseException:
            self._writer_lock.close()
            raise
        self._queue: list[_Pending] = []
        self._cond = threading.Condition()
        self._closed = False
        self._later: list[_Pending] = []
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)  # queries can hold values
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
        os.close(self._fd)
        self._head.close()
        self._writer_lock.close()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                batch, self._queue = self._queue, []
                if not batch and self._closed:
                    return
            try:
                self._commit(batch)
            except Exception as exc:  # noqa: BLE001 - the writer must outlive any failure, or every query waits forever
                self._settle(batch, exc)

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
            self._write(("\n".join(lines) + "\n").encode(), seq, prev)
        except OSError as exc:
            self._settle(batch, exc)
            return
        self._seq, self._prev = seq, prev
        self._settle(batch, None)

    def _write(self, data: bytes, seq: int, digest: str) -> None:
        """Append, flush, then move the head; a failure anywhere cuts the log back to where it was."""
        start = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
            self._head.write(seq, digest)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)  # never a partial or unacknowledged record, never a broken chain
                os.fsync(self._fd)
            raise

    def _settle(self, batch: list[_Pending], error: BaseException | None) -> None:
        for pending in batch:
            pending.error = error
            pending.done.set()
        with self._cond:
            failed = [p for p in self._later if p.done.is_set() and p.error is not None]
            self._later = [p for p in self._later if not p.done.is_set()]
        for pending in failed:
            log.error("an audit record could not be written: %s", pending.error)

    def _recover(self) -> tuple[int, str]:
        """The last record's seq and hash, after checking the log still holds every record its head saw."""
        _repair(self.path)
        last = _last_line(self.path)
        record = {"seq": 0, "hash": GENESIS} if last is None else _record(last)
        seq, digest = int(record["seq"]), str(record["hash"])
        problem = _head_problem(self.path.parent, seq, lambda at: _hash_at(self.path.parent, at, seq, digest))
        if problem:
            raise AuditError(f"the audit log in {self.path.parent} has lost records: {problem}. Nothing more is written "
                             "to it; run `saferoom audit verify`, keep audit.log and audit.head as evidence, and start "
                             "the gateway with a new --state folder")
        return seq, digest


def _only_writer(folder: Path) -> Any:
    """Hold the log's lock for as long as it is open: two writers would fork the chain."""
    handle = try_lock(folder / ".audit.lock")
    if handle is None:
        raise AuditError(f"another gateway is writing the audit log in {folder}; give each gateway its own --state")
    return handle


SLOT = 128


class Head:
    """The last seq and hash, in two slots written in turn (see the module's docstring)."""

    def __init__(self, path: Path) -> None:
        created = not path.exists()
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if created:
            fsync_dir(path.parent)
        slots = _slots(path)
        newest = max(slots, key=lambda position: slots[position], default=1)
        self._turn = 1 - newest  # never overwrite the newest whole slot first

    def write(self, seq: int, digest: str) -> None:
        body = json.dumps({"seq": seq, "hash": digest, "check": _slot_check(seq, digest)}).encode()
        os.pwrite(self._fd, body.ljust(SLOT - 1) + b"\n", SLOT * self._turn)
        os.fdatasync(self._fd)
        self._turn ^= 1

    def close(self) -> None:
        os.close(self._fd)


def _slot_check(seq: int, digest: str) -> str:
    return hashlib.sha256(f"{seq}:{digest}".encode()).hexdigest()[:16]


def _slots(path: Path) -> dict[int, tuple[int, str]]:
    """The whole slots of a head file by position, 0 or 1 (a torn or empty slot is left out)."""
    try:
        data = path.read_bytes()
    except OSError:
        return {}
    slots = {}
    for position in (0, 1):
        try:
            slot = json.loads(data[position * SLOT : (position + 1) * SLOT])
            seq, digest = int(slot["seq"]), str(slot["hash"])
        except (ValueError, KeyError, TypeError):
            continue
        if slot.get("check") == _slot_check(seq, digest):
            slots[position] = (seq, digest)
    return slots or _whole_file_head(data)


def _whole_file_head(data: bytes) -> dict[int, tuple[int, str]]:
    """A head written by saferoom before slots: one JSON object, replaced whole on each commit."""
    try:
        head = json.loads(data)
        return {0: (int(head["seq"]), str(head["hash"]))} if "check" not in head else {}
    except (ValueError, KeyError, TypeError):
        return {}


def read_head(folder: Path) -> tuple[int, str] | None:
    """The newest whole slot of the head: the last seq and hash the log had when it was flushed."""
    return max(_slots(folder / HEAD).values(), default=None)


def _head_problem(folder: Path, seq: int, hash_at: Callable[[int], str | None]) -> str | None:
    """Why the log (ending at ``seq``) does not hold what its head saw; None when it does."""
    head = read_head(folder)
    if head is None:
        return None if seq == 0 else f"the log ends at record {seq} but its head is missing or unreadable"
    at, digest = head
    if at > seq:
        return f"the log ends at record {seq} but the head says {at} (records cut off the end)"
    if hash_at(at) != digest:
        return f"record {at} is not the record the head saw (records replaced at the end)"
    return None


def _hash_at(folder: Path, at: int, last: int, last_hash: str) -> str | None:
    """The hash of record ``at``, read from the end of the log (the head lags by a commit at most)."""
    if at == last:
        return last_hash
    if at == 0:
        return GENESIS
    return next((r.get("hash") for r in newest_first(folder) if r.get("seq") == at), None)



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
    head = read_head(folder)
    prev, seq, count, seen = GENESIS, 0, 0, {0: GENESIS}
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            problem = _check(line, prev, seq + 1)
            if problem:
                return Verification(False, count, problem, number)
            record = json.loads(line)
            prev, seq, count = record["hash"], record["seq"], count + 1
            if head is not None and seq == head[0]:
                seen[seq] = prev
    problem = _head_problem(folder, seq, seen.get)
    return Verification(problem is None, count, problem)


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
        return [_record(line) for line in lines if line.strip()]


def _record(line: str | bytes) -> dict[str, Any]:
    """One record of the log; a line that is not one means the log was edited or damaged."""
    try:
        record = json.loads(line)
        if isinstance(record, dict) and "seq" in record and "hash" in record:
            return record
    except ValueError:
        pass
    raise AuditError("the audit log holds a line that is not a record (edited or damaged); run "
                     "`saferoom audit verify` to find it and keep the file as evidence")


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
                    yield _record(line)
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
