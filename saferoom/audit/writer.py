"""The writer: one thread appends chained records, durably, in group commits.

Writes are durable (fsync) before ``append`` returns, and concurrent appends share one fsync (group
commit), so durability does not cost a disk flush per query. The log is flushed before the head, so after
a crash the head may lag the log, never lead it; a log that ends before its head has lost records, and
nothing more is written to it. With an audit key, each record is sealed (``hmac``) and a signed checkpoint
is added every ``checkpoint_every`` records or ``checkpoint_seconds`` seconds, and at close; committed
lines are then forwarded (:mod:`saferoom.audit.forward`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from saferoom.audit.checkpoints import CHECKPOINT, checkpoint
from saferoom.audit.commits import GroupCommit, Pending
from saferoom.audit.forward import TIMEOUT, AppendFile, Destination, Forwarder, destination
from saferoom.audit.head import Head, head_problem, head_sealed, hmac_equal, read_head, read_slot
from saferoom.audit.keys import AuditKey
from saferoom.audit.records import (
    GENESIS,
    HEAD,
    LOG,
    _digest,
    last_line,
    line,
    lines_backwards,
    newest_first,
    parse_record,
    repair,
)
from saferoom.errors import AuditError, UsageError
from saferoom.files import try_lock

log = logging.getLogger("saferoom.audit")


@dataclass
class Checkpoints:
    """When the last checkpoint was written, and when the next is due."""

    every: int
    seconds: float
    n: int = 0
    seq: int = 0  # the last checkpoint record's own seq: records after it are not yet covered
    offset: int = 0  # where its line starts in the log
    last: float = field(default_factory=time.monotonic)

    def due(self, seq: int, closing: bool) -> bool:
        return seq > self.seq and (closing or seq - self.seq >= self.every or self.wait(seq) == 0)

    def wait(self, seq: int) -> float | None:
        """Seconds until the timer makes a checkpoint due; None while every record is covered."""
        return None if seq <= self.seq else max(0.0, self.last + self.seconds - time.monotonic())


class AuditLog(GroupCommit):
    """Appends chained records to ``DIR/audit.log``; raises :class:`AuditError` when it cannot.

    ``key`` seals the records and signs checkpoints; ``forward`` names destinations for every committed
    line (``syslog+tcp://HOST:PORT``, ``file:PATH``).
    """

    def __init__(self, folder: Path, *, key: AuditKey | None = None, forward: Sequence[str] = (),
                 checkpoint_every: int = 1000, checkpoint_seconds: float = 10.0, timeout: float = TIMEOUT) -> None:
        destinations = [destination(spec, timeout) for spec in forward]
        _outside(folder, destinations)
        folder.mkdir(parents=True, exist_ok=True)
        self.path, self.head_path = folder / LOG, folder / HEAD
        self._key = key
        self._writer_lock = _only_writer(folder)
        try:
            self._seq, self._prev = self._recover()
            self._checkpoints = _last_checkpoint(self.path, key, checkpoint_every, checkpoint_seconds)
            self._head = Head(self.head_path, key)
            self._head.write(self._seq, self._prev)
        except BaseException:
            self._writer_lock.close()
            raise
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)  # queries can hold values
        end = os.lseek(self._fd, 0, os.SEEK_END)
        self._forwarder = Forwarder(destinations, self.path, end, self._checkpoints.offset if key else end)
        self._start_writer()

    def close(self) -> None:
        """Write what is queued, and a last checkpoint when the log is sealed; then stop."""
        self._stop_writer()
        self._forwarder.close()
        os.close(self._fd)
        self._head.close()
        self._writer_lock.close()

    def _wait(self) -> float | None:
        return self._checkpoints.wait(self._seq) if self._key else None

    def _commit(self, batch: list[Pending], closing: bool) -> None:
        seq, prev = self._seq, self._prev
        lines = []
        for pending in batch:
            seq += 1
            pending.record = self._chained(pending.record, seq, prev)
            prev = pending.record["hash"]
            lines.append(line(pending.record))
        marker = self._checkpoint(seq, prev, closing)
        if marker is not None:
            seq, prev = seq + 1, marker["hash"]
            lines.append(line(marker))
        if not lines:
            return
        data = ("\n".join(lines) + "\n").encode()
        try:
            start = self._write(data, seq, prev)
        except OSError as exc:
            self._settle(batch, exc)
            return
        self._seq, self._prev = seq, prev
        self._committed(start, data, marker)
        self._settle(batch, self._forwarder.send(start, data))

    def _chained(self, record: dict[str, Any], seq: int, prev: str) -> dict[str, Any]:
        return chained(record, seq, prev, self._key)

    def _checkpoint(self, seq: int, prev: str, closing: bool) -> dict[str, Any] | None:
        """A signed checkpoint over record ``seq``, chained after it, when one is due."""
        if self._key is None or not self._checkpoints.due(seq, closing):
            return None
        self._checkpoints.last = time.monotonic()  # a failed attempt waits a period too: no busy retry
        return self._chained(checkpoint(self._key, self._checkpoints.n + 1, seq, prev), seq + 1, prev)

    def _committed(self, start: int, data: bytes, marker: dict[str, Any] | None) -> None:
        if marker is None:
            if self._key is None:
                self._forwarder.rewind = start  # unsealed: a reconnected destination gets the last commit again
            return
        self._checkpoints.n, self._checkpoints.seq = marker["checkpoint"]["n"], marker["seq"]
        self._checkpoints.offset = self._forwarder.rewind = start + len(data) - len(line(marker)) - 1

    def _write(self, data: bytes, seq: int, digest: str) -> int:
        """Append, flush, then move the head; a failure anywhere cuts the log back to where it was.
        Returns the offset where ``data`` starts."""
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
        return start

    def _recover(self) -> tuple[int, str]:
        """The last record's seq and hash, after checking the log still holds every record its head saw,
        sealed with this key (or unsealed, when no key is given)."""
        head = read_head(self.path.parent, self._key)
        repair(self.path)
        last = last_line(self.path)
        record: dict[str, Any] = {"seq": 0, "hash": GENESIS} if last is None else parse_record(last)
        seq, digest = int(record["seq"]), str(record["hash"])
        _check_key(self.path.parent, record, self._key)
        problem = head_problem(head, seq, lambda at: _hash_at(self.path.parent, at, seq, digest))
        if problem:
            raise AuditError(f"the audit log in {self.path.parent} has lost records: {problem}. Nothing more is written "
                             "to it; run `saferoom audit verify`, keep audit.log and audit.head as evidence, and start "
                             "the gateway with a new --state folder")
        return seq, digest


def chained(record: dict[str, Any], seq: int, prev: str, key: AuditKey | None) -> dict[str, Any]:
    """``record`` as the chain's record ``seq`` after ``prev``: with its hash, and its seal when there is a key."""
    record = {**record, "seq": seq, "prev": prev}
    record["hash"] = _digest(prev, record)
    if key is not None:
        record["hmac"] = key.seal(record["hash"])
    return record


def _check_key(folder: Path, last: dict[str, Any], key: AuditKey | None) -> None:
    """A sealed log goes on only with its own key: without one, or with another, the chain would fork."""
    if key is None:
        if "hmac" in last or head_sealed(folder):
            raise AuditError(f"the audit log in {folder} is sealed with an audit key; start the gateway with the "
                             "same --audit-key (without it, nothing more is written to this log)")
        return
    slot = read_slot(folder, key)
    foreign_record = "hmac" in last and not hmac_equal(last["hmac"], key.seal(str(last["hash"])))
    foreign_head = head_sealed(folder) and not (slot is not None and slot.sealed)
    if foreign_record or foreign_head:
        raise AuditError(f"the audit log in {folder} was sealed with another audit key (or its end was altered); "
                         "start with the key it was written with, and run `saferoom audit verify --key …`")


def _last_checkpoint(path: Path, key: AuditKey | None, every: int, seconds: float) -> Checkpoints:
    """The newest checkpoint, read back from the end; the search stops at a record from before the key."""
    state = Checkpoints(every, seconds)
    if key is None:
        return state
    for offset, text in lines_backwards(path):
        record = parse_record(text)
        if record.get("event") == CHECKPOINT or "hmac" not in record:
            state.offset = offset if record.get("event") == CHECKPOINT else offset + len(text) + 1
            state.seq = int(record["seq"]) if record.get("event") == CHECKPOINT else 0
            state.n = int(record.get("checkpoint", {}).get("n", 0))
            return state
    return state


def _outside(folder: Path, destinations: Sequence[Destination]) -> None:
    """A copy inside the state folder is no copy: whoever can rewrite the log can rewrite it too."""
    for target in destinations:
        if isinstance(target, AppendFile) and target.path.resolve().is_relative_to(folder.resolve()):
            raise UsageError(f"--audit-forward {target.name} is inside the state folder {folder}; forward to "
                             "another disk or host, which whoever can write the state folder cannot rewrite")


def _only_writer(folder: Path) -> IO[str]:
    """Hold the log's lock for as long as it is open: two writers would fork the chain."""
    handle = try_lock(folder / ".audit.lock")
    if handle is None:
        raise AuditError(f"another gateway is writing the audit log in {folder}; give each gateway its own --state")
    return handle


def _hash_at(folder: Path, at: int, last: int, last_hash: str) -> str | None:
    """The hash of record ``at``, read from the end of the log (the head lags by a commit at most)."""
    if at == last:
        return last_hash
    if at == 0:
        return GENESIS
    return next((r.get("hash") for r in newest_first(folder) if r.get("seq") == at), None)
