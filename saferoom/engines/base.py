"""What the guard needs to know about an engine, declared as data.

Each engine module exports an :class:`EngineSpec`; the guard never branches on
an engine's name. Allowlists hold sqlglot expression class names (what a query
parses to) plus the names of functions sqlglot passes through as ``Anonymous``.
"""

from __future__ import annotations

import contextlib
import functools
import re
import socket
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa
import sqlglot
from sqlglot.errors import ParseError

from saferoom.errors import LimitExceeded, QueryCancelled, SaferoomError

# Query structure every engine accepts: selects, joins, set operations, CTEs,
# windows, operators, literals. Functions are per engine; statements other
# than queries are never here, so they are refused everywhere.
STRUCTURE = frozenset(
    ["Select", "Union", "Intersect", "Except", "Values", "Subquery", "With", "CTE", "From", "Join", "Lateral", "Where", "Group", "Having", "Qualify", "Order", "Ordered", "Limit", "Offset", "Distinct", "Window", "WindowSpec", "GroupingSets", "Cube", "Rollup", "Table", "TableAlias", "Alias", "Column", "Identifier", "Star", "Literal", "Null", "Boolean", "Var", "Paren", "Tuple", "Interval", "DataType", "DataTypeParam", "Filter", "WithinGroup", "IgnoreNulls", "RespectNulls", "Add", "Sub", "Mul", "Div", "IntDiv", "Mod", "Neg", "Not", "And", "Or", "EQ", "NEQ", "GT", "GTE", "LT", "LTE", "NullSafeEQ", "NullSafeNEQ", "Is", "In", "Between", "Like", "ILike", "SimilarTo", "Escape", "Exists", "Any", "All", "Case", "If", "Cast", "TryCast", "DPipe", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot", "BitwiseLeftShift", "BitwiseRightShift", "Bracket", "Array", "Struct", "PropertyEQ", "Lambda", "Slice"]
)


@dataclass(frozen=True)
class Templates:
    """Masking expressions as SQL over a marker column ``__v`` (the column's value)."""

    mask: str
    tokenize: str
    generalize_date: str
    generalize_number: str
    generalize_text: str
    # exact integer/decimal buckets over ``__w`` (the value in a type wide enough not to overflow); empty: none
    generalize_exact: str = ""


@dataclass(frozen=True)
class EngineSpec:
    name: str
    dialect: str
    default_schema: str
    functions: frozenset[str]
    anonymous_functions: frozenset[str]
    templates: Templates
    text_type: str = "VARCHAR"
    date_types: tuple[str, ...] = ("DATE", "TIMESTAMP")
    number_types: tuple[str, ...] = ()
    text_types: tuple[str, ...] = ()
    catalog_in_names: bool = True  # DuckDB names attached databases; PostgreSQL only its own
    max_value_bytes: int | None = None  # the largest value a query may make (engines that run in-process)
    per_user: bool = False  # cheap to open per user, so each user's limits (memory, threads) bound only them
    physical: str | None = None  # a template for the engine's own name of a table, e.g. "__saferoom_{source}_{name}"
    constructs: frozenset[str] = frozenset()  # query structure only some engines have (PIVOT, sampling, generators)
    pseudo_columns: frozenset[str] = frozenset()  # names a table answers to beyond its columns (DuckDB's rowid)

    @functools.cached_property
    def allowed_nodes(self) -> frozenset[str]:
        """Query structure, the function classes, and the classes the allowlisted names parse into
        (worked out on first use: it parses each name, which a command that runs no query should not pay for)."""
        return STRUCTURE | self.constructs | self.functions | typed_functions(self.dialect, self.anonymous_functions)

    def type_class(self, type_name: str) -> str:
        upper = type_name.upper()
        if "[" in upper or upper.startswith(("STRUCT", "MAP", "UNION")):
            return "other"  # a list of text is not text: VARCHAR[] must not be cut as a string
        if upper.startswith(self.date_types):
            return "date"
        if upper.startswith(self.number_types):
            return "number"
        if upper.startswith(self.text_types):
            return "text"
        return "other"


def typed_functions(dialect: str, names: frozenset[str]) -> frozenset[str]:
    """The expression classes sqlglot parses allowlisted function names into.

    An allowlist names functions as users write them; sqlglot turns many of them into typed expressions
    (``dayname(d)`` is ``Dayname``, ``time_bucket`` is ``DateBin``), which would otherwise never match the
    list. Each name is parsed with one to eight arguments (``make_timestamp`` of one is ``UnixToTime``, of
    six ``TimestampFromParts``); each class it yields is the same function, generated back in the dialect.

    >>> sorted(typed_functions("duckdb", frozenset({"DAYNAME", "TIME_BUCKET"})))
    ['DateBin', 'Dayname']
    """
    return frozenset(kind for name in names for kind in _typed(dialect, name))


def _typed(dialect: str, name: str) -> set[str]:
    kinds = set()
    for arity in range(1, 9):
        try:
            call = sqlglot.parse_one(f"SELECT {name}({', '.join(['x'] * arity)})", read=dialect).expressions[0]
        except ParseError:
            continue
        kinds.add(type(call).__name__)
    return kinds - {"Anonymous"}


ColumnTypes = dict[str, str]
Catalog = dict[tuple[str, str, str], ColumnTypes]


@dataclass(frozen=True)
class KeyRows:
    """What a fixed table's rows are, by one column's values (an entity key)."""

    most: int  # the most rows that share one non-NULL value
    values: int  # distinct non-NULL values
    rows: int  # rows with a non-NULL value


class Engine(Protocol):
    """A connection that runs the guard's SQL and streams Arrow back."""

    spec: EngineSpec

    def catalog(self) -> Catalog: ...

    def fixed_tables(self) -> frozenset[tuple[str, str, str]]:
        """The catalog's tables (by catalog key) whose columns cannot change while the engine is open, so the
        guard may read them bare (see Guard.itself); none where the engine cannot prove it."""
        ...

    def key_rows(self, table: tuple[str, str, str], column: str) -> KeyRows | None:
        """How the rows of ``table`` (a fixed table, by catalog key) share the values of ``column``, worked out
        once and kept; None where the engine cannot prove the table fixed. The aggregate rules use it to
        certify groups by their row counts (saferoom.guard.aggregate_certified)."""
        ...

    def stream(self, sql: str, batch_size: int = 65536, timeout: float | None = None,
               cancel: Cancel | None = None) -> pa.RecordBatchReader: ...

    def column_types(self, sql: str) -> list[tuple[str, str]]: ...

    def close(self) -> None: ...


class IpcMessages:
    """The Arrow IPC message the last batch of a stream was read from.

    An engine whose batches arrive as IPC messages (a worker process's) registers its reader in ``FORWARDED``;
    a server sending such a batch on unchanged forwards the bytes it received instead of serializing the batch
    again (a copy of every byte of the result, in the gateway)."""

    def __init__(self) -> None:
        self._last: tuple[pa.Buffer, int] | None = None

    def read(self, message: bytes, schema: pa.Schema) -> pa.RecordBatch:
        buffer = pa.py_buffer(message)
        batch = pa.ipc.read_record_batch(buffer, schema)
        self._last = (buffer, batch.num_rows)
        return batch

    def of(self, batch: pa.RecordBatch) -> pa.Buffer | None:
        """The message ``batch`` was read from; None for any other batch, or one cut short (fewer rows)."""
        if self._last is None or self._last[1] != batch.num_rows:
            return None
        message = self._last[0]
        start, end = message.address, message.address + message.size
        inside = all(b is None or (start <= b.address and b.address + b.size <= end)
                     for column in batch.columns for b in column.buffers())
        return message if inside else None


FORWARDED: weakref.WeakKeyDictionary[pa.RecordBatchReader, IpcMessages] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Sent:
    """What an engine's process wrote of a result straight to its reader's socket (see ``SENDERS``): the rows
    and bytes, whether the rows were cut at ``max_rows``, the error that ended the stream early, and whether the
    stream is whole (its end-of-stream marker written, so the status line may follow)."""

    rows: int
    bytes: int
    truncated: bool
    error: SaferoomError | None
    whole: bool


# (the reader's socket, the line sent before the stream, max_rows, the reader's stall limit, whether into the
# reader's memory files: saferoom/chunks.py) -> what was sent
Sender = Callable[[socket.socket, bytes, "int | None", float, bool], Sent]
# An engine whose results a process of its own makes (a worker) registers a reader it has not started reading here:
# the worker can write the result straight to the client's socket, each byte copied once, by the kernel.
SENDERS: weakref.WeakKeyDictionary[pa.RecordBatchReader, Sender] = weakref.WeakKeyDictionary()


class Cancel:
    """How to stop one running query, callable from any thread.

    The engine running the query says how it stops (``on_cancel``); whoever gives up on
    it (a timer, a client that hung up, a gateway shutting down) calls it with a reason.
    The first reason wins; stopping an engine twice, or after it finished, is harmless.
    """

    TIMEOUT = "timeout"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stops: list[Callable[[], object]] = []
        self.reason: str | None = None

    def on_cancel(self, stop: Callable[[], object]) -> None:
        with self._lock:
            if self.reason is None:
                self._stops.append(stop)
                return
        stop()

    def __call__(self, reason: str) -> None:
        with self._lock:
            if self.reason is not None:
                return
            self.reason, stops, self._stops = reason, self._stops, []
        for stop in stops:
            stop()

    def after(self, seconds: float | None) -> threading.Timer | None:
        """Cancel for a timeout after ``seconds``; the caller cancels the timer when the query ends."""
        if not seconds:
            return None
        timer = threading.Timer(seconds, self, args=(self.TIMEOUT,))
        timer.daemon = True
        timer.start()
        return timer

    @property
    def timed_out(self) -> bool:
        return self.reason == self.TIMEOUT


def until_done(stop: Callable[[], object], done: threading.Event, every: float = 0.05,
               alive: Callable[[], bool] | None = None) -> Callable[[], None]:
    """A stop that repeats until ``done`` is set (or what it stops is no longer ``alive``): engines drop a stop
    that arrives just before a query starts (DuckDB's interrupt, PostgreSQL's cancel request), so one alone
    could miss the query it was meant for."""

    def repeat() -> None:
        while alive is None or alive():
            with contextlib.suppress(Exception):  # stopping a statement that already ended is not an error
                stop()
            if done.wait(every):
                return

    def start() -> None:
        threading.Thread(target=repeat, name="saferoom-cancel", daemon=True).start()

    return start


def stopped(cancel: Cancel, timeout: float | None) -> SaferoomError:
    """The error for a query that was stopped on purpose: its time ran out, or someone gave up on it."""
    if cancel.timed_out:
        return LimitExceeded(f"the query was stopped after {timeout:g} s, the role's timeout_seconds")
    return QueryCancelled(f"the query was stopped: {cancel.reason}")


_QUOTED = re.compile(r"""(\w+)?(\s*)(?:"([^"]*)"|'([^']*)'|`([^`]*)`)""")
_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:[.,]\d+)*(?:[eE][-+]?\d+)?(?![\w(])")
_THOUSANDS = re.compile(r"\d{1,3}(,\d{3})+")
_TYPE_ARGS = re.compile(r"(\b[A-Za-z_]\w*\(\d+(?:,\s*\d+)?\))")  # DECIMAL(3,1), VARCHAR(10): a type, not a value
_NAMED = frozenset({"column", "columns", "relation", "table", "tables", "function", "functions", "schema", "type",
                    "operator", "role", "database", "reference", "alias", "catalog", "field", "macro", "view"})


def without_values(message: str) -> str:
    """An engine's message with every value it could have quoted back taken out: only its first line (later
    lines repeat the input with a caret under it), quoted text but the names after words like ``column`` or
    ``table`` (the user wrote those), and every number but a type's size. A value in an error could be a row
    the role's filter removes, or one masked in the result; nothing of it stays, however it was quoted.

    >>> without_values('Conversion Error: invalid date field format: "EU", expected format is (YYYY-MM-DD)')
    'Conversion Error: invalid date field format: "…", expected format is (YYYY-MM-DD)'
    >>> without_values('Type INT64 with value 3000000000 can not be cast to DECIMAL(3,1); column "amount"')
    'Type INT64 with value … can not be cast to DECIMAL(3,1); column "amount"'
    """
    lines = message.strip().splitlines()
    first = lines[0] if lines else ""
    if first.startswith("IO Error:"):
        return first  # the engine's own files (spill, a build's output): no row's value, and errno says why
    parts = _TYPE_ARGS.split(_QUOTED.sub(_keep_names, first))  # types' sizes at odd positions, kept
    return "".join(part if i % 2 else _NUMBER.sub(_not_a_limit, part) for i, part in enumerate(parts))


def _not_a_limit(match: re.Match[str]) -> str:
    """A number goes, but one grouped in thousands: engines never print a value so, saferoom's own limits do
    (``would make a value over 1,048,576 bytes``, raised inside the engine by saferoom's size checks)."""
    return match.group(0) if _THOUSANDS.fullmatch(match.group(0)) else "…"


def _keep_names(match: re.Match[str]) -> str:
    word, space = match.group(1) or "", match.group(2)
    if word.lower() in _NAMED and match.group(4) is None:  # a name after its kind, in the quotes names take
        return match.group(0)
    quote = "'" if match.group(4) is not None else "`" if match.group(5) is not None else '"'
    return f"{word}{space}{quote}…{quote}"


_INTERNAL = re.compile(r"__saferoom_\w*", re.IGNORECASE)
_SENTENCES = re.compile(r"(?<=[.!?])\s+|\n+")


def policy_names_only(message: str) -> str:
    """An engine's message without saferoom's own names (view aliases, a placeholder column, physical views).

    They mean nothing to the user and would disclose how the guard rewrites queries, so each sentence that
    names one is left out: typically an engine's "did you mean …" list, which then had nothing the user may
    name. What is left still says what went wrong (a column or table that does not exist in their view).
    """
    if not _INTERNAL.search(message):
        return message
    kept = [part for part in _SENTENCES.split(message) if part.strip() and not _INTERNAL.search(part)]
    return " ".join(kept) or "the query names something that is not in your view of the policy's tables"
