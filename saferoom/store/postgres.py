"""The shared store: the gateway's state in PostgreSQL, for any number of gateways behind one address.

Tables (made on first use, all named ``saferoom_*``): ``saferoom_tokens``; the audit chain
``saferoom_audit`` and its head ``saferoom_audit_head`` (:mod:`saferoom.store.pgaudit`); query slots
``saferoom_slots``; generic records ``saferoom_records`` (today's bytes are its namespace ``bytes``, requests
its namespace ``requests``); the files of release requests ``saferoom_request_files``
(:mod:`saferoom.requests.pgstore`); and the functions that make the gateway's frequent changes one
statement each (one round trip): ``saferoom_take_slot_v1``, ``saferoom_end_query_v1`` and the chain's
``saferoom_audit_commit_v1``. Their names carry a version: a later release adds a new one beside them while
this release's gateways run.

- Revocation: a gateway keeps a token's record for at most :data:`TOKEN_CACHE_SECONDS`, so a token revoked
  anywhere is refused by every gateway within that bound (plus one round trip).
- Query slots are rows with a lease: the gateway that holds one renews it every :data:`LEASE_SECONDS` / 3,
  and a killed gateway's slots are free again once their lease has run out.
- Failure: every call that cannot reach PostgreSQL raises :class:`~saferoom.errors.AuditError` (503), so no
  query runs without its durable decision; a broken connection is dropped and the next call opens a new
  one, so a gateway recovers by itself when the database is back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from saferoom import scratch
from saferoom.audit import AuditKey, PublicKey, Verification
from saferoom.errors import AuditError, LimitExceeded, StateConflict, UsageError
from saferoom.identity import TokenRecord, check_token, new_token
from saferoom.store.base import Versioned, checked_namespace
from saferoom.store.files import today

if TYPE_CHECKING:
    import psycopg

    from saferoom.store.pgaudit import PgAudit

log = logging.getLogger("saferoom.store")

TOKEN_CACHE_SECONDS = 1.0
LEASE_SECONDS = 30.0
CONNECT_SECONDS = 5
SCHEMA_LOCK = 0x5AFE_0001  # advisory lock ids: one namespace of ours
SLOTS_LOCK = 0x5AFE_0002

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS saferoom_tokens (id text PRIMARY KEY, username text NOT NULL, role text, "
    "created text NOT NULL, expires text, revoked boolean NOT NULL DEFAULT false, secret_sha256 text NOT NULL)",
    "CREATE TABLE IF NOT EXISTS saferoom_audit (seq bigint PRIMARY KEY, prev text NOT NULL, hash text NOT NULL, "
    "line text NOT NULL)",
    "CREATE TABLE IF NOT EXISTS saferoom_audit_head (id int PRIMARY KEY CHECK (id = 1), seq bigint NOT NULL, "
    "hash text NOT NULL, mac text, checkpoint_n int NOT NULL DEFAULT 0, checkpoint_seq bigint NOT NULL DEFAULT 0)",
    "INSERT INTO saferoom_audit_head (id, seq, hash) VALUES (1, 0, repeat('0', 64)) ON CONFLICT DO NOTHING",
    "CREATE TABLE IF NOT EXISTS saferoom_slots (slot text PRIMARY KEY, username text NOT NULL, gateway text NOT NULL, "
    "expires timestamptz NOT NULL)",
    "CREATE TABLE IF NOT EXISTS saferoom_records (namespace text NOT NULL, key text NOT NULL, version bigint NOT NULL, "
    "value jsonb NOT NULL, PRIMARY KEY (namespace, key))",
    "CREATE TABLE IF NOT EXISTS saferoom_request_files (request_id text NOT NULL, name text NOT NULL, "
    "sha256 text NOT NULL, n int NOT NULL, chunk bytea NOT NULL, PRIMARY KEY (request_id, name, n))",
    # a slot taken in one statement (one round trip): the user's lock, expired leases dropped, count, insert
    """CREATE OR REPLACE FUNCTION saferoom_take_slot_v1(lock_id int, who text, slot_id text, gateway_id text,
        most bigint, lease float8) RETURNS boolean LANGUAGE plpgsql AS $$
    BEGIN
        -- no wait for the disk: the query's decision, committed after this, waits for the WAL up to it
        PERFORM set_config('synchronous_commit', 'off', true);
        PERFORM pg_advisory_xact_lock(lock_id, hashtext(who));
        DELETE FROM saferoom_slots WHERE username = who AND expires < now();
        IF (SELECT count(*) FROM saferoom_slots WHERE username = who) >= most THEN
            RETURN false;
        END IF;
        INSERT INTO saferoom_slots VALUES (slot_id, who, gateway_id, now() + lease * interval '1 second');
        RETURN true;
    END $$""",
    # a query's end: its slot given back and today's bytes counted, without waiting for the disk (a crash
    # may lose the last fraction of a second of these: a slot then frees when its lease runs out)
    """CREATE OR REPLACE FUNCTION saferoom_end_query_v1(slot_id text, day_key text, size bigint) RETURNS void
    LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM set_config('synchronous_commit', 'off', true);
        DELETE FROM saferoom_slots WHERE slot = slot_id;
        INSERT INTO saferoom_records VALUES ('bytes', day_key, 1, jsonb_build_object('total', size))
        ON CONFLICT (namespace, key) DO UPDATE SET version = saferoom_records.version + 1,
            value = jsonb_build_object('total', (saferoom_records.value->>'total')::float8 + size);
    END $$""",
)
_PASSWORD = re.compile(r"(://[^:/@]*):[^@]*@")


def redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    return _PASSWORD.sub(r"\1:***@", url)


class Connections:
    """A few open connections, each used by one thread at a time; a broken one is dropped, never reused."""

    def __init__(self, url: str) -> None:
        try:
            import psycopg
        except ImportError:
            raise UsageError("PostgreSQL state needs psycopg: pip install 'saferoom[postgres]'") from None
        self.url, self._psycopg = url, psycopg
        self._idle: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection inside one transaction, committed when the block ends; PostgreSQL's failures are AuditError."""
        with self._using() as connection, connection.transaction():
            yield connection

    def run(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """One statement as its own transaction (autocommit): one round trip, prepared on each connection."""
        with self._using() as connection:
            cursor = connection.execute(sql, args, prepare=True)  # our fixed texts only, values bound
            return cursor.fetchall() if cursor.description is not None else []

    @contextlib.contextmanager
    def _using(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection for the block; given back after it, or dropped when PostgreSQL failed under it."""
        connection = self._take()
        try:
            yield connection
        except self._psycopg.Error as exc:
            connection.close()
            if connection.broken:  # the server went away: the idle connections went with it
                self.close()
            raise AuditError(f"the gateway's state in PostgreSQL ({redacted(self.url)}) cannot be reached or written "
                             f"({type(exc).__name__}); nothing runs until it is back") from None
        except BaseException:
            self._give(connection)
            raise
        self._give(connection)

    def _take(self) -> psycopg.Connection[Any]:
        with self._lock:
            while self._idle:
                connection = self._idle.pop()
                if not connection.closed and not connection.broken:
                    return connection
        try:
            return self._psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_SECONDS)
        except self._psycopg.Error as exc:
            raise AuditError(f"the gateway's state in PostgreSQL ({redacted(self.url)}) cannot be reached "
                             f"({type(exc).__name__}); nothing runs until it is back") from None

    def _give(self, connection: psycopg.Connection[Any]) -> None:
        if connection.closed or connection.broken:
            return
        with self._lock:
            self._idle.append(connection)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


class PgTokens:
    """Personal tokens in ``saferoom_tokens``; a record read is kept for TOKEN_CACHE_SECONDS at most."""

    def __init__(self, db: Connections) -> None:
        self._db = db
        self._cache: dict[str, tuple[float, TokenRecord]] = {}

    def create(self, user: str, role: str | None = None, ttl: timedelta | None = None) -> tuple[str, TokenRecord]:
        token, record = new_token(user, role, ttl)
        with self._db.transaction() as db:
            db.execute("INSERT INTO saferoom_tokens VALUES (%s, %s, %s, %s, %s, %s, %s)", token_row(record))
        return token, record

    def revoke(self, token_id: str) -> TokenRecord:
        with self._db.transaction() as db:
            row = db.execute(f"UPDATE saferoom_tokens SET revoked = true WHERE id = %s RETURNING {_TOKEN_COLUMNS}",
                             (token_id,)).fetchone()
        if row is None:
            raise UsageError(f"no token with id {token_id}; `saferoom token list` shows them")
        return TokenRecord(*row)

    def list(self) -> list[TokenRecord]:
        with self._db.transaction() as db:
            rows = db.execute(f"SELECT {_TOKEN_COLUMNS} FROM saferoom_tokens ORDER BY created, id").fetchall()
        return [TokenRecord(*row) for row in rows]

    def verify(self, token: str) -> Any:
        return check_token(token, self._lookup)

    def _lookup(self, token_id: str) -> TokenRecord | None:
        cached = self._cache.get(token_id)
        if cached is not None and time.monotonic() - cached[0] < TOKEN_CACHE_SECONDS:
            return cached[1]
        with self._db.transaction() as db:
            row = db.execute(f"SELECT {_TOKEN_COLUMNS} FROM saferoom_tokens WHERE id = %s", (token_id,)).fetchone()
        if row is None:
            self._cache.pop(token_id, None)
            return None
        record = TokenRecord(*row)
        self._cache[token_id] = (time.monotonic(), record)
        return record


_TOKEN_COLUMNS = "id, username, role, created, expires, revoked, secret_sha256"
_ADD_BYTES = ("INSERT INTO saferoom_records VALUES ('bytes', %s, 1, %s) ON CONFLICT (namespace, key) DO UPDATE "
              "SET version = saferoom_records.version + 1, value = jsonb_build_object('total', "
              "(saferoom_records.value->>'total')::float8 + %s)")  # today's counter, made on first use


def _total(size: int) -> Any:
    from psycopg.types.json import Jsonb

    return Jsonb({"total": size})


def token_row(record: TokenRecord) -> tuple[Any, ...]:
    return (record.id, record.user, record.role, record.created, record.expires, record.revoked, record.secret_sha256)


class PostgresStore:
    """The gateway's state in the PostgreSQL database ``url`` names (see the module's docstring)."""

    def __init__(self, url: str, *, lease: float = LEASE_SECONDS) -> None:
        self.url, self.lease = url, lease
        self.db = Connections(url)
        self.gateway = uuid.uuid4().hex[:12]  # whose slots are whose, for their leases
        self._held: set[str] = set()  # the slots this gateway's running queries hold: only these are renewed
        self.tokens = PgTokens(self.db)
        self._results: Path | None = None
        self._renewing: threading.Thread | None = None
        self._stop = threading.Event()
        from saferoom.store.pgaudit import AUDIT_SCHEMA

        with self.db.transaction() as db:
            db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))  # gateways starting together
            for statement in (*SCHEMA, *AUDIT_SCHEMA):
                db.execute(statement)  # fixed text, no values

    def __str__(self) -> str:
        return redacted(self.url)

    # the audit chain -----------------------------------------------------------
    def open_audit(self, key: AuditKey | None = None, forward: Sequence[str] = ()) -> PgAudit:
        from saferoom.store.pgaudit import PgAudit

        if forward:
            raise UsageError("--audit-forward is for folder state; with PostgreSQL state, copy the saferoom_audit "
                             "table off the database's host (logical replication, or a scheduled `saferoom audit "
                             "verify` against it)")
        self._start_renewing()
        return PgAudit(self.db, key)

    def read_audit(self, limit: int | None = None) -> list[dict[str, Any]]:
        from saferoom.store.pgaudit import read_lines

        return [json.loads(line) for line in read_lines(self.db, limit)]

    def verify_audit(self, key: AuditKey | None = None, public_key: PublicKey | None = None,
                     checkpoints: Path | None = None) -> Verification:
        from saferoom.store.pgaudit import verify_chain

        return verify_chain(self.db, key, public_key, checkpoints)

    def results_folder(self) -> Path:
        """Kept results stay on the gateway that made them (the web page's pages): a folder of its own."""
        if self._results is None:
            self._results = scratch.make("saferoom-results-")  # rows: gone even if this gateway is killed
        return self._results

    # limits --------------------------------------------------------------------------
    def take_slot(self, user: str, slot: str, limit: int | None) -> bool:
        if not limit:
            return True
        self._held.add(slot)  # before: a slot taken by a call whose answer is lost is still renewed, then given back
        rows = self.db.run("SELECT saferoom_take_slot_v1(%s, %s, %s, %s, %s, %s)",
                           (SLOTS_LOCK, user, slot, self.gateway, limit, self.lease))
        if not rows[0][0]:
            self._held.discard(slot)
        return bool(rows[0][0])

    def give_slot(self, user: str, slot: str) -> None:
        self._held.discard(slot)
        self.db.run("DELETE FROM saferoom_slots WHERE slot = %s", (slot,))

    def bytes_today(self, user: str) -> int:
        found = self.get("bytes", f"{user}/{today()}")
        return 0 if found is None else int(found.value["total"])

    def add_bytes(self, user: str, size: int) -> None:
        self.db.run(_ADD_BYTES, (f"{user}/{today()}", _total(size), size))

    def end_query(self, user: str, slot: str, size: int) -> None:
        """The slot given back and today's bytes counted in one statement: a query's end waits for it."""
        self._held.discard(slot)  # given back or not, no longer renewed: its lease runs out by itself
        self.db.run("SELECT saferoom_end_query_v1(%s, %s, %s)", (slot, f"{user}/{today()}", size))

    def _start_renewing(self) -> None:
        if self._renewing is None:
            self._renewing = threading.Thread(target=self._renew, name="saferoom-slot-leases", daemon=True)
            self._renewing.start()

    def _renew(self) -> None:
        """Keep the slots of this gateway's running queries leased; a failed renewal is tried again next time.

        Only those: a slot whose giving back failed (PostgreSQL away as its query ended) frees by its lease."""
        while not self._stop.wait(self.lease / 3):
            try:
                self.db.run("UPDATE saferoom_slots SET expires = now() + %s * interval '1 second' WHERE gateway = %s "
                            "AND slot = ANY(%s)", (self.lease, self.gateway, list(self._held.copy())))
            except AuditError as exc:
                log.error("query slot leases not renewed: %s", exc)

    # generic records ------------------------------------------------------------------
    def get(self, namespace: str, key: str) -> Versioned | None:
        with self.db.transaction() as db:
            row = db.execute("SELECT version, value FROM saferoom_records WHERE namespace = %s AND key = %s",
                             (checked_namespace(namespace), key)).fetchone()
        return None if row is None else Versioned(row[0], row[1])

    def put(self, namespace: str, key: str, value: dict[str, Any], version: int) -> Versioned:
        from psycopg.types.json import Jsonb

        args = (checked_namespace(namespace), key, version + 1, Jsonb(value))
        with self.db.transaction() as db:
            if version == 0:
                row = db.execute("INSERT INTO saferoom_records VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1",
                                 args).fetchone()
            else:
                row = db.execute("UPDATE saferoom_records SET version = %s, value = %s WHERE namespace = %s AND key = %s "
                                 "AND version = %s RETURNING 1", (*args[2:], *args[:2], version)).fetchone()
        if row is None:
            raise StateConflict(f"{namespace}/{key} is not at version {version}: read it again")
        return Versioned(version + 1, value)

    def spend(self, namespace: str, key: str, amount: float, limit: float | None = None) -> float:
        from psycopg.types.json import Jsonb

        with self.db.transaction() as db:
            db.execute("INSERT INTO saferoom_records VALUES (%s, %s, 0, %s) ON CONFLICT DO NOTHING",
                       (checked_namespace(namespace), key, Jsonb({"total": 0})))
            row = db.execute("UPDATE saferoom_records SET version = version + 1, value = jsonb_build_object('total', "
                             "(value->>'total')::float8 + %s) WHERE namespace = %s AND key = %s "
                             "RETURNING (value->>'total')::float8", (amount, namespace, key)).fetchone()
            total = float(row[0]) if row is not None else 0.0
            if limit is not None and total > limit:
                raise LimitExceeded(f"{namespace}/{key} would reach {total:g}, past its limit of {limit:g}")
        return total

    def close(self) -> None:
        self._stop.set()
        if self._renewing is not None:
            self._renewing.join()
        self.db.close()
        if self._results is not None:
            scratch.remove(self._results)
