"""Spark as a source: the policy's views run on Spark's executors; results come back as Arrow.

Tables declared by path are registered as temporary views under reserved
names (``__saferoom_<source>_<table>``) that no user query can name. The token
function is session-scoped: saferoom's compiled kernel in the Python workers
where they have it, else a SQL function computing the same HMAC-SHA256 with
Spark's ``sha2``, as DuckDB and PostgreSQL do. No user SQL reaches Spark: only
the guard's generated SELECT.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import re
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from saferoom.engines.base import Cancel, Catalog, EngineSpec, Templates, stopped, until_done
from saferoom.errors import EngineError, LimitExceeded
from saferoom.secrets import Secret, hmac_block, hmac_pads

TOKEN_FUNCTION = "saferoom_token"
PHYSICAL = "__saferoom_{source}_{name}"

_FUNCTIONS = """
    Count CountIf Sum Avg Min Max Stddev StddevPop StddevSamp Variance VariancePop Corr CovarPop CovarSamp
    ApproxDistinct PercentileCont PercentileDisc AnyValue ArgMax ArgMin First Last ArrayAgg LogicalAnd LogicalOr
    RowNumber Rank DenseRank PercentRank CumeDist Ntile Lag Lead FirstValue LastValue NthValue
    Abs Ceil Floor Round Sqrt Exp Ln Log Pow Sign Greatest Least Coalesce Nullif
    Lower Upper Length Trim Substring Left Right Replace Concat ConcatWs Pad Reverse StrPosition
    SplitPart StartsWith RegexpLike RegexpReplace RegexpExtract Repeat Initcap MD5 SHA SHA2
    DateTrunc TimestampTrunc Extract DateDiff DateAdd DateSub Year Month Day Hour Minute Second
    DayOfWeek DayOfYear DayOfMonth Week Quarter TimeToStr StrToTime StrToDate CurrentDate CurrentTimestamp LastDay
""".split()

SPARK = EngineSpec(
    name="spark",
    dialect="spark",
    default_schema="default",
    functions=frozenset(_FUNCTIONS),
    anonymous_functions=frozenset("DATE_FORMAT MONTHS_BETWEEN NVL NVL2 IFNULL".split()),
    templates=Templates(
        mask="CASE WHEN length(__v) > 4 THEN concat(repeat('*', length(__v) - 4), right(__v, 4)) ELSE repeat('*', length(__v)) END",
        tokenize=f"{TOKEN_FUNCTION}(__v)",
        generalize_date="date_trunc('__p', __v)",
        generalize_number="floor(CAST(__v AS DECIMAL(38, 10)) / __p) * __p",
        generalize_text="left(__v, __p)",
    ),
    text_type="STRING",
    date_types=("DATE", "TIMESTAMP"),
    number_types=("TINYINT", "SMALLINT", "INT", "BIGINT", "DECIMAL", "DOUBLE", "FLOAT"),
    text_types=("STRING", "VARCHAR", "CHAR"),
    catalog_in_names=False,
    physical=PHYSICAL,
)


def token_function(key: Secret) -> str:
    """A temporary SQL function: the first 128 bits of HMAC-SHA256 of the text, in UUID form."""
    inner, outer = (pad.hex() for pad in hmac_pads(key))
    digest = (f"sha2(concat(unhex('{outer}'), unhex(sha2(concat(unhex('{inner}'), encode(CAST(v AS STRING), 'UTF-8')), 256))), 256)")
    # one digest, dashed by a regular expression: Spark does not share a subexpression repeated in
    # substr() calls, and each HMAC costs it microseconds
    uuid = f"regexp_replace(left({digest}, 32), '^(.{{8}})(.{{4}})(.{{4}})(.{{4}})', '$1-$2-$3-$4-')"
    return f"CREATE OR REPLACE TEMPORARY FUNCTION {TOKEN_FUNCTION}(v STRING) RETURNS STRING RETURN {uuid}"


NATIVE_FUNCTION = "__saferoom_spark_hmac"
_TOKEN_KEYS: dict[int, str] = {}  # Spark session → the id of the key its token function holds


def _claim_token_key(session: Any, source: str, key: Secret) -> None:
    """One token key per Spark session: the token function is session-wide, so a second key would silently
    change every token of the first. Refused instead (a gateway keeps serving its previous policy)."""
    key_id = hashlib.sha256(b"saferoom spark key id\0" + key.reveal().encode()).hexdigest()[:16]
    if _TOKEN_KEYS.setdefault(id(session), key_id) != key_id:
        raise EngineError(f"source `{source}`: this process already serves Spark with another token key; "
                          "restart it to change `secrets.token_key`")


def _native_tokens(session: Any, key: Secret) -> bool:
    """Tokens by saferoom's compiled kernel in Spark's Python workers, if they have it (5x Spark's ``sha2``).

    An Arrow UDF hashes whole batches; the key travels in the UDF's closure, never in a query plan. A probe
    token is checked against Python's ``hmac``: executors without saferoom (or a different interpreter) fail
    the probe, and the SQL function serves instead. Same tokens either way.
    """
    from saferoom import keyed

    if not keyed.available():
        return False
    from pyspark.sql.pandas.functions import arrow_udf  # its typed home (pyspark.sql.functions re-exports it)

    block = hmac_block(key)
    # pyspark's stubs require functionType; at run time it defaults to scalar (passing it only adds a warning)
    udf = arrow_udf(lambda values: keyed.token_text(block, values), "string")  # type: ignore[call-overload]
    session.udf.register(NATIVE_FUNCTION, udf)
    session.sql(f"CREATE OR REPLACE TEMPORARY FUNCTION {TOKEN_FUNCTION}(v STRING) RETURNS STRING RETURN {NATIVE_FUNCTION}(v)")
    probe = "saferoom probe"
    expected = str(uuid.UUID(bytes=hmac.new(key.reveal().encode(), probe.encode(), hashlib.sha256).digest()[:16]))
    try:
        token: str = session.sql(f"SELECT {TOKEN_FUNCTION}('{probe}')").collect()[0][0]
    except _spark_errors():
        return False
    return token == expected


class SparkEngine:
    """One SparkSession (local, cluster, or Spark Connect) serving one Spark source."""

    spec = SPARK

    def __init__(self, name: str, source: Any, base: Path, token_key: Secret | None = None) -> None:
        self.name = name
        self._lock = threading.Lock()
        with self._errors():
            self.session = _session(source)
            for table, spec in source.tables.items():
                self._frame(table, spec, base).createOrReplaceTempView(PHYSICAL.format(source=name, name=table).lower())
            if token_key is not None:
                _claim_token_key(self.session, name, token_key)
            self.native_tokens = token_key is not None and _native_tokens(self.session, token_key)
            if token_key is not None and not self.native_tokens:
                self.session.sql(token_function(token_key))

    def _frame(self, table: str, spec: Any, base: Path) -> Any:
        """A declared table: files at a path, or a table of the session's catalog."""
        if spec.table is not None:
            if not self.session.catalog.tableExists(spec.table):
                raise EngineError(f"source `{self.name}`: table {table}: the Spark catalog has no table {spec.table}")
            return self.session.table(spec.table)
        path = Path(spec.path).expanduser()
        path = path if path.is_absolute() else base / path
        if not path.exists():
            raise EngineError(f"source `{self.name}`: table {table} has no files at {spec.path}")
        return self.session.read.format(spec.format).load(str(path))

    def catalog(self) -> Catalog:
        catalog: Catalog = {}
        for view in self.session.catalog.listTables():
            prefix = f"__saferoom_{self.name}_".lower()
            if view.name.lower().startswith(prefix):
                table = view.name.lower()[len(prefix):]
                columns = self.session.table(view.name).dtypes
                catalog[(self.name.lower(), "default", table)] = {c.lower(): t.upper() for c, t in columns}
        return catalog

    def stream(self, sql: str, batch_size: int = 65536, timeout: float | None = None,
               cancel: Cancel | None = None) -> pa.RecordBatchReader:
        """Runs the query as its own job group, so a timeout or ``cancel`` stops its jobs on the cluster."""
        cancel = cancel or Cancel()
        group = f"saferoom-{uuid.uuid4().hex}"
        context = self.session.sparkContext
        with self._errors(timeout, cancel):
            with self._lock:
                context.setJobGroup(group, "saferoom query", interruptOnCancel=True)
                done = threading.Event()
                cancel.on_cancel(until_done(lambda: context.cancelJobGroup(group), done))
                timer = cancel.after(timeout)
                try:
                    table = self.session.sql(sql).toArrow()
                finally:
                    done.set()
                    if timer:
                        timer.cancel()
        return pa.RecordBatchReader.from_batches(table.schema, table.to_batches(batch_size))

    def column_types(self, sql: str) -> list[tuple[str, str]]:
        with self._errors():
            return [(f.name, f.dataType.simpleString()) for f in self.session.sql(sql).schema.fields]

    def close(self) -> None:
        pass  # the session is shared for the life of the process; Spark takes long to start

    @contextlib.contextmanager
    def _errors(self, timeout: float | None = None, cancel: Cancel | None = None) -> Iterator[None]:
        try:
            yield
        except (EngineError, LimitExceeded):
            raise
        except _spark_errors() as exc:  # pyspark's and the JVM's errors are translated here, once
            message = str(exc)
            if "cancel" in message.lower() and cancel is not None and cancel.reason is not None:
                raise stopped(cancel, timeout) from None
            raise EngineError(_scrub(message)) from None


def _spark_errors() -> tuple[type[BaseException], ...]:
    from py4j.protocol import Py4JError
    from pyspark.errors import PySparkException

    return (PySparkException, Py4JError, ValueError)


_SESSIONS: dict[str, Any] = {}


def _session(source: Any) -> Any:
    from pyspark.sql import SparkSession

    if source.connect:
        return _remote(source.connect)
    if source.master not in _SESSIONS:
        if source.master.startswith("local"):
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # local Python workers run saferoom's interpreter
        builder = SparkSession.builder.appName("saferoom").master(source.master).config("spark.ui.enabled", "false").config(
            "spark.sql.session.timeZone", "UTC").config("spark.sql.ansi.enabled", "true").config(
            "spark.ui.showConsoleProgress", "false")
        _SESSIONS[source.master] = builder.getOrCreate()
        _SESSIONS[source.master].sparkContext.setLogLevel("OFF")  # Spark logs query plans, and plans hold the token function
    logging.getLogger("SQLQueryContextLogger").disabled = True  # pyspark logs failed queries' plans too
    return _SESSIONS[source.master]


def _remote(url: str) -> Any:
    """A Spark Connect session; a missing client library or an unreachable endpoint is a clear error."""
    if url not in _SESSIONS:
        try:
            from pyspark.sql import SparkSession

            session = SparkSession.builder.remote(url).getOrCreate()
            session.sql("SELECT 1").collect()
        except ImportError as exc:
            raise EngineError(f"Spark Connect needs the client libraries (pip install 'pyspark[connect]'): {exc.name}") from None
        except _spark_errors() as exc:
            raise EngineError(f"cannot reach the Spark Connect endpoint {url}: {_scrub(str(exc))}") from None
        _SESSIONS[url] = session
    return _SESSIONS[url]


def _scrub(message: str) -> str:
    first = message.strip().splitlines()[0] if message.strip() else "Spark failed"
    first = re.sub(r"'[^']*'", "'…'", first)
    first = re.sub(r"(/[\w.\-]+)+", "<path>", first)
    first = re.sub(r"unhex\([^)]*\)", "unhex(…)", first, flags=re.IGNORECASE)
    return re.sub(r"\[SQLSTATE: \w+\]|\bSQLSTATE: \w+", "", first).strip()[:400]
