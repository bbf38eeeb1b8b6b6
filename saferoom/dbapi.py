"""A PEP 249 (DB-API 2.0) driver over a saferoom session, embedded or through a gateway.

    >>> from saferoom import dbapi
    >>> con = dbapi.connect("saferoom.yaml", user="alice")              # doctest: +SKIP
    >>> cur = con.cursor()                                                # doctest: +SKIP
    >>> cur.execute("select region, count(*) from orders where amount > :low group by region", {"low": 100})
    ...                                                                   # doctest: +SKIP

Parameters are bound as literals into the statement's tree (:mod:`saferoom.parameters`): ``named``
(``:low``) with a mapping, or ``?`` with a sequence. Rows stream from the result one Arrow batch at a time.
Everything is read-only: ``commit`` has nothing to do and ``rollback`` nothing to undo.

Errors are the PEP's classes; each one saferoom raised is also still its saferoom class, with its fields::

    Error
    ├── InterfaceError          a closed connection or cursor, a fetch before execute
    └── DatabaseError
        ├── EngineError         (also saferoom.EngineError) the database failed running a guarded query
        ├── OperationalError
        │   ├── AuthError, AccessDenied, LimitExceeded, QueryCancelled, AuditError   (also saferoom's)
        ├── ProgrammingError
        │   ├── QueryRejected   (also saferoom.QueryRejected: the explanation, column, tag, roles)
        │   └── UsageError      (also saferoom.UsageError: SQL that does not parse, a missing parameter)
        ├── InternalError
        │   └── PolicyError     (also saferoom.PolicyError)
        ├── DataError, IntegrityError
        └── NotSupportedError   executemany
"""

from __future__ import annotations

import datetime
import decimal
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, Self

import numpy as np
import pyarrow as pa

from saferoom import errors
from saferoom.parameters import Parameters, bind
from saferoom.policy import Policy
from saferoom.result import Result
from saferoom.session import SessionProtocol
from saferoom.session import connect as open_session

apilevel = "2.0"
threadsafety = 1  # threads may share the module, not connections: a session runs one query at a time
paramstyle = "named"  # what SQLAlchemy emits for it; `?` with a sequence is accepted too


class Warning(Exception):  # the PEP's name, shadowing the builtin inside this module only
    """Never raised: a notice (a row filter, a cut at max_rows) is on ``Cursor.notices`` instead."""


class Error(Exception):
    """Root of the errors this module raises."""


class InterfaceError(Error):
    """The driver was used wrongly: a closed connection or cursor, a fetch with no query."""


class DatabaseError(Error):
    """The session refused or failed to answer."""


class DataError(DatabaseError):
    """A value the database could not process."""


class OperationalError(DatabaseError):
    """Not the caller's statement: credentials, limits, a gateway that stopped or a query cancelled."""


class IntegrityError(DatabaseError):
    """Never raised by a read-only driver; here because the PEP names it."""


class InternalError(DatabaseError):
    """saferoom itself is misconfigured (the policy file)."""


class ProgrammingError(DatabaseError):
    """The statement: refused by the guard, not valid SQL, a missing parameter."""


class NotSupportedError(DatabaseError):
    """Something a read-only driver does not do."""


class QueryRejected(ProgrammingError, errors.QueryRejected):
    """The guard refused the query; the message explains the rule, as :class:`saferoom.QueryRejected`."""


class UsageError(ProgrammingError, errors.UsageError):
    """SQL that does not parse, a bad parameter or argument, as :class:`saferoom.UsageError`."""


class EngineError(DatabaseError, errors.EngineError):
    """The database failed running a guarded query, as :class:`saferoom.EngineError`."""


class AuthError(OperationalError, errors.AuthError):
    """No valid credential, as :class:`saferoom.AuthError`."""


class AccessDenied(OperationalError, errors.AccessDenied):
    """An unknown user or a role not held, as :class:`saferoom.AccessDenied`."""


class LimitExceeded(OperationalError, errors.LimitExceeded):
    """A role's limit was reached, as :class:`saferoom.LimitExceeded`."""


class QueryCancelled(OperationalError, errors.QueryCancelled):
    """The query stopped before it finished, as :class:`saferoom.QueryCancelled`."""


class AuditError(OperationalError, errors.AuditError):
    """The audit log cannot be written, so nothing runs, as :class:`saferoom.AuditError`."""


class PolicyError(InternalError, errors.PolicyError):
    """The policy file is wrong, as :class:`saferoom.PolicyError`."""


class SaferoomError(DatabaseError, errors.SaferoomError):
    """Any other error saferoom raised, as :class:`saferoom.SaferoomError`."""


# most specific first: the first saferoom class an error is an instance of picks its twin
_TWINS: tuple[tuple[type[errors.SaferoomError], type[Error]], ...] = (
    (errors.QueryRejected, QueryRejected), (errors.UsageError, UsageError), (errors.EngineError, EngineError),
    (errors.AuthError, AuthError), (errors.AccessDenied, AccessDenied), (errors.LimitExceeded, LimitExceeded),
    (errors.QueryCancelled, QueryCancelled), (errors.AuditError, AuditError), (errors.PolicyError, PolicyError),
    (errors.SaferoomError, SaferoomError),
)


def translate(error: errors.SaferoomError) -> Error:
    """The PEP 249 twin of a saferoom error: the same message and fields, catchable as either."""
    if isinstance(error, Error):
        return error
    twin_class = next(twin for cls, twin in _TWINS if isinstance(error, cls))
    twin = twin_class.__new__(twin_class)
    twin.args = error.args
    twin.__dict__.update(error.__dict__)
    return twin


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except Error:
        raise
    except errors.SaferoomError as exc:
        raise translate(exc) from exc


# Type objects: ``cursor.description[i][1] == dbapi.NUMBER`` for a column's Arrow type.
class _TypeObject:
    def __init__(self, name: str, test: Callable[[pa.DataType], bool]) -> None:
        self.name = name
        self._test = test

    def __eq__(self, other: object) -> bool:
        return isinstance(other, pa.DataType) and self._test(other)

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"<dbapi type {self.name}>"


def _is_number(t: pa.DataType) -> bool:
    return bool(pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t))


def _is_datetime(t: pa.DataType) -> bool:
    return bool(pa.types.is_temporal(t))


STRING = _TypeObject("STRING", lambda t: bool(pa.types.is_string(t) or pa.types.is_large_string(t)))
BINARY = _TypeObject("BINARY", lambda t: bool(pa.types.is_binary(t) or pa.types.is_large_binary(t)))
NUMBER = _TypeObject("NUMBER", _is_number)
DATETIME = _TypeObject("DATETIME", _is_datetime)
ROWID = _TypeObject("ROWID", lambda t: False)  # saferoom exposes no row identifiers

Date = datetime.date
Time = datetime.time
Timestamp = datetime.datetime


def DateFromTicks(ticks: float) -> datetime.date:
    return datetime.date(*time.localtime(ticks)[:3])


def TimeFromTicks(ticks: float) -> datetime.time:
    return datetime.time(*time.localtime(ticks)[3:6])


def TimestampFromTicks(ticks: float) -> datetime.datetime:
    return datetime.datetime(*time.localtime(ticks)[:6])


def Binary(value: bytes) -> bytes:
    """Binary data, as the PEP asks a driver to construct; binding it as a parameter is not supported."""
    return bytes(value)


def connect(
    policy: str | Path | Policy | None = None,
    user: str | None = None,
    role: str | None = None,
    *,
    url: str | None = None,
    token: str | None = None,
    backend: str | None = None,
    socket: str | Path | None = None,
) -> Connection:
    """A connection: embedded with a policy file and a user, or through a gateway with a URL (or Unix socket)
    and a token.

    Arguments and their defaults (``SAFEROOM_URL``, ``SAFEROOM_TOKEN``, what `saferoom login` saved,
    ``SAFEROOM_POLICY``, ``SAFEROOM_USER``) are those of :func:`saferoom.connect`."""
    with _translated():
        return Connection(open_session(policy, user, role, url=url, token=token, backend=backend, socket=socket))


class Connection:
    """One session, read-only: ``Connection(session)`` wraps one already open. Closing the connection closes
    its cursors' results and the session."""

    # the PEP's optional extension: errors reachable from the connection
    Error, Warning, InterfaceError, DatabaseError = Error, Warning, InterfaceError, DatabaseError
    DataError, OperationalError, IntegrityError = DataError, OperationalError, IntegrityError
    InternalError, ProgrammingError, NotSupportedError = InternalError, ProgrammingError, NotSupportedError

    def __init__(self, session: SessionProtocol) -> None:
        self._session: SessionProtocol | None = session
        self._cursors: list[Cursor] = []

    @property
    def session(self) -> SessionProtocol:
        if self._session is None:
            raise InterfaceError("the connection is closed; open another with saferoom.dbapi.connect()")
        return self._session

    def cursor(self) -> Cursor:
        self.session  # noqa: B018 (raises when closed)
        cursor = Cursor(self)
        self._cursors = [c for c in self._cursors if not c.closed] + [cursor]
        return cursor

    def commit(self) -> None:
        """Nothing to commit: every statement is a read."""
        self.session  # noqa: B018 (raises when closed, as the PEP asks)

    def rollback(self) -> None:
        """Nothing to undo: every statement is a read."""
        self.session  # noqa: B018

    def close(self) -> None:
        if self._session is None:
            raise InterfaceError("the connection is already closed")
        for cursor in self._cursors:
            cursor._release()
        self._session.close()
        self._session = None

    @property
    def closed(self) -> bool:
        return self._session is None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._session is not None:
            self.close()


Description = tuple[str, pa.DataType, None, None, int | None, int | None, bool]


class Cursor:
    """Runs statements and fetches their rows, one Arrow batch from the result at a time."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.arraysize = 1
        self._result: Result | None = None
        self._batches: Iterator[pa.RecordBatch] = iter(())
        self._rows: Iterator[tuple[Any, ...]] = iter(())
        self._fetched = 0
        self._done = False
        self._closed = False
        self.description: tuple[Description, ...] | None = None

    @property
    def rowcount(self) -> int:
        """The number of rows of the last result once all were fetched; -1 before (rows stream, uncounted)."""
        return self._fetched if self._done and self._result is not None else -1

    @property
    def rownumber(self) -> int | None:
        return self._fetched if self._result is not None else None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def notices(self) -> tuple[str, ...]:
        """How the policy shaped the last result (row filters; a cut at ``max_rows`` once it happened)."""
        return self._result.notices_so_far if self._result is not None else ()

    def execute(self, operation: str, parameters: Parameters | None = None) -> Self:
        """Run one statement; ``parameters`` (a mapping for ``:name``, a sequence for ``$1``) are bound as literals."""
        session = self._session()
        self._release()
        with _translated():
            sql = bind(operation, parameters or None, session.dialect)
            self._result = session.query(sql)
        self.description = tuple(_describe(field) for field in self._result.schema)
        self._batches = self._result.stream()
        return self

    def executemany(self, operation: str, seq_of_parameters: Sequence[Parameters]) -> NoReturn:
        raise NotSupportedError("executemany is for writes, and saferoom is read-only: run execute() once per "
                                "set of parameters, or put the values in one query (`where x in (...)`)")

    def fetchone(self) -> tuple[Any, ...] | None:
        rows = self._take(1)
        return rows[0] if rows else None

    def fetchmany(self, size: int | None = None) -> list[tuple[Any, ...]]:
        return self._take(self.arraysize if size is None else size)

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._take(None)

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        while (row := self.fetchone()) is not None:
            yield row

    def setinputsizes(self, sizes: object) -> None:
        """Nothing to prepare: parameters are bound as literals."""

    def setoutputsize(self, size: int, column: int | None = None) -> None:
        """Nothing to size: values arrive whole."""

    def close(self) -> None:
        self._release()
        self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _session(self) -> SessionProtocol:
        if self._closed:
            raise InterfaceError("the cursor is closed; open another with connection.cursor()")
        return self.connection.session

    def _release(self) -> None:
        """Stop reading the last result: its query ends and its unread rows are never read."""
        if self._result is not None:
            self._result.close()
        self._result, self.description = None, None
        self._batches, self._rows = iter(()), iter(())
        self._fetched, self._done = 0, False

    def _take(self, size: int | None) -> list[tuple[Any, ...]]:
        self._session()
        if self._result is None:
            raise InterfaceError("no result to fetch from: call execute() with a query first")
        taken: list[tuple[Any, ...]] = []
        with _translated():
            while size is None or len(taken) < size:
                taken += itertools.islice(self._rows, None if size is None else size - len(taken))
                if (size is None or len(taken) < size) and not self._next_batch():
                    break
        self._fetched += len(taken)
        return taken

    def _next_batch(self) -> bool:
        batch = next(self._batches, None)
        if batch is None:
            self._done = True
            return False
        self._rows = zip(*map(python_values, batch.columns), strict=True)
        return True


def python_values(column: pa.Array) -> list[Any]:
    """A column's values as Python objects, converted a column at a time: timestamps without a time zone and
    dates through numpy (ten times Arrow's per-value conversion), decimals parsed from their text (three times)."""
    kind = column.type
    if (pa.types.is_timestamp(kind) and kind.tz is None and kind.unit != "ns") or pa.types.is_date32(kind):
        values: list[Any] = column.to_numpy(zero_copy_only=False).astype(object).tolist()  # NaT becomes None
        return values
    if pa.types.is_decimal(kind):
        return _with_nulls(column, list(map(decimal.Decimal, column.cast(pa.string()).fill_null("0").to_pylist())))
    values = column.to_pylist()
    return values


def _with_nulls(column: pa.Array, values: list[Any]) -> list[Any]:
    if column.null_count:
        for at in np.flatnonzero(np.asarray(column.is_null())):
            values[at] = None
    return values


def _describe(field: pa.Field) -> Description:
    kind = field.type
    precision, scale = (kind.precision, kind.scale) if pa.types.is_decimal(kind) else (None, None)
    return (field.name, kind, None, None, precision, scale, bool(field.nullable))
