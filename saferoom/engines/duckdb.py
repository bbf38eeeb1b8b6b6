"""The embedded engine: DuckDB, read-only and closed.

Sources are attached read-only into an in-memory database. Before any user
query runs, external access is disabled, extension autoload and autoinstall
are off, and the configuration is locked, so even SQL that slipped past the
guard could not read files, load code or loosen a setting.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import duckdb
import pyarrow as pa
from sqlglot import exp

from saferoom import scratch
from saferoom.engines.base import (
    Cancel,
    Catalog,
    EngineSpec,
    KeyRows,
    Templates,
    policy_names_only,
    stopped,
    until_done,
    without_values,
)
from saferoom.errors import EngineError, LimitExceeded
from saferoom.keyed import TOKEN_FUNCTION, token_function
from saferoom.policy.limits import Limits
from saferoom.secrets import Secret

_FUNCTIONS = ["Count", "CountIf", "Sum", "Avg", "Min", "Max", "Median", "Mode", "Stddev", "StddevPop", "StddevSamp", "Variance", "VariancePop", "Corr", "CovarPop", "CovarSamp", "ApproxDistinct", "ApproxQuantile", "Quantile", "PercentileCont", "PercentileDisc", "AnyValue", "ArgMax", "ArgMin", "First", "Last", "ArrayAgg", "GroupConcat", "LogicalAnd", "LogicalOr", "RowNumber", "Rank", "DenseRank", "PercentRank", "CumeDist", "Ntile", "Lag", "Lead", "FirstValue", "LastValue", "NthValue", "Abs", "Ceil", "Floor", "Round", "Sqrt", "Exp", "Ln", "Log", "Pow", "Sign", "Greatest", "Least", "Coalesce", "Nullif", "Rand", "Lower", "Upper", "Length", "Trim", "Substring", "Left", "Right", "Replace", "Concat", "ConcatWs", "Pad", "Reverse", "StrPosition", "SplitPart", "StartsWith", "Contains", "RegexpLike", "RegexpReplace", "RegexpExtract", "Repeat", "Initcap", "Levenshtein", "Chr", "Ascii", "Split", "MD5", "SHA", "SHA2", "Hex", "DateTrunc", "TimestampTrunc", "Extract", "DateDiff", "DateAdd", "DateSub", "Year", "Month", "Day", "Hour", "Minute", "Second", "DayOfWeek", "DayOfYear", "DayOfMonth", "Week", "Quarter", "TimeToStr", "StrToTime", "StrToDate", "CurrentDate", "CurrentTimestamp", "CurrentTime", "DateFromParts", "LastDay", "TimeToUnix", "UnixToTime", "ArrayContains", "ArraySize", "Explode", "Unnest", "Transform", "ArrayFilter", "Map"]
# Sampling, PIVOT/UNPIVOT and generators read nothing but the views and literals; check_nodes bounds their form.
_CONSTRUCTS = ["TableSample", "Pivot", "PivotAlias", "UnpivotColumns", "GenerateSeries", "Columns"]

_ANONYMOUS = ["AGE", "DATE_PART", "HASH", "NOW", "LEN", "ARRAY_LENGTH", "LIST_SUM", "LIST_AVG", "LIST_SORT", "LIST_DISTINCT", "LIST_UNIQUE", "QUANTILE_DISC", "QUANTILE_CONT", "ROUND_EVEN", "TRUNC", "EVEN", "ISNAN", "ISINF", "ISFINITE", "FACTORIAL", "GAMMA", "STRIP_ACCENTS", "JACCARD", "HAMMING", "DAMERAU_LEVENSHTEIN", "JARO_WINKLER_SIMILARITY", "PRINTF", "FORMAT", "TIME_BUCKET", "DAYNAME", "MONTHNAME", "ISODOW", "ISOYEAR", "YEARWEEK", "EPOCH", "EPOCH_MS", "BIT_LENGTH", "ENDS_WITH", "SUFFIX", "PREFIX", "REGEXP_FULL_MATCH", "REGEXP_SPLIT_TO_ARRAY", "STRING_SPLIT", "ARRAY_TO_STRING", "MAKE_TIMESTAMP", "DATE_SUB", "DATE_ADD", "DATEDIFF", "DATESUB", "DATEADD", "ENTROPY", "KURTOSIS", "SKEWNESS", "REGR_SLOPE", "REGR_INTERCEPT", "REGR_R2", "REGR_COUNT", "FAVG", "FSUM", "BIT_AND", "BIT_OR", "BIT_XOR", "GROUPING", "TYPEOF", "HISTOGRAM"]

DUCKDB = EngineSpec(
    name="duckdb",
    dialect="duckdb",
    default_schema="main",
    functions=frozenset(_FUNCTIONS),
    anonymous_functions=frozenset(_ANONYMOUS),
    constructs=frozenset(_CONSTRUCTS),
    templates=Templates(
        mask="CASE WHEN length(__v) > 4 THEN repeat('*', length(__v) - 4) || right(__v, 4) ELSE repeat('*', length(__v)) END",
        tokenize=f"{TOKEN_FUNCTION}(__v)",
        generalize_date="date_trunc('__p', __v)",
        generalize_number="floor(__v / __p) * __p",
        generalize_text="left(__v, __p)",
        generalize_exact="__w - ((__w % __p) + __p) % __p",
    ),
    date_types=("DATE", "TIMESTAMP"),
    number_types=("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
                  "UINTEGER", "UBIGINT", "UHUGEINT", "DECIMAL", "FLOAT", "DOUBLE", "REAL"),
    text_types=("VARCHAR", "TEXT", "STRING", "CHAR", "BPCHAR"),
    max_value_bytes=1 << 20,
    per_user=True,
    pseudo_columns=frozenset({"rowid"}),
)

CLOSED_CONFIG: dict[str, str | bool | int | float | list[str]] = {"autoload_known_extensions": False, "autoinstall_known_extensions": False}


class Attachment(Protocol):
    """A source DuckDB reads from files: how it is attached, and which folders its queries must still reach."""

    @property
    def path(self) -> Path: ...

    def attach(self, conn: duckdb.DuckDBPyConnection, name: str, paths: dict[str, str]) -> None: ...

    def folders(self) -> list[Path]: ...


@dataclass(frozen=True)
class DatabaseFile:
    """A DuckDB database file, attached read-only under the source's name."""

    path: Path

    def attach(self, conn: duckdb.DuckDBPyConnection, name: str, paths: dict[str, str]) -> None:
        """``paths`` are scrubbed from the error if it cannot be opened."""
        if not self.path.is_file():
            raise EngineError(f"source `{name}`: database file {self.path.name} does not exist; check sources.{name}.path")
        try:
            conn.execute(attach_sql(self.path, name, read_only=True))
        except duckdb.Error as exc:
            raise EngineError(f"source `{name}` cannot be opened: {scrub(str(exc), paths)}") from None

    def folders(self) -> list[Path]:
        return []  # attached before the engine is closed to files: nothing to reach later


class DuckDBEngine:
    """One in-memory DuckDB with every source attached read-only, then locked."""

    spec = DUCKDB

    def __init__(self, sources: dict[str, Attachment], token_key: Secret | None = None, limits: Limits | None = None,
                 spill: Path | None = None) -> None:
        """``spill``: the folder for spill files, kept by the caller (who removes it even if this process is
        killed); by default a private one, removed on close."""
        self._lock, self._facts = threading.Lock(), threading.Lock()
        self._keys: dict[tuple[tuple[str, str, str], str], KeyRows] = {}
        self._fixed: frozenset[tuple[str, str, str]] | None = None
        self._timeout = limits.timeout_seconds if limits is not None else None  # of the one-time key_rows too
        self._paths = {name: str(source.path) for name, source in sources.items()}
        self._conn = duckdb.connect(":memory:", config=CLOSED_CONFIG)
        self._spill: str | None = None  # the private spill folder this engine removes on close
        try:
            no_progress_bar(self._conn)
            for name, source in sources.items():
                source.attach(self._conn, name, self._paths)
            if token_key is not None:
                token_function(self._conn, token_key)
            if limits is not None:
                folder = str(spill) if spill else spill_folder(limits)
                self._spill = None if spill else folder
                _bound(self._conn, limits, folder)
            _only_reach(self._conn, [folder for source in sources.values() for folder in source.folders()])
            self._conn.execute("SET enable_external_access = false")
            self._conn.execute("SET lock_configuration = true")
        except BaseException:
            self.close()
            raise

    def catalog(self) -> Catalog:
        return read_catalog(self._conn)

    def fixed_tables(self) -> frozenset[tuple[str, str, str]]:
        """Read once: the sources are attached, and the configuration locked, before the engine is used."""
        if self._fixed is None:
            self._fixed = fixed_tables(self._conn)
        return self._fixed

    def key_rows(self, table: tuple[str, str, str], column: str) -> KeyRows | None:
        """One GROUP BY over the key, once per (table, column) while the engine lives: the file is attached
        read-only, so what it proves stays true (about 0.5 s for 10M rows, then a dictionary lookup). It runs
        under the engine's limits (memory, the role's timeout); when it fails the caller counts exactly."""
        if table not in self.fixed_tables():
            return None
        with self._facts:
            found = (table, column.lower())
            if found not in self._keys:
                counted = self.stream(key_rows_sql(table, column), timeout=self._timeout).read_all()
                self._keys[found] = KeyRows(*(int(c[0].as_py() or 0) for c in counted.columns))
            return self._keys[found]

    def stream(self, sql: str, batch_size: int = 65536, timeout: float | None = None,
               cancel: Cancel | None = None) -> pa.RecordBatchReader:
        """Arrow record batches of a query; ``cancel`` (or ``timeout`` seconds passing) interrupts it."""
        cancel = cancel or Cancel()
        with self._lock:
            cursor = self._conn.cursor()
        done = threading.Event()
        cancel.on_cancel(until_done(cursor.interrupt, done))
        timer = cancel.after(timeout)
        try:
            with self._errors(cancel, timeout):
                reader = cursor.sql(sql).to_arrow_reader(batch_size)
        except BaseException:
            _end(timer, cursor, done)
            raise
        return pa.RecordBatchReader.from_batches(reader.schema, self._batches(reader, cursor, (timer, done), cancel, timeout))

    def _batches(self, reader: pa.RecordBatchReader, cursor: duckdb.DuckDBPyConnection,
                 ending: tuple[threading.Timer | None, threading.Event], cancel: Cancel,
                 timeout: float | None) -> Iterator[pa.RecordBatch]:
        try:
            with self._errors(cancel, timeout):
                yield from reader
        finally:
            reader.close()
            _end(ending[0], cursor, ending[1])

    def column_types(self, sql: str) -> list[tuple[str, str]]:
        with self._errors(), self._lock:
            relation = self._conn.cursor().sql(sql)
            return [(name, str(kind)) for name, kind in zip(relation.columns, relation.types, strict=True)]

    def close(self) -> None:
        self._conn.close()
        if self._spill is not None:
            scratch.remove(self._spill)

    @contextlib.contextmanager
    def _errors(self, cancel: Cancel | None = None, timeout: float | None = None) -> Iterator[None]:
        try:
            yield
        except (duckdb.Error, pa.ArrowException, OSError) as exc:  # a failure mid-stream reaches Arrow's reader as an IOError
            if cancel is not None and cancel.reason is not None and "INTERRUPT" in str(exc).upper():
                raise stopped(cancel, timeout) from None
            if isinstance(exc, duckdb.OutOfMemoryException):
                raise LimitExceeded(f"the query needs more memory than the role's memory_limit allows: {self._scrub(str(exc))}") from None
            raise EngineError(self._scrub(str(exc))) from None

    def _scrub(self, message: str) -> str:
        return scrub(message, self._paths)


def no_progress_bar(conn: duckdb.DuckDBPyConnection) -> None:
    """Never draw a progress bar on a notebook's stdout. In a Jupyter kernel without ipywidgets DuckDB has it
    off already and refuses any change to it, even to off: set it only when it is on."""
    ((on,),) = conn.execute("select current_setting('enable_progress_bar')").fetchall()
    if on:
        conn.execute("SET enable_progress_bar = false")


SPILL_PREFIX = "saferoom-spill-"


def spill_folder(limits: Limits) -> str | None:
    """A new folder for one engine's spill files, when its limits allow spilling; whoever makes it removes it
    (with :func:`saferoom.scratch.remove`; if that process is killed, the next one to make a spill folder does)."""
    return str(scratch.make(SPILL_PREFIX)) if limits.temp_limit else None


def _bound(conn: duckdb.DuckDBPyConnection, limits: Limits, spill: str | None) -> None:
    """Memory, threads and spill space (in ``spill``, a folder no one else uses) for every query of this engine."""
    for name, value in [("memory_limit", limits.memory_limit), ("threads", limits.threads),
                        ("max_temp_directory_size", limits.temp_limit), ("temp_directory", spill)]:
        if value is not None:
            conn.execute(_set(name, value))


def _only_reach(conn: duckdb.DuckDBPyConnection, folders: list[Path]) -> None:
    """The folders queries still read once external access is off (a Parquet source's views read its files)."""
    if folders:
        allowed = exp.Array(expressions=[exp.Literal.string(f"{folder}{os.sep}") for folder in folders])
        conn.execute(exp.Set(expressions=[exp.SetItem(this=exp.EQ(this=exp.var("allowed_directories"), expression=allowed))]).sql("duckdb"))


def _set(name: str, value: object) -> str:
    return exp.Set(expressions=[exp.SetItem(this=exp.EQ(this=exp.var(name), expression=_literal(value)))]).sql("duckdb")


def _literal(value: object) -> exp.Expr:
    return exp.Literal.number(value) if isinstance(value, int) else exp.Literal.string(str(value))


def _end(timer: threading.Timer | None, cursor: duckdb.DuckDBPyConnection, done: threading.Event) -> None:
    done.set()
    if timer is not None:
        timer.cancel()
    with contextlib.suppress(duckdb.Error):
        cursor.close()


def scrub(message: str, paths: dict[str, str]) -> str:
    """Keep the engine's explanation; drop echoed SQL, paths, quoted values and internal names."""
    for name, path in paths.items():
        message = message.replace(path, f"<source {name}>")
    message = without_values(re.sub(r"(/[\w.\-]+)+", "<path>", message))
    return policy_names_only(re.sub(r"__saferoom_(hmac_)?token", "tokenize", message, flags=re.IGNORECASE))


def attach_sql(path: Path | str, name: str, *, read_only: bool) -> str:
    options = [exp.AttachOption(this=exp.var("READ_ONLY"))] if read_only else []
    statement = exp.Attach(
        this=exp.alias_(exp.Literal.string(str(path)), exp.to_identifier(name, quoted=True)), expressions=options
    )
    return statement.sql("duckdb")


def fixed_tables(conn: duckdb.DuckDBPyConnection) -> frozenset[tuple[str, str, str]]:
    """The base tables of read-only attached database files, as (database, schema, table) lower-cased: their
    columns cannot change while the connection lasts (a view over Parquet files can: it reads them afresh)."""
    rows = conn.execute(
        "SELECT t.database_name, t.schema_name, t.table_name FROM duckdb_tables() AS t "
        "JOIN duckdb_databases() AS d ON d.database_name = t.database_name "
        "WHERE d.readonly AND NOT t.internal AND NOT t.temporary"
    ).fetchall()
    return frozenset((d.lower(), s.lower(), t.lower()) for d, s, t in rows)


def key_rows_sql(table: tuple[str, str, str], column: str) -> str:
    """The most rows of one key, the keys, and their rows: NULL keys make one group of 0 rows, which counts as
    none of them.

    >>> key_rows_sql(("prod", "main", "orders"), "customer_id")
    'SELECT MAX(n), COUNT(*) FILTER(WHERE n > 0), SUM(n) FROM (SELECT COUNT("customer_id") AS n FROM "prod"."main"."orders" GROUP BY "customer_id")'
    """
    key = exp.column(column, quoted=True)
    source = exp.table_(table[2], db=table[1], catalog=table[0], quoted=True)
    counts = exp.select(exp.alias_(exp.Count(this=key.copy()), "n")).from_(source).group_by(key.copy())
    values = exp.Filter(this=exp.Count(this=exp.Star()), expression=exp.Where(this=exp.column("n") > 0))
    total = exp.Sum(this=exp.column("n"))
    return exp.select(exp.func("max", exp.column("n")), values, total).from_(counts.subquery()).sql("duckdb")


def read_catalog(conn: duckdb.DuckDBPyConnection) -> Catalog:
    """Every attached source's tables and column types, names lower-cased."""
    rows = conn.execute(
        "SELECT database_name, schema_name, table_name, column_name, data_type FROM duckdb_columns() "
        "WHERE NOT internal AND database_name NOT IN ('memory', 'system', 'temp') ORDER BY column_index"
    ).fetchall()
    catalog: Catalog = {}
    for database, schema, table, column, data_type in rows:
        catalog.setdefault((database.lower(), schema.lower(), table.lower()), {})[column.lower()] = data_type
    return catalog
