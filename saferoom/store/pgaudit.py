"""The audit chain in PostgreSQL: one chain, whichever gateway writes.

A group commit is one call of the server-side function ``saferoom_audit_commit_v1`` (made by the store's
schema setup; the suffix is its version, so gateways of two releases can share a database): given the
head the gateway last saw and the batch chained after it, the function takes the chain's lock, compares
the head, and only if it is unchanged inserts the records and moves the head, all in one statement that
commits on its own (one round trip, synchronous commit). When another gateway (or a migration) moved the
head meanwhile, nothing is written and the function returns the head as it is; the gateway then commits
the batch in a transaction that holds the lock while it reads the head, chains and writes, so a commit
waits its turn but never fails for contention. A record's seq and previous hash are thus checked in the
database, never assigned twice, and the records and the head move in one transaction: a crash leaves both
before or both after it, no gap and no fork.

Why not serializable transactions: they retried without bound when three gateways were busy, and cost
more round trips; a lock held for the length of one statement orders the writers without retries
(``bench/gateway.py --only-state`` measures the commit latency).

:func:`verify_chain` writes the table out as a state folder's ``audit.log`` and ``audit.head`` (to a
temporary folder) and runs the same :func:`saferoom.audit.verify` as for files.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
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

CHAIN_LOCK = 0x5AFE_0003  # also taken by `saferoom state migrate`, and by the previous release's gateways

# The commit as one statement. Arguments: the head the caller saw (seq, hash, seal), the records' seqs,
# prevs, hashes and lines, and the new head's seal and checkpoint counters. The batch must start right
# after that head and link up; otherwise the call fails, as a bug would. Returns the head after the call
# and whether the batch was written.
AUDIT_SCHEMA = (
    """CREATE OR REPLACE FUNCTION saferoom_audit_commit_v1(lock_id bigint, seen_seq bigint, seen_hash text,
        seen_mac text, seqs bigint[], prevs text[], hashes text[], lines text[], new_mac text, new_n int,
        new_covered bigint)
    RETURNS TABLE (head_seq bigint, head_hash text, head_mac text, head_n int, head_covered bigint, written boolean)
    LANGUAGE plpgsql AS $$
    DECLARE
        head saferoom_audit_head%ROWTYPE;
        n int := cardinality(seqs);
    BEGIN
        IF current_setting('synchronous_commit') = 'off' THEN  -- a database set so would answer before the disk
            PERFORM set_config('synchronous_commit', 'on', true);
        END IF;
        PERFORM pg_advisory_xact_lock(lock_id);
        SELECT * INTO head FROM saferoom_audit_head WHERE id = 1 FOR UPDATE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'saferoom: the audit chain head row is missing';
        END IF;
        IF head.seq <> seen_seq OR head.hash <> seen_hash OR head.mac IS DISTINCT FROM seen_mac THEN
            RETURN QUERY SELECT head.seq, head.hash, head.mac, head.checkpoint_n, head.checkpoint_seq, false;
            RETURN;
        END IF;
        IF n < 1 OR seqs[1] <> seen_seq + 1 OR prevs[1] <> seen_hash OR seqs[n] <> seen_seq + n
           OR cardinality(prevs) <> n OR cardinality(hashes) <> n OR cardinality(lines) <> n
           OR EXISTS (SELECT 1 FROM generate_series(2, n) AS i WHERE seqs[i] <> seqs[i - 1] + 1
                      OR prevs[i] <> hashes[i - 1]) THEN
            RAISE EXCEPTION 'saferoom: an audit batch that does not continue the chain was refused';
        END IF;
        INSERT INTO saferoom_audit (seq, prev, hash, line) SELECT * FROM unnest(seqs, prevs, hashes, lines);
        UPDATE saferoom_audit_head SET seq = seqs[n], hash = hashes[n], mac = new_mac, checkpoint_n = new_n,
            checkpoint_seq = new_covered WHERE id = 1;
        RETURN QUERY SELECT seqs[n], hashes[n], new_mac, new_n, new_covered, true;
    END $$""",
)
OPTIMISTIC_TRIES = 3  # commits after a head another gateway just moved, before waiting for the lock
COMMIT_SQL = "SELECT * FROM saferoom_audit_commit_v1(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"


@dataclass(frozen=True)
class Head:
    """The chain's head row: the last record's seq and hash, the head's seal, and the last checkpoint's n and seq."""

    seq: int
    hash: str
    mac: str | None
    n: int
    covered: int


UNKNOWN = Head(-1, "", None, 0, 0)


class PgAudit(GroupCommit):
    """The chain's writer for one gateway; many gateways may hold one each (see the module's docstring)."""

    def __init__(self, db: Connections, key: AuditKey | None = None, *,
                 checkpoint_every: int = 1000, checkpoint_seconds: float = 10.0) -> None:
        self._db, self._key = db, key
        self._checkpoints = Checkpoints(checkpoint_every, checkpoint_seconds)
        with db.transaction() as connection:
            self._head = _check_open(connection, key)
        self._seq = self._head.seq
        self._start_writer()

    def close(self) -> None:
        self._stop_writer()

    def _wait(self) -> float | None:
        return self._checkpoints.wait(self._seq) if self._key else None

    def _commit(self, batch: list[Pending], closing: bool) -> None:
        try:
            records = self._records(batch, closing)
        except Exception:
            self._checkpoints.last = time.monotonic()  # a checkpoint due while the database is away waits a period
            self._head = UNKNOWN  # whether the call committed is not known: read the head under the lock next time
            raise
        for pending, record in zip(batch, records, strict=False):
            pending.record = record
        self._settle(batch, None)

    def _records(self, batch: list[Pending], closing: bool) -> list[dict[str, Any]]:
        """The batch committed after the head seen (one round trip each try), else holding the lock."""
        for _ in range(OPTIMISTIC_TRIES):
            if self._head is UNKNOWN:
                break
            records = self._write(batch, closing, lambda args: self._db.run(COMMIT_SQL, args)[0])
            if records is not None:
                return records
        with self._db.transaction() as connection:  # another writer keeps moving the head: wait for the lock
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (CHAIN_LOCK,))
            self._seen(_head(connection))
            records = self._write(batch, closing, lambda args: _call(connection, args))
        if records is None:
            raise AuditError("the audit chain's head moved while this gateway held its lock; something outside "
                             "saferoom writes the saferoom_audit_head table. Run `saferoom audit verify`")
        return records

    def _seen(self, head: Head) -> None:
        _check_seal(head.mac, head.seq, head.hash, self._key)
        self._head = head

    def _write(self, batch: list[Pending], closing: bool, call: Any) -> list[dict[str, Any]] | None:
        """Chain ``batch`` after the head seen and hand the arguments to ``call``; None when the head moved."""
        head = self._head
        self._checkpoints.n, self._checkpoints.seq = head.n, head.covered
        records, marker = self._chained(batch, head, closing)
        written = records + ([marker] if marker is not None else [])
        if not written:
            return records
        last = written[-1]
        if marker is not None:
            self._checkpoints.n, self._checkpoints.seq = marker["checkpoint"]["n"], marker["seq"]
        mac = self._key.head_mac(last["seq"], last["hash"]) if self._key else None
        row = call((CHAIN_LOCK, head.seq, head.hash, head.mac, [r["seq"] for r in written],
                    [r["prev"] for r in written], [r["hash"] for r in written], [line(r) for r in written],
                    mac, self._checkpoints.n, self._checkpoints.seq))
        now = Head(int(row[0]), str(row[1]), row[2], int(row[3]), int(row[4]))
        if not row[5]:
            self._seen(now)
            return None
        self._head, self._seq = now, now.seq
        return records

    def _chained(self, batch: list[Pending], head: Head,
                 closing: bool) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """The batch's records after ``head``, and a checkpoint after them when one is due."""
        seq, prev, records = head.seq, head.hash, []
        for pending in batch:
            records.append(chained(pending.record, seq + 1, prev, self._key))
            seq, prev = seq + 1, records[-1]["hash"]
        return records, self._checkpoint(seq, prev, closing)

    def _checkpoint(self, seq: int, prev: str, closing: bool) -> dict[str, Any] | None:
        if self._key is None or not self._checkpoints.due(seq, closing):
            return None
        self._checkpoints.last = time.monotonic()  # a failed attempt waits a period too
        return chained(checkpoint(self._key, self._checkpoints.n + 1, seq, prev), seq + 1, prev, self._key)


def _call(connection: psycopg.Connection[Any], args: tuple[Any, ...]) -> tuple[Any, ...]:
    row = connection.execute(COMMIT_SQL, args).fetchone()
    assert row is not None  # the function returns one row, or raises
    return tuple(row)


def _head(connection: psycopg.Connection[Any]) -> Head:
    row = connection.execute("SELECT seq, hash, mac, checkpoint_n, checkpoint_seq FROM saferoom_audit_head "
                             "WHERE id = 1").fetchone()
    if row is None:
        raise AuditError("the audit chain's head row is missing from PostgreSQL (deleted); nothing more is written. "
                         "Run `saferoom audit verify --state postgresql://…` and keep the tables as evidence")
    return Head(int(row[0]), str(row[1]), row[2], int(row[3]), int(row[4]))


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


def _check_open(connection: psycopg.Connection[Any], key: AuditKey | None) -> Head:
    """The head, after checking it is the last record and the key is the chain's."""
    connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")  # both read in one snapshot, as others write
    head = _head(connection)
    last = connection.execute("SELECT seq, hash FROM saferoom_audit ORDER BY seq DESC LIMIT 1").fetchone()
    found = (int(last[0]), str(last[1])) if last else (0, GENESIS)
    if found != (head.seq, head.hash):
        raise AuditError(f"the audit chain in PostgreSQL does not end where its head says (record {head.seq}): records "
                         "were deleted or added outside saferoom. Nothing more is written; run `saferoom audit "
                         "verify` and keep the tables as evidence")
    _check_seal(head.mac, head.seq, head.hash, key)
    return head


def read_lines(db: Connections, limit: int | None = None) -> list[str]:
    """The records' lines, oldest first; with ``limit``, only the newest ``limit``."""
    with db.transaction() as connection:
        if limit:
            rows = connection.execute("SELECT line FROM saferoom_audit ORDER BY seq DESC LIMIT %s", (limit,)).fetchall()
            return [row[0] for row in reversed(rows)]
        return [row[0] for row in connection.execute("SELECT line FROM saferoom_audit ORDER BY seq")]


def export(connection: psycopg.Connection[Any], folder: Path) -> None:
    """The chain and its head as a state folder holds them (``audit.log``, ``audit.head``), from one snapshot."""
    head = _head(connection)
    with (folder / LOG).open("w", encoding="utf-8") as out, connection.cursor(name="saferoom_export") as cursor:
        cursor.execute("SELECT line FROM saferoom_audit ORDER BY seq")
        for (text,) in cursor:
            out.write(text + "\n")
    (folder / HEAD).write_bytes(slot_bytes(head.seq, head.hash, head.mac) if head.seq else b"")


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
