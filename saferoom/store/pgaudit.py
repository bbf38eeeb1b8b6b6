"""The audit chain in PostgreSQL: one chain, whichever gateway writes.

Each group commit is one transaction that reads the head row (``saferoom_audit_head``: the last seq and
hash, the head's seal, the last checkpoint), chains the batch after it, inserts the records and moves the
head. Two gateways never chain after the same record: the transaction holds an advisory lock
(``chain="lock"``, the default) or runs serializable and is retried when PostgreSQL refuses it
(``chain="serializable"``); ``bench/gateway.py`` measures both. A record and the head move in one
transaction, so a crash leaves both before or both after it: no gap, no fork.

:func:`verify_chain` writes the table out as a state folder's ``audit.log`` and ``audit.head`` (to a
temporary folder) and runs the same :func:`saferoom.audit.verify` as for files.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saferoom.audit import CHECKPOINT, GENESIS, AuditKey, PublicKey, Verification, verify
from saferoom.audit.checkpoints import checkpoint
from saferoom.audit.commits import GroupCommit, Pending
from saferoom.audit.head import hmac_equal, slot_bytes
from saferoom.audit.records import HEAD, LOG, line
from saferoom.audit.writer import Checkpoints, chained
from saferoom.errors import AuditError

if TYPE_CHECKING:
    import psycopg

    from saferoom.store.postgres import Connections

log = logging.getLogger("saferoom.audit")

CHAIN_LOCK = 0x5AFE_0003
RETRIES = 50  # serializable commits that lose to another gateway try again, up to this many times


class PgAudit(GroupCommit):
    """The chain's writer for one gateway; many gateways may hold one each (see the module's docstring)."""

    def __init__(self, db: Connections, key: AuditKey | None = None, *, serializable: bool = False,
                 checkpoint_every: int = 1000, checkpoint_seconds: float = 10.0) -> None:
        self._db, self._key, self._serializable = db, key, serializable
        self._checkpoints = Checkpoints(checkpoint_every, checkpoint_seconds)
        with db.transaction() as connection:
            self._seq = _check_open(connection, key)
        self._start_writer()

    def close(self) -> None:
        self._stop_writer()

    def _wait(self) -> float | None:
        return self._checkpoints.wait(self._seq) if self._key else None

    def _commit(self, batch: list[Pending], closing: bool) -> None:
        import psycopg

        for _ in range(RETRIES):
            try:
                with self._db.transaction(self._serializable) as connection:
                    records = self._chain(connection, batch, closing)
            except (psycopg.errors.SerializationFailure, psycopg.errors.UniqueViolation):
                continue  # another gateway committed first: chain after its records
            except AuditError:
                self._checkpoints.last = time.monotonic()  # a checkpoint due while the database is away waits a period
                raise
            for pending, record in zip(batch, records, strict=False):
                pending.record = record
            self._settle(batch, None)
            return
        self._settle(batch, AuditError("the audit chain is too contended to commit; try again"))

    def _chain(self, connection: psycopg.Connection[Any], batch: list[Pending], closing: bool) -> list[dict[str, Any]]:
        """Chain ``batch`` after the head, in the caller's transaction; the records as written."""
        if not self._serializable:
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (CHAIN_LOCK,))
        seq, prev, mac, n, covered = _head(connection)
        _check_seal(mac, seq, prev, self._key)
        self._checkpoints.n, self._checkpoints.seq = n, covered
        records = []
        for pending in batch:
            records.append(chained(pending.record, seq + 1, prev, self._key))
            seq, prev = seq + 1, records[-1]["hash"]
        marker = self._checkpoint(seq, prev, closing)
        if marker is not None:
            self._checkpoints.n, self._checkpoints.seq = marker["checkpoint"]["n"], seq + 1
            seq, prev = seq + 1, marker["hash"]
        written = records + ([marker] if marker is not None else [])
        if written:
            insert(connection, [line(r) for r in written])
            connection.execute("UPDATE saferoom_audit_head SET seq = %s, hash = %s, mac = %s, checkpoint_n = %s, "
                               "checkpoint_seq = %s WHERE id = 1",
                               (seq, prev, self._key.head_mac(seq, prev) if self._key else None,
                                self._checkpoints.n, self._checkpoints.seq))
        self._seq = seq
        return records

    def _checkpoint(self, seq: int, prev: str, closing: bool) -> dict[str, Any] | None:
        if self._key is None or not self._checkpoints.due(seq, closing):
            return None
        self._checkpoints.last = time.monotonic()  # a failed attempt waits a period too
        return chained(checkpoint(self._key, self._checkpoints.n + 1, seq, prev), seq + 1, prev, self._key)


def _head(connection: psycopg.Connection[Any]) -> tuple[int, str, str | None, int, int]:
    row = connection.execute("SELECT seq, hash, mac, checkpoint_n, checkpoint_seq FROM saferoom_audit_head "
                             "WHERE id = 1").fetchone()
    if row is None:
        raise AuditError("the audit chain's head row is missing from PostgreSQL (deleted); nothing more is written. "
                         "Run `saferoom audit verify --state postgresql://…` and keep the tables as evidence")
    return int(row[0]), str(row[1]), row[2], int(row[3]), int(row[4])


def insert(connection: psycopg.Connection[Any], lines: list[str]) -> None:
    """Records as their lines, in one COPY: one round trip for a whole group commit."""
    with connection.cursor() as cursor, cursor.copy("COPY saferoom_audit (seq, prev, hash, line) FROM STDIN") as copy:
        for text in lines:
            record = json.loads(text)
            copy.write_row((record["seq"], record["prev"], record["hash"], text))


def _check_seal(mac: str | None, seq: int, digest: str, key: AuditKey | None) -> None:
    """A sealed chain goes on only with its own key, an unsealed one only without: otherwise it would fork."""
    if key is None and mac is not None:
        raise AuditError("the audit chain in PostgreSQL is sealed with an audit key; start every gateway with the "
                         "same --audit-key")
    if key is not None and seq > 0 and not (mac is not None and hmac_equal(mac, key.head_mac(seq, digest))):
        raise AuditError("the audit chain in PostgreSQL was written without this audit key (another key, none, or "
                         "its head was altered); start with the key it was written with and run `saferoom audit verify`")


def _check_open(connection: psycopg.Connection[Any], key: AuditKey | None) -> int:
    """The head's seq, after checking the head is the last record and the key is the chain's."""
    connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")  # both read in one snapshot, as others write
    seq, digest, mac, _, _ = _head(connection)
    last = connection.execute("SELECT seq, hash FROM saferoom_audit ORDER BY seq DESC LIMIT 1").fetchone()
    found = (int(last[0]), str(last[1])) if last else (0, GENESIS)
    if found != (seq, digest):
        raise AuditError(f"the audit chain in PostgreSQL does not end where its head says (record {seq}): records "
                         "were deleted or added outside saferoom. Nothing more is written; run `saferoom audit "
                         "verify` and keep the tables as evidence")
    _check_seal(mac, seq, digest, key)
    return seq


def read_lines(db: Connections, limit: int | None = None) -> list[str]:
    """The records' lines, oldest first; with ``limit``, only the newest ``limit``."""
    with db.transaction() as connection:
        if limit:
            rows = connection.execute("SELECT line FROM saferoom_audit ORDER BY seq DESC LIMIT %s", (limit,)).fetchall()
            return [row[0] for row in reversed(rows)]
        return [row[0] for row in connection.execute("SELECT line FROM saferoom_audit ORDER BY seq")]


def export(connection: psycopg.Connection[Any], folder: Path) -> None:
    """The chain and its head as a state folder holds them (``audit.log``, ``audit.head``), from one snapshot."""
    seq, digest, mac, _, _ = _head(connection)
    with (folder / LOG).open("w", encoding="utf-8") as out, connection.cursor(name="saferoom_export") as cursor:
        cursor.execute("SELECT line FROM saferoom_audit ORDER BY seq")
        for (text,) in cursor:
            out.write(text + "\n")
    (folder / HEAD).write_bytes(slot_bytes(seq, digest, mac) if seq else b"")


def verify_chain(db: Connections, key: AuditKey | None, public_key: PublicKey | None,
                 checkpoints: Path | None) -> Verification:
    with tempfile.TemporaryDirectory(prefix="saferoom-verify-") as folder, db.transaction() as connection:
        connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")  # the head and the records of one moment
        export(connection, Path(folder))
        return verify(Path(folder), key=key, public_key=public_key, checkpoints=checkpoints)


def last_checkpoint(lines: list[str]) -> tuple[int, int]:
    """The newest checkpoint's n and its own seq in ``lines`` (0, 0 without one)."""
    for text in reversed(lines):
        record = json.loads(text)
        if record.get("event") == CHECKPOINT:
            return int(record["checkpoint"]["n"]), int(record["seq"])
    return 0, 0
