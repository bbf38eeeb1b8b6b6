"""The embedded engine: DuckDB, read-only and closed.

Sources are attached read-only into an in-memory database. Before any user
query runs, external access is disabled, extension autoload and autoinstall
are off, and the configuration is locked, so even SQL that slipped past the
guard could not read files, load code or loosen a setting.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow as pa
import sqlglot
from sqlglot import exp

from saferoom import keyed
from saferoom.engines.base import Cancel, Catalog, EngineSpec, Templates, stopped, until_done
from saferoom.errors import EngineError, LimitExceeded
from saferoom.keyed import fingerprint_key as fingerprint_key  # re-exported: builds import it from here
from saferoom.policy.limits import Limits
from saferoom.secrets import Secret, hmac_pads

TOKEN_FUNCTION = "__saferoom_token"
FINGERPRINT_FUNCTION = "__saferoom_fingerprint"
FINGERPRINT_TEXT_FUNCTION = "__saferoom_fingerprint_text"

_FUNCTIONS = ["Count", "CountIf", "Sum", "Avg", "Min", "Max", "Median", "Mode", "Stddev", "StddevPop", "StddevSamp", "Variance", "VariancePop", "Corr", "CovarPop", "CovarSamp", "ApproxDistinct", "ApproxQuantile", "Quantile", "PercentileCont", "PercentileDisc", "AnyValue", "ArgMax", "ArgMin", "First", "Last", "ArrayAgg", "GroupConcat", "LogicalAnd", "LogicalOr", "RowNumber", "Rank", "DenseRank", "PercentRank", "CumeDist", "Ntile", "Lag", "Lead", "FirstValue", "LastValue", "NthValue", "Abs", "Ceil", "Floor", "Round", "Sqrt", "Exp", "Ln", "Log", "Pow", "Sign", "Greatest", "Least", "Coalesce", "Nullif", "Rand", "Lower", "Upper", "Length", "Trim", "Substring", "Left", "Right", "Replace", "Concat", "ConcatWs", "Pad", "Reverse", "StrPosition", "SplitPart", "StartsWith", "Contains", "RegexpLike", "RegexpReplace", "RegexpExtract", "Repeat", "Initcap", "Levenshtein", "Chr", "Ascii", "Split", "MD5", "SHA", "SHA2", "Hex", "DateTrunc", "TimestampTrunc", "Extract", "DateDiff", "DateAdd", "DateSub", "Year", "Month", "Day", "Hour", "Minute", "Second", "DayOfWeek", "DayOfYear", "DayOfMonth", "Week", "Quarter", "TimeToStr", "StrToTime", "StrToDate", "CurrentDate", "CurrentTimestamp", "CurrentTime", "DateFromParts", "LastDay", "TimeToUnix", "UnixToTime", "ArrayContains", "ArraySize", "Explode", "Unnest"]

_ANONYMOUS = ["AGE", "DATE_PART", "HASH", "NOW", "LEN", "ARRAY_LENGTH", "LIST_SUM", "LIST_AVG", "LIST_SORT", "LIST_DISTINCT", "LIST_UNIQUE", "QUANTILE_DISC", "QUANTILE_CONT", "ROUND_EVEN", "TRUNC", "EVEN", "ISNAN", "ISINF", "ISFINITE", "FACTORIAL", "GAMMA", "STRIP_ACCENTS", "JACCARD", "HAMMING", "DAMERAU_LEVENSHTEIN", "JARO_WINKLER_SIMILARITY", "PRINTF", "FORMAT", "TIME_BUCKET", "DAYNAME", "MONTHNAME", "ISODOW", "ISOYEAR", "YEARWEEK", "EPOCH", "EPOCH_MS", "BIT_LENGTH", "ENDS_WITH", "SUFFIX", "PREFIX", "REGEXP_FULL_MATCH", "REGEXP_SPLIT_TO_ARRAY", "STRING_SPLIT", "ARRAY_TO_STRING", "MAKE_TIMESTAMP", "DATE_SUB", "DATE_ADD", "DATEDIFF", "DATESUB", "DATEADD", "ENTROPY", "KURTOSIS", "SKEWNESS", "REGR_SLOPE", "REGR_INTERCEPT", "REGR_R2", "REGR_COUNT", "FAVG", "FSUM", "BIT_AND", "BIT_OR", "BIT_XOR"]

DUCKDB = EngineSpec(
    name="duckdb",
    dialect="duckdb",
    default_schema="main",
    functions=frozenset(_FUNCTIONS),
    anonymous_functions=frozenset(_ANONYMOUS),
    templates=Templates(
        mask="CASE WHEN length(__v) > 4 THEN repeat('*', length(__v) - 4) || right(__v, 4) ELSE repeat('*', length(__v)) END",
        tokenize=f"{TOKEN_FUNCTION}(__v)",
        generalize_date="date_trunc('__p', __v)",
        generalize_number="floor(__v / __p) * __p",
        generalize_text="left(__v, __p)",
    ),
    date_types=("DATE", "TIMESTAMP"),
    number_types=("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
                  "UINTEGER", "UBIGINT", "UHUGEINT", "DECIMAL", "FLOAT", "DOUBLE", "REAL"),
    text_types=("VARCHAR", "TEXT", "STRING", "CHAR", "BPCHAR"),
    max_value_bytes=1 << 20,
    per_user=True,
)

_CLOSED_CONFIG: dict[str, str | bool | int | float | list[str]] = {"autoload_known_extensions": False, "autoinstall_known_extensions": False}


class DuckDBEngine:
    """One in-memory DuckDB with every source attached read-only, then locked."""

    spec = DUCKDB

    def __init__(self, sources: dict[str, Path], token_key: Secret | None = None, limits: Limits | None = None) -> None:
        self._lock = threading.Lock()
        self._paths = {name: str(path) for name, path in sources.items()}
        self._conn = duckdb.connect(":memory:", config=_CLOSED_CONFIG)
        self._spill: str | None = None
        try:
            self._conn.execute("SET enable_progress_bar = false")  # never draw on a notebook's stdout
            for name, path in sources.items():
                self._attach(name, path)
            if token_key is not None:
                token_function(self._conn, token_key)
            if limits is not None:
                self._spill = _bound(self._conn, limits)
            self._conn.execute("SET enable_external_access = false")
            self._conn.execute("SET lock_configuration = true")
        except BaseException:
            self.close()
            raise

    def _attach(self, name: str, path: Path) -> None:
        self._attach_to(self._conn, name, path, self._paths)

    @staticmethod
    def _attach_to(conn: duckdb.DuckDBPyConnection, name: str, path: Path, paths: dict[str, str]) -> None:
        if not path.is_file():
            raise EngineError(f"source `{name}`: database file {path.name} does not exist; check sources.{name}.path")
        try:
            conn.execute(attach_sql(path, name, read_only=True))
        except duckdb.Error as exc:
            raise EngineError(f"source `{name}` cannot be opened: {scrub(str(exc), paths)}") from None

    def catalog(self) -> Catalog:
        return read_catalog(self._conn)

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
            shutil.rmtree(self._spill, ignore_errors=True)

    @contextlib.contextmanager
    def _errors(self, cancel: Cancel | None = None, timeout: float | None = None) -> Iterator[None]:
        try:
            yield
        except (duckdb.Error, pa.ArrowException) as exc:
            if cancel is not None and cancel.reason is not None and "INTERRUPT" in str(exc).upper():
                raise stopped(cancel, timeout) from None
            if isinstance(exc, duckdb.OutOfMemoryException):
                raise LimitExceeded(f"the query needs more memory than the role's memory_limit allows: {self._scrub(str(exc))}") from None
            raise EngineError(self._scrub(str(exc))) from None

    def _scrub(self, message: str) -> str:
        return scrub(message, self._paths)


def _bound(conn: duckdb.DuckDBPyConnection, limits: Limits) -> str | None:
    """Memory, threads and spill space for every query of this engine; returns the private spill folder."""
    spill = tempfile.mkdtemp(prefix="saferoom-spill-") if limits.temp_limit else None
    for name, value in [("memory_limit", limits.memory_limit), ("threads", limits.threads),
                        ("max_temp_directory_size", limits.temp_limit), ("temp_directory", spill)]:
        if value is not None:
            conn.execute(_set(name, value))
    return spill


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
    message = message.split("\n\nLINE ")[0].split("\nLINE ")[0].strip()
    for name, path in paths.items():
        message = message.replace(path, f"<source {name}>")
    message = re.sub(r"(/[\w.\-]+)+", "<path>", message)
    message = re.sub(r"'[^']*'", "'…'", message)  # values quoted back could be another row's data
    return re.sub(r"__saferoom_(hmac_)?token", "tokenize", message, flags=re.IGNORECASE)


def attach_sql(path: Path, name: str, *, read_only: bool) -> str:
    options = [exp.AttachOption(this=exp.var("READ_ONLY"))] if read_only else []
    statement = exp.Attach(
        this=exp.alias_(exp.Literal.string(str(path)), exp.to_identifier(name, quoted=True)), expressions=options
    )
    return statement.sql("duckdb")


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


def build_connection(sources: dict[str, Path], token_key: Secret | None) -> duckdb.DuckDBPyConnection:
    """A connection for `saferoom build`: sources read-only, the token and fingerprint macros.

    Only SQL that saferoom generates runs here, and it must write the target,
    so external access stays on; extensions stay off.
    """
    conn = duckdb.connect(":memory:", config={**_CLOSED_CONFIG, "preserve_insertion_order": False})
    try:
        conn.execute("SET enable_progress_bar = false")
        for name, path in sources.items():
            DuckDBEngine._attach_to(conn, name, path, {})
        if token_key is not None:
            keyed_functions(conn, token_key)
    except BaseException:
        conn.close()
        raise
    return conn


def keyed_functions(conn: duckdb.DuckDBPyConnection, token_key: Secret) -> None:
    """The token and fingerprint functions of a build."""
    token_function(conn, token_key)
    fingerprint_function(conn, fingerprint_key(token_key))


def token_function(conn: duckdb.DuckDBPyConnection, key: Secret) -> None:
    """``__saferoom_token(v)``: the compiled kernel where installed, else the SQL macro (same tokens)."""
    if not keyed.available():
        conn.execute(token_macro(key))
        return
    keyed.register(conn, "__saferoom_hmac_token", key, keyed.TOKEN_BYTES)
    conn.execute(f"CREATE MACRO memory.main.{TOKEN_FUNCTION}(v) AS __saferoom_hmac_token(CAST(v AS VARCHAR))")


def fingerprint_function(conn: duckdb.DuckDBPyConnection, key: Secret) -> None:
    """``__saferoom_fingerprint(v)``, and ``…_text(t)`` for text already trimmed and lower-cased."""
    if keyed.available():
        keyed.register(conn, FINGERPRINT_TEXT_FUNCTION, key, keyed.FINGERPRINT_BYTES)
    else:
        conn.execute(fingerprint_macro(key))
    conn.execute(f"CREATE MACRO memory.main.{FINGERPRINT_FUNCTION}(v) AS {FINGERPRINT_TEXT_FUNCTION}({_FINGERPRINT_TEXT})")


_FINGERPRINT_TEXT = "lower(trim(CAST(v AS VARCHAR)))"


def fingerprint_macro(key: Secret) -> str:
    """64-bit keyed hash of text as SQL (the fallback for the compiled kernel)."""
    hmac_sql = token_macro(key, name="__saferoom_fp_hmac", as_token=False)
    return (
        hmac_sql + f"; CREATE MACRO memory.main.{FINGERPRINT_TEXT_FUNCTION}(v) AS "
        "CAST('0x' || left(memory.main.__saferoom_fp_hmac(v), 16) AS UBIGINT)"
    )


def token_macro(key: Secret, name: str = TOKEN_FUNCTION, *, as_token: bool = True) -> str:
    """HMAC-SHA256 as a DuckDB macro; the key lives only inside the engine.

    HMAC(K, m) = H((K ^ opad) || H((K ^ ipad) || m)) with keys longer than the
    block hashed first, exactly as RFC 2104 and Python's ``hmac`` compute it.
    A token is its first 128 bits as a UUID: fixed width, so it stores, joins
    and groups like a number, and prints as text (truncation as in RFC 4868).
    """
    inner, outer = (pad.hex() for pad in hmac_pads(key))
    body = sqlglot.parse_one(
        "sha256(unhex(__o) || unhex(sha256(unhex(__i) || encode(CAST(v AS VARCHAR)))))", read="duckdb"
    ).transform(lambda n: _key_literal(n, inner, outer))
    if as_token:
        body = exp.cast(exp.func("left", body, exp.Literal.number(32)), "UUID")
    return f"CREATE MACRO memory.main.{name}(v) AS {body.sql('duckdb')}"


def _key_literal(node: exp.Expr, inner: str, outer: str) -> exp.Expr:
    if isinstance(node, exp.Column) and node.name in ("__i", "__o"):
        return exp.Literal.string(inner if node.name == "__i" else outer)
    return node
