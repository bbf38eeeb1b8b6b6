"""Group commit: queries hand records to one writer thread, which commits whatever has queued up at once.

A backend (the log file, or PostgreSQL) implements ``_commit`` and says how long the thread may sleep
while nothing is queued (``_wait``: a checkpoint timer, or for ever).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from saferoom.audit.forward import ForwardError
from saferoom.errors import AuditError

log = logging.getLogger("saferoom.audit")


@dataclass
class Pending:
    record: dict[str, Any]
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class GroupCommit:
    """Queues records for one writer thread; ``append`` waits for the commit, ``append_later`` does not."""

    def _start_writer(self) -> None:
        self._queue: list[Pending] = []
        self._cond = threading.Condition()
        self._closed = False
        self._later: list[Pending] = []
        self._writer = threading.Thread(target=self._run, name="saferoom-audit", daemon=True)
        self._writer.start()

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Write ``record`` durably and return it with seq, prev and hash."""
        return self.settled(self.submit(record))

    def submit(self, record: dict[str, Any]) -> Pending:
        """Queue ``record`` for the next group commit; :meth:`settled` waits for it (work that produces nothing
        yet may go on meanwhile)."""
        pending = Pending(dict(record))
        with self._cond:
            if self._closed:
                raise AuditError("the audit log is closed; nothing runs without it")
            self._queue.append(pending)
            self._cond.notify()
        return pending

    def settled(self, pending: Pending) -> dict[str, Any]:
        """The record :meth:`submit` queued, once durable, with seq, prev and hash; an error if it was not written."""
        pending.done.wait()
        if isinstance(pending.error, ForwardError | AuditError):
            raise AuditError(f"the query does not run: {pending.error}") from None
        if pending.error is not None:
            raise AuditError(f"the audit log cannot be written, so the query does not run: {pending.error}") from None
        return pending.record

    def append_later(self, record: dict[str, Any]) -> None:
        """Queue ``record`` for the next group commit without waiting for it (failures are logged)."""
        pending = Pending(dict(record))
        with self._cond:
            if self._closed:
                raise AuditError("the audit log is closed")
            self._queue.append(pending)
            self._later.append(pending)
            self._cond.notify()

    def _stop_writer(self) -> None:
        """Write what is queued (and a last checkpoint, when due at close); then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._writer.join()

    def _commit(self, batch: list[Pending], closing: bool) -> None:
        raise NotImplementedError

    def _wait(self) -> float | None:
        """Seconds the writer may sleep with nothing queued; None: until a record comes."""
        return None

    def _run(self) -> None:
        while True:
            batch, closing = self._next_batch()
            try:
                self._commit(batch, closing)
            except Exception as exc:  # noqa: BLE001 - the writer must outlive any failure, or every query waits forever
                self._settle(batch, exc)
            if closing:
                return

    def _next_batch(self) -> tuple[list[Pending], bool]:
        with self._cond:
            while not self._queue and not self._closed and self._wait() != 0:
                self._cond.wait(self._wait())
            batch, self._queue = self._queue, []
            return batch, self._closed and not batch

    def _settle(self, batch: list[Pending], error: BaseException | None) -> None:
        for pending in batch:
            pending.error = error
            pending.done.set()
        if error is not None and not batch:
            log.error("an audit checkpoint was not committed: %s", error)
        with self._cond:
            failed = [p for p in self._later if p.done.is_set() and p.error is not None]
            self._later = [p for p in self._later if not p.done.is_set()]
        for pending in failed:
            log.error("an audit record was not committed: %s", pending.error)
