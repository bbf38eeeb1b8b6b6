"""PostgreSQL as a source: read-only sessions, a statement timeout, results as Arrow via ADBC.

Each connection is made read-only (``default_transaction_read_only``) with an
empty ``search_path`` (the guard's SQL names every table). Tokens are the same
HMAC-SHA256 as DuckDB's, written inline from PostgreSQL's built-in ``sha256``
(no extension). The key's pads reach the session as bound values into a
temporary table, ``pg_temp.saferoom_key``, which no other session can read (not
even a superuser's); they never appear in SQL text, so neither ``pg_proc`` nor
``pg_stat_activity`` nor a plan shows them.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import pyarrow as pa
from sqlglot import exp

from saferoom.engines.base import (
    Cancel,
    Catalog,
    EngineSpec,
    KeyRows,
    Templates,
    policy_names_only,
    until_done,
    without_values,
)
from saferoom.errors import EngineError, LimitExceeded, QueryCancelled
from saferoom.secrets import Secret, hmac_pads

# The session's keys: one row each, written with bound values when a connection opens.
SESSION_KEYS = ("CREATE TEMPORARY TABLE saferoom_key (id int PRIMARY KEY, inner_pad bytea NOT NULL, "
                "outer_pad bytea NOT NULL)")
SESSION_KEY_ROW = "INSERT INTO pg_temp.saferoom_key (id, inner_pad, outer_pad) VALUES ($1, $2, $3)"


@dataclass(frozen=True)
class KeyTable:
    """Where a key's HMAC pads are read from: a row (id, inner_pad, outer_pad) of a table SQL never shows."""

    schema: str
    name: str
    id: int = 1

    def pad(self, column: str) -> exp.Expr:
        """An uncorrelated scalar subquery: evaluated once per query, and an InitPlan in EXPLAIN, never a value."""
        table = exp.table_(self.name, db=self.schema, quoted=True, alias="k")
        lookup = exp.select(exp.column(column, table="k")).from_(table).where(exp.column("id", table="k").eq(self.id))
        return exp.Subquery(this=lookup)


def builtin(name: str, *args: exp.Expr) -> exp.Expr:
    """A call that can only mean PostgreSQL's own function, whatever the search_path says."""
    return exp.Dot(this=exp.to_identifier("pg_catalog"), expression=exp.Anonymous(this=name, expressions=list(args)))


def as_builtin(value: exp.Expr, type_name: str) -> exp.Expr:
    """A cast to PostgreSQL's own type: a pg_temp or public look-alike named ``uuid`` cannot stand in."""
    return exp.Cast(this=value, to=exp.DataType.build(f"pg_catalog.{type_name}", dialect="postgres", udt=True))


def hmac_hex(data: exp.Expr, key: KeyTable) -> exp.Expr:
    """HMAC-SHA256 (RFC 2104) of bytes as 64 hex digits, from the key's pads and the built-in sha256."""
    inner = builtin("sha256", builtin("byteacat", key.pad("inner_pad"), data))
    return builtin("encode", builtin("sha256", builtin("byteacat", key.pad("outer_pad"), inner)), exp.Literal.string("hex"))


def token_sql(value: exp.Expr, key: KeyTable) -> exp.Expr:
    """The first 128 bits of the HMAC of the value's text, as a UUID: DuckDB's and the gateway's token."""
    utf8 = builtin("convert_to", as_builtin(value, "text"), exp.Literal.string("UTF8"))
    return as_builtin(as_builtin(builtin("left", hmac_hex(utf8, key), exp.Literal.number(32)), "uuid"), "text")


def fingerprint_sql(value: exp.Expr, key: KeyTable) -> exp.Expr:
    """64 bits of the HMAC of the trimmed, lower-cased text, as a signed bigint (DuckDB's fingerprint)."""
    utf8 = builtin("convert_to", builtin("lower", builtin("btrim", value)), exp.Literal.string("UTF8"))
    bits = builtin("textcat", exp.Literal.string("x"), builtin("left", hmac_hex(utf8, key), exp.Literal.number(16)))
    return as_builtin(as_builtin(bits, "bit(64)"), "int8")


TOKEN_KEY = KeyTable("pg_temp", "saferoom_key", 1)
FINGERPRINT_KEY = KeyTable("pg_temp", "saferoom_key", 2)

_FUNCTIONS = """
    Count Sum Avg Min Max Stddev StddevPop StddevSamp Variance VariancePop Corr CovarPop CovarSamp
    PercentileCont PercentileDisc ArrayAgg GroupConcat LogicalAnd LogicalOr
    RowNumber Rank DenseRank PercentRank CumeDist Ntile Lag Lead FirstValue LastValue NthValue
    Abs Ceil Floor Round Sqrt Exp Ln Log Pow Sign Greatest Least Coalesce Nullif
    Lower Upper Length Trim Substring Left Right Replace Concat ConcatWs Pad Reverse StrPosition
    SplitPart StartsWith RegexpLike RegexpReplace Repeat Initcap Chr Ascii MD5
    DateTrunc TimestampTrunc Extract DateAdd DateSub CurrentDate CurrentTimestamp TimeToStr Unnest Explode
""".split()

_ANONYMOUS = "AGE DATE_PART TO_CHAR BTRIM TRUNC WIDTH_BUCKET JUSTIFY_DAYS MAKE_DATE GROUPING".split()

POSTGRES = EngineSpec(
    name="postgres",
    dialect="postgres",
    default_schema="public",
    functions=frozenset(_FUNCTIONS),
    anonymous_functions=frozenset(_ANONYMOUS),
    templates=Templates(
        mask="CASE WHEN length(__v) > 4 THEN repeat('*', length(__v) - 4) || right(__v, 4) ELSE repeat('*', length(__v)) END",
        tokenize=token_sql(exp.column("__v"), TOKEN_KEY).sql("postgres"),
        generalize_date="date_trunc('__p', __v)",
        generalize_number="floor(CAST(__v AS NUMERIC) / __p) * __p",
        generalize_text="left(__v, __p)",
    ),
    text_type="TEXT",
    date_types=("DATE", "TIMESTAMP"),
    number_types=("SMALLINT", "INTEGER", "BIGINT", "NUMERIC", "DECIMAL", "REAL", "DOUBLE PRECISION"),
    text_types=("TEXT", "CHARACTER VARYING", "CHARACTER", "VARCHAR", "CHAR"),
    catalog_in_names=False,
)


class PostgresEngine:
    """Connections to one PostgreSQL database, read-only, pooled, each holding the keys in a temporary table."""

    spec = POSTGRES

    def __init__(self, name: str, url: str, password: Secret | None, token_key: Secret | None = None,
                 fingerprint_key: Secret | None = None) -> None:
        self.name = name
        self._fingerprint_key = fingerprint_key
        self._uri = _with_password(url, password)
        self._secrets = [s for s in (password.reveal() if password else None, self._uri) if s]
        self._token_key = token_key
        self._idle: list[object] = []
        self._lock = threading.Lock()
        self._release(self._connect())  # fail now, with a clear error, if the source is unreachable

    def _connect(self) -> object:
        import adbc_driver_postgresql.dbapi as dbapi

        try:
            conn = dbapi.connect(self._uri, autocommit=True)
        except dbapi.Error as exc:
            raise EngineError(f"source `{self.name}`: cannot connect to PostgreSQL: {self._scrub(str(exc))}; check that "
                              f"the server is up and `sources.{self.name}.url` and its password") from None
        with self._errors():
            with conn.cursor() as cur:
                cur.execute("SET search_path = ''")  # first: the key table's types resolve to built-ins
                self._load_keys(cur)
                cur.execute("SET default_transaction_read_only = on")
            return conn

    def _load_keys(self, cur: Any) -> None:
        keys = [(table.id, key) for table, key in ((TOKEN_KEY, self._token_key), (FINGERPRINT_KEY, self._fingerprint_key))
                if key is not None]
        if keys:
            cur.execute(SESSION_KEYS)
        for key_id, key in keys:
            cur.execute(SESSION_KEY_ROW, parameters=(key_id, *hmac_pads(key)))

    def _acquire(self) -> object:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._connect()

    def _release(self, conn: object) -> None:
        with self._lock:
            self._idle.append(conn)

    def _discard(self, conn: object) -> None:
        """After an error a connection's state is unknown (a restarted server leaves every pooled one dead):
        close it and the idle ones, so the next query connects afresh."""
        with self._lock:
            dead, self._idle = [conn, *self._idle], []
        for each in dead:
            with contextlib.suppress(Exception):
                each.close()  # type: ignore[attr-defined]

    def fixed_tables(self) -> frozenset[tuple[str, str, str]]:
        return frozenset()  # a live table can gain a column at any moment: views kept

    def key_rows(self, table: tuple[str, str, str], column: str) -> KeyRows | None:
        return None  # a live table's rows change at any moment: nothing to prove once

    def catalog(self) -> Catalog:
        sql = ("SELECT table_schema, table_name, column_name, data_type FROM information_schema.columns "
               "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') AND table_schema NOT LIKE 'pg\\_%temp\\_%' "  # sessions' keys
               "ORDER BY table_schema, table_name, ordinal_position")
        catalog: Catalog = {}
        for schema, table, column, kind in self._rows(sql):
            catalog.setdefault((self.name.lower(), schema.lower(), table.lower()), {})[column.lower()] = kind.upper()
        return catalog

    def _rows(self, sql: str) -> list[tuple[Any, ...]]:
        conn = self._acquire()
        try:
            with self._errors(), conn.cursor() as cur:  # type: ignore[attr-defined]
                cur.execute(sql)
                rows: list[tuple[Any, ...]] = cur.fetchall()
        except BaseException:
            self._discard(conn)
            raise
        self._release(conn)
        return rows

    def stream(self, sql: str, batch_size: int = 65536, timeout: float | None = None,
               cancel: Cancel | None = None) -> pa.RecordBatchReader:
        """Arrow batches of a query; PostgreSQL's statement_timeout bounds it, ``cancel`` stops it (a cancel request)."""
        cancel = cancel or Cancel()
        conn = self._acquire()
        cur = conn.cursor()  # type: ignore[attr-defined]
        done = threading.Event()
        cancel.on_cancel(until_done(cur.adbc_cancel, done))
        try:
            with self._errors(timeout, cancel):
                cur.execute(f"SET statement_timeout = {int((timeout or 0) * 1000)}")
                cur.execute(sql)
                reader = cur.fetch_record_batch()
        except BaseException:
            done.set()
            with contextlib.suppress(Exception):
                cur.close()
            self._discard(conn)
            raise
        schema = _decimal_schema(reader.schema)
        return pa.RecordBatchReader.from_batches(schema, self._batches(reader, schema, cur, conn, timeout, (cancel, done)))

    def _batches(self, reader: pa.RecordBatchReader, schema: pa.Schema, cur: object, conn: object,
                 timeout: float | None, stopping: tuple[Cancel, threading.Event]) -> Iterator[pa.RecordBatch]:
        cancel, done = stopping
        healthy = True
        try:
            with self._errors(timeout, cancel):
                for batch in reader:
                    yield batch if batch.schema.equals(schema) else _as_decimal(batch, schema)
        except GeneratorExit:  # the reader stopped early (a row limit): the connection is fine
            raise
        except BaseException:
            healthy = False
            raise
        finally:
            done.set()
            with contextlib.suppress(Exception):
                cur.close()  # type: ignore[attr-defined]
            self._release(conn) if healthy and cancel.reason is None else self._discard(conn)

    def column_types(self, sql: str) -> list[tuple[str, str]]:
        reader = self.stream(f"SELECT * FROM ({sql}) AS q LIMIT 0")
        return [(f.name, str(f.type)) for f in reader.schema]

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()  # type: ignore[attr-defined]

    @contextlib.contextmanager
    def _errors(self, timeout: float | None = None, cancel: Cancel | None = None) -> Iterator[None]:
        try:
            yield
        except Exception as exc:  # ADBC raises its own DB-API classes; translate all of them, once, here
            if isinstance(exc, EngineError | LimitExceeded):
                raise
            message = str(exc)
            if cancel is not None and cancel.reason is not None and "cancel" in message.lower():
                raise QueryCancelled(f"the query was stopped: {cancel.reason}") from None
            if "statement timeout" in message:
                raise LimitExceeded(f"the query was stopped after {timeout:g} s, the role's timeout_seconds") from None
            raise EngineError(self._scrub(message)) from None

    def _scrub(self, message: str) -> str:
        for secret in self._secrets:
            message = message.replace(secret, "***")
        message = without_values(re.sub(r"postgres(ql)?://\S+", "<source>", message))
        message = re.sub(r"^(ProgrammingError|OperationalError|InternalError|DatabaseError|Error): ", "", message)
        return policy_names_only(message.strip())[:500]


NUMERIC = pa.decimal128(38, 10)


def _decimal_schema(schema: pa.Schema) -> pa.Schema:
    """ADBC hands NUMERIC over as text; saferoom returns exact decimals, as DuckDB does."""
    fields = [f.with_type(NUMERIC).with_metadata(None) if _is_numeric(f) else f for f in schema]
    return pa.schema(fields, metadata=schema.metadata)


def _is_numeric(field: pa.Field) -> bool:
    return (field.metadata or {}).get(b"ADBC:postgresql:typname") == b"numeric"


def _as_decimal(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    try:
        columns = [_storage(c).cast(f.type) if c.type != f.type else c for c, f in zip(batch.columns, schema, strict=True)]
    except pa.ArrowInvalid:
        raise EngineError("a NUMERIC value has more than 10 decimal places; round it in the query") from None
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _storage(column: pa.Array) -> pa.Array:
    return column.storage if isinstance(column.type, pa.ExtensionType) else column


def _with_password(url: str, password: Secret | None) -> str:
    if password is None:
        return url
    parts = urlsplit(url)
    user, _, host = parts.netloc.rpartition("@")
    netloc = f"{user}:{quote(password.reveal(), safe='')}@{host}" if user else parts.netloc
    return urlunsplit(parts._replace(netloc=netloc))
