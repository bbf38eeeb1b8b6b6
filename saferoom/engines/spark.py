"""Spark as a source: the policy's views run on Spark's executors; results come back as Arrow.

Tables declared by path are registered as temporary views under reserved
names (``__saferoom_<source>_<table>``) that no user query can name. The token
function is session-scoped: saferoom's compiled kernel in the Python workers
where they have it, else a SQL function computing the same HMAC-SHA256 with
Spark's ``sha2``, as DuckDB and PostgreSQL do. No user SQL reaches Spark: only
the guard's generated SELECT.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import hmac
import logging
import os
import re
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

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
from saferoom.errors import EngineError, LimitExceeded, UsageError
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

    def fixed_tables(self) -> frozenset[tuple[str, str, str]]:
        return frozenset()  # tables are views over files read afresh: views kept

    def key_rows(self, table: tuple[str, str, str], column: str) -> KeyRows | None:
        return None  # tables are files read afresh: nothing to prove once

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
LOG_CONFIG = Path(__file__).with_name("spark-log4j2.properties")  # every JVM logger off, from the JVM's start


def _session(source: Any) -> Any:
    _quiet_pyspark()
    if source.connect:
        return _remote(source.connect, source.connect_timeout)
    if source.master not in _SESSIONS:
        _SESSIONS[source.master] = _local(source.master)
    return _SESSIONS[source.master]


def _quiet_pyspark() -> None:
    """pyspark's own Python warnings (pandas versions, deprecations) are not the user's business; others' stay."""
    warnings.filterwarnings("ignore", module=r"pyspark(\.|$)")
    logging.getLogger("SQLQueryContextLogger").disabled = True  # pyspark logs failed queries' plans too


def _local(master: str) -> Any:
    from pyspark import SparkConf, SparkContext
    from pyspark.java_gateway import launch_gateway
    from pyspark.sql import SparkSession

    if master.startswith("local"):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # local Python workers run saferoom's interpreter
    conf = SparkConf().setAppName("saferoom").setMaster(master).setAll([
        ("spark.ui.enabled", "false"), ("spark.sql.session.timeZone", "UTC"), ("spark.sql.ansi.enabled", "true"),
        ("spark.ui.showConsoleProgress", "false"),
        # the JVM reads this before it logs a line, so its start-up warnings are off too
        ("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile={LOG_CONFIG.as_uri()}")])
    if SparkContext._gateway is None:
        SparkContext._ensure_initialized(gateway=_gateway(conf, launch_gateway), conf=conf)
    session = SparkSession.builder.config(conf=conf).getOrCreate()
    session.sparkContext.setLogLevel("OFF")  # Spark logs query plans, and plans hold the token function
    atexit.register(_stop, session)
    return session


def _gateway(conf: Any, launch: Any) -> Any:
    """The JVM, its console output kept aside: shown only if it fails to start (the JDK's own start-up notes,
    such as incubator modules, are printed before any logger is configured)."""
    with tempfile.TemporaryFile("w+") as output:
        try:
            return launch(conf, popen_kwargs={"stdout": output, "stderr": output})
        except _spark_errors() + (OSError,) as exc:  # the JVM exited early, or Java is not there
            output.seek(0)
            lines = [line for line in output.read().splitlines() if line.strip()][-3:]
            raise EngineError(f"Spark could not start its JVM: {exc}; {' / '.join(lines) or 'no output'}") from None


def _stop(session: Any) -> None:
    """Stopped before Python exits: otherwise the Python workers lose their JVM mid-write and print tracebacks."""
    with contextlib.suppress(Exception):
        session.stop()


def _remote(url: str, timeout: float) -> Any:
    """A Spark Connect session; unreachable within ``timeout`` seconds, or without the client library: a clear error."""
    if url not in _SESSIONS:
        deadline = time.monotonic() + timeout  # one bound for the whole start, as `connect_timeout` promises
        _reachable(url, timeout)
        session = _connect_client(url)
        _probe(session, url, timeout, max(deadline - time.monotonic(), 0.0))
        atexit.register(_stop, session)
        _SESSIONS[url] = session
    return _SESSIONS[url]


def _endpoint(url: str) -> tuple[str, int]:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme != "sc" or not parsed.hostname:
        raise UsageError(f"`connect: {url}` is not a Spark Connect address; write sc://host:15002")
    return parsed.hostname, parsed.port or 15002


def _unreachable(url: str, timeout: float, why: str) -> EngineError:
    host, port = _endpoint(url)
    return EngineError(f"cannot reach the Spark Connect endpoint {host}:{port} ({why}); check that the Spark Connect "
                       f"server runs there and that this machine may connect to it (waited at most {timeout:g} s: "
                       "the source's `connect_timeout`)")


def _reachable(url: str, timeout: float) -> None:
    """A TCP connection first: gRPC would retry an unreachable endpoint for minutes without a word."""
    host, port = _endpoint(url)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise _unreachable(url, timeout, exc.strerror or type(exc).__name__) from None


def _connect_client(url: str) -> Any:
    from pyspark.sql.connect.utils import check_dependencies

    try:
        check_dependencies()  # grpcio and the other client libraries, which `pyspark` alone does not bring
    except ImportError:
        raise UsageError("the policy's Spark source uses Spark Connect, and its client libraries are not installed: "
                         "pip install 'saferoom[spark-connect]'") from None
    from pyspark.sql.connect.client.retries import DefaultPolicy
    from pyspark.sql.connect.session import SparkSession

    # Spark Connect's own builder: pyspark's generic one refuses while a local session runs in the process,
    # and switches the whole process to Connect mode
    session = SparkSession.builder.remote(url).create()
    session.client.set_retry_policies([DefaultPolicy(max_retries=0)])  # the probe's deadline bounds the wait
    return session


def _probe(session: Any, url: str, timeout: float, left: float) -> None:
    """One query, in a thread the caller waits for at most ``left`` seconds (gRPC has no overall deadline)."""
    answered: list[bool] = []

    def run() -> None:
        with contextlib.suppress(Exception):  # any failure means the endpoint does not serve Spark Connect
            session.sql("SELECT 1").collect()
            answered.append(True)

    probe = threading.Thread(target=run, name="saferoom-spark-connect-probe", daemon=True)
    probe.start()
    probe.join(left)
    if not answered:
        with contextlib.suppress(Exception):  # closing the channel ends the probe's call at once; stop() would wait
            session.client._channel.close()
        why = "no answer in time" if probe.is_alive() else "it does not answer as a Spark Connect server"
        raise _unreachable(url, timeout, why)


def _scrub(message: str) -> str:
    first = re.sub(r"(/[\w.\-]+)+", "<path>", without_values(message) or "Spark failed")
    first = re.sub(r"unhex\([^)]*\)", "unhex(…)", first, flags=re.IGNORECASE)
    return policy_names_only(re.sub(r"\[SQLSTATE: \w+\]|\bSQLSTATE: \w+", "", first).strip())[:400]
