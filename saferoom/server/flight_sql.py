"""Arrow Flight SQL on the gateway: the read-only commands an ADBC driver needs, over the same path as ``/v1/query``.

``pandas.read_sql`` builds a frame straight from Arrow only from an ADBC connection; this endpoint lets the
maintained ADBC Flight SQL driver be that connection. Every call carries the user's token
(``authorization: Bearer <token>``) and is identified afresh, so a revoked token stops working at once. A query
is guarded, admitted to one of the user's slots and its decision written to the audit log in ``GetFlightInfo``
(by :meth:`Gateway.start`, as for the HTTP route); its rows leave in ``DoGet`` for the one ticket that names it,
to the user who asked. Everything not listed in ``COMMANDS`` is refused: actions (prepared statements,
transactions), uploads, exchanges.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

import saferoom
from saferoom.decision import TableInfo
from saferoom.errors import AuthError, LimitExceeded, NotFound, SaferoomError, UsageError
from saferoom.identity import Identity
from saferoom.server import flight_sql_messages as messages
from saferoom.server.gateway import Gateway, Running
from saferoom.session import Session

log = logging.getLogger("saferoom.gateway")

TICKET_SECONDS = 60.0  # a query whose rows nobody asks for within this is cancelled and its slot given back
ROLE_HEADER = "x-saferoom-role"  # the driver's adbc.flight.sql.rpc.call_header.x-saferoom-role


@dataclass
class _Pending:
    user: str
    running: Running
    deadline: float


class Tickets:
    """Queries started by GetFlightInfo and not yet fetched: each under a random handle, for its user alone."""

    def __init__(self, gateway: Gateway, seconds: float = TICKET_SECONDS) -> None:
        self._gateway, self._seconds = gateway, seconds
        self._lock = threading.Lock()
        self._pending: dict[bytes, _Pending] = {}

    def add(self, user: str, running: Running) -> bytes:
        handle = secrets.token_bytes(32)
        with self._lock:
            self._pending[handle] = _Pending(user, running, time.monotonic() + self._seconds)
        return handle

    def take(self, handle: bytes, user: str) -> Running:
        """The query of ``handle``; another user's ticket is refused and stays theirs."""
        with self._lock:
            found = self._pending.get(handle)
            if found is None or found.user != user:
                raise NotFound("no query of yours has this ticket (each is fetched once, within "
                               f"{self._seconds:.0f} seconds of being asked); send the query again")
            del self._pending[handle]
        return found.running

    def sweep(self) -> None:
        """Cancel the queries whose tickets were never fetched: each gets its result record and frees its slot."""
        now = time.monotonic()
        with self._lock:
            stale = [h for h, p in self._pending.items() if p.deadline <= now]
            dropped = [self._pending.pop(h).running for h in stale]
        for running in dropped:
            _abandon(self._gateway, running, "its rows were never fetched")

    def close(self) -> None:
        with self._lock:
            dropped, self._pending = list(self._pending.values()), {}
        for pending in dropped:
            _abandon(self._gateway, pending.running, "the gateway is shutting down")


def _abandon(gateway: Gateway, running: Running, reason: str) -> None:
    running.cancel(reason)
    if running.result is not None:
        running.result.close()
    gateway.finish(running, rows=0, size=0)


class _Caller(flight.ServerMiddleware):  # type: ignore[misc]
    def __init__(self, identity: Identity, role: str | None) -> None:
        self.identity, self.role = identity, role


class _Authenticate(flight.ServerMiddlewareFactory):  # type: ignore[misc]
    """Every call names its user by token; one without a valid token is refused before any handler runs."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    def start_call(self, info: Any, headers: dict[str, list[str]]) -> _Caller:
        try:
            identity = self._gateway.identify(_header(headers, "authorization"))
        except SaferoomError as exc:
            raise flight.FlightUnauthenticatedError(str(exc)) from None
        return _Caller(identity, _header(headers, ROLE_HEADER))


def _header(headers: dict[str, list[str]], name: str) -> str | None:
    values = headers.get(name) or []
    return str(values[0]) if values else None


class FlightSqlServer(flight.FlightServerBase):  # type: ignore[misc]
    def __init__(self, gateway: Gateway, location: str, certificates: list[Any] | None = None) -> None:
        super().__init__(location, tls_certificates=certificates or [], middleware={"auth": _Authenticate(gateway)})
        self.gateway = gateway
        self.tickets = Tickets(gateway)
        self.stopping = threading.Event()

    def get_flight_info(self, context: Any, descriptor: flight.FlightDescriptor) -> flight.FlightInfo:
        with _translated():
            name, payload = _command(descriptor)
            caller = context.get_middleware("auth")
            schema, ticket = COMMANDS[name](self, caller, messages.parse(name, payload))
            return flight.FlightInfo(schema, descriptor, [flight.FlightEndpoint(ticket, [])], -1, -1)

    def do_get(self, context: Any, ticket: flight.Ticket) -> flight.FlightDataStream:
        with _translated():
            caller = context.get_middleware("auth")
            name, payload = messages.command_name(ticket.ticket)
            if name == "TicketStatementQuery":
                running = self.tickets.take(messages.parse(name, payload).statement_handle, caller.identity.user)
                return _rows(self.gateway, running)
            if name not in CATALOG:
                raise UsageError("not a ticket this gateway gave out")
            return flight.RecordBatchStream(CATALOG[name](self, caller, messages.parse(name, payload)))

    def do_action(self, context: Any, action: flight.Action) -> Iterator[bytes]:
        # unimplemented (not an error of the call): the driver then runs the statement unprepared
        raise NotImplementedError(_refusal(action.type))

    def list_actions(self, context: Any) -> list[tuple[str, str]]:
        return []

    def do_put(self, context: Any, descriptor: Any, reader: Any, writer: Any) -> None:
        raise flight.FlightUnauthorizedError("the gateway is read-only: nothing can be written through it")

    def do_exchange(self, context: Any, descriptor: Any, reader: Any, writer: Any) -> None:
        raise flight.FlightUnauthorizedError("the gateway is read-only: nothing can be exchanged with it")

    def list_flights(self, context: Any, criteria: bytes) -> Iterator[flight.FlightInfo]:
        raise flight.FlightServerError("flights are not listed: send a query (Flight SQL CommandStatementQuery)")

    def get_schema(self, context: Any, descriptor: flight.FlightDescriptor) -> flight.SchemaResult:
        raise flight.FlightServerError("GetSchema is not served: run the query (GetFlightInfo) to see its schema")

    def _session(self, caller: _Caller) -> Session:
        return self.gateway.session(caller.identity, caller.role)

    def shutdown(self) -> None:
        self.stopping.set()
        self.tickets.close()
        super().shutdown()


def _refusal(command: str) -> str:
    return (f"{command[:100]!r} is not served: this gateway answers read-only Flight SQL queries "
            "(CommandStatementQuery) and catalog requests only; prepared statements and transactions are not served")


def _command(descriptor: flight.FlightDescriptor) -> tuple[str, bytes]:
    if descriptor.descriptor_type != flight.DescriptorType.CMD:
        raise UsageError("send a Flight SQL command (a CMD descriptor), not a path")
    name, payload = messages.command_name(descriptor.command)
    if name not in COMMANDS:
        raise UsageError(_refusal(name or "this command"))
    return name, payload


def _statement(server: FlightSqlServer, caller: _Caller, command: Any) -> tuple[pa.Schema, flight.Ticket]:
    """Guard, admit, audit and start the query, as the HTTP route does; its rows wait for the ticket."""
    if command.HasField("transaction_id") and command.transaction_id:
        raise UsageError("transactions are not served: the gateway is read-only")
    session = server._session(caller)
    running = server.gateway.start(session, command.query, caller.identity)
    assert running.result is not None
    handle = server.tickets.add(caller.identity.user, running)
    return _served(running.result.schema), flight.Ticket(messages.wrap("TicketStatementQuery", statement_handle=handle))


def _rows(gateway: Gateway, running: Running) -> flight.FlightDataStream:
    result = running.result
    assert result is not None
    return flight.GeneratorStream(_served(result.schema), _batches(gateway, running))


def _batches(gateway: Gateway, running: Running) -> Iterator[pa.RecordBatch]:
    """The rows as they come; however the stream ends (done, failed, the client gone), the result record is written
    and the slot given back. A client that hangs up drops this generator, which closes it."""
    result = running.result
    assert result is not None
    rows = size = 0
    error: SaferoomError | None = None
    done = False
    try:
        for batch in result.stream():
            rows, size = rows + batch.num_rows, size + batch.nbytes
            yield _decoded(batch)
        done = True
    except SaferoomError as exc:
        error = exc
        raise _flight_error(exc) from None
    finally:
        if not done and error is None:
            running.cancel("the client hung up")
            result.close()
        gateway.finish(running, rows=rows, size=size, truncated=result.truncated_so_far, error=error)


def _served(schema: pa.Schema) -> pa.Schema:
    """Dictionary columns leave as their values (a generator stream sends no dictionary messages)."""
    return pa.schema([f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f for f in schema],
                     metadata=schema.metadata)


def _decoded(batch: pa.RecordBatch) -> pa.RecordBatch:
    if not any(pa.types.is_dictionary(f.type) for f in batch.schema):
        return batch
    return pa.RecordBatch.from_arrays([c.dictionary_decode() if pa.types.is_dictionary(c.type) else c
                                       for c in batch.columns], schema=_served(batch.schema))


# catalog ---------------------------------------------------------------------------------------------------------

def _catalog_command(server: FlightSqlServer, caller: _Caller, command: Any) -> tuple[pa.Schema, flight.Ticket]:
    """A catalog answer is computed again for whoever fetches its ticket: it holds the request, nothing of a user."""
    name = type(command).DESCRIPTOR.name
    schema = CATALOG[name](server, caller, command).schema
    return schema, flight.Ticket(messages.wrap(name, **_fields(command)))


def _fields(command: Any) -> dict[str, Any]:
    return {field.name: value for field, value in command.ListFields()}


TABLE_TYPE = "TABLE"


def _tables(session: Session) -> list[tuple[str, str, TableInfo]]:
    """(schema, table, what the role sees of it) of each table the user sees, in order."""
    return sorted(((t.name.rpartition(".")[0], t.name.rpartition(".")[2], t) for t in session.tables()),
                  key=lambda found: found[:2])


def _like(pattern: str | None) -> Callable[[str], bool]:
    """A Flight SQL filter pattern (``%`` any run, ``_`` any one character) as a test of a name."""
    import re

    if pattern is None:
        return lambda _name: True
    regex = re.compile("".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern), re.S)
    return lambda name: regex.fullmatch(name) is not None


def _get_catalogs(server: FlightSqlServer, caller: _Caller, command: Any) -> pa.Table:
    return pa.table({"catalog_name": pa.array([], pa.string())},
                    schema=pa.schema([pa.field("catalog_name", pa.string(), nullable=False)]))


def _get_db_schemas(server: FlightSqlServer, caller: _Caller, command: Any) -> pa.Table:
    matches = _like(command.db_schema_filter_pattern if command.HasField("db_schema_filter_pattern") else None)
    found = _tables(server._session(caller)) if _no_catalog(command) else []
    names = sorted({s for s, _, _ in found if matches(s)})
    return pa.table([pa.array([None] * len(names), pa.string()), pa.array(names, pa.string())],
                    schema=pa.schema([pa.field("catalog_name", pa.string()),
                                      pa.field("db_schema_name", pa.string(), nullable=False)]))


def _no_catalog(command: Any) -> bool:
    """The gateway has no catalogs: a request for one by name finds nothing."""
    return not command.HasField("catalog") or command.catalog == ""


TABLES_SCHEMA = pa.schema([pa.field("catalog_name", pa.string()), pa.field("db_schema_name", pa.string()),
                           pa.field("table_name", pa.string(), nullable=False),
                           pa.field("table_type", pa.string(), nullable=False)])


def _get_tables(server: FlightSqlServer, caller: _Caller, command: Any) -> pa.Table:
    schemas = _like(command.db_schema_filter_pattern if command.HasField("db_schema_filter_pattern") else None)
    names = _like(command.table_name_filter_pattern if command.HasField("table_name_filter_pattern") else None)
    typed = not command.table_types or TABLE_TYPE in command.table_types
    seen = _tables(server._session(caller)) if typed and _no_catalog(command) else []
    found = [(s, t, info) for s, t, info in seen if schemas(s) and names(t)]
    columns = [pa.array([None] * len(found), pa.string()), pa.array([s for s, _, _ in found], pa.string()),
               pa.array([t for _, t, _ in found], pa.string()), pa.array([TABLE_TYPE] * len(found), pa.string())]
    if not command.include_schema:
        return pa.table(columns, schema=TABLES_SCHEMA)
    shapes = [_received(server, caller, info).serialize().to_pybytes() for _, _, info in found]
    return pa.table([*columns, pa.array(shapes, pa.binary())],
                    schema=TABLES_SCHEMA.append(pa.field("table_schema", pa.binary(), nullable=False)))


def _received(server: FlightSqlServer, caller: _Caller, table: TableInfo) -> pa.Schema:
    """The columns the user may read and the types they receive them as: a query of no rows, guarded and audited
    like any other (denied columns are left out)."""
    session = server._session(caller)
    sql = table.no_rows_sql(session.dialect)
    if sql is None:
        return pa.schema([])
    running = server.gateway.start(session, sql, caller.identity)
    assert running.result is not None
    schema = _served(running.result.schema)
    _abandon(server.gateway, running, "only its schema was needed")
    return schema


def _get_table_types(server: FlightSqlServer, caller: _Caller, command: Any) -> pa.Table:
    return pa.table([pa.array([TABLE_TYPE], pa.string())],
                    schema=pa.schema([pa.field("table_type", pa.string(), nullable=False)]))


# GetSqlInfo: what the driver asks when it connects (transactions) and for adbc_get_info
_INFO: dict[int, tuple[int, Any]] = {  # id -> (union member: 0 string, 1 bool, 3 int32 bitmask), value
    0: (0, "saferoom"), 1: (0, saferoom.__version__),
    2: (0, pa.__version__), 3: (1, True), 4: (1, True), 5: (1, False), 8: (3, 0), 9: (1, False),
}
_UNION = pa.dense_union([pa.field("string_value", pa.string()), pa.field("bool_value", pa.bool_()),
                         pa.field("bigint_value", pa.int64()), pa.field("int32_bitmask", pa.int32()),
                         pa.field("string_list", pa.list_(pa.string())),
                         pa.field("int32_to_int32_list_map", pa.map_(pa.int32(), pa.list_(pa.int32())))])
SQL_INFO_SCHEMA = pa.schema([pa.field("info_name", pa.uint32(), nullable=False), pa.field("value", _UNION, nullable=False)])


def _get_sql_info(server: FlightSqlServer, caller: _Caller, command: Any) -> pa.Table:
    ids = [i for i in (command.info or sorted(_INFO)) if i in _INFO]
    kinds = [_INFO[i][0] for i in ids]
    children = [pa.array([_INFO[i][1] for i in ids if _INFO[i][0] == k], _UNION.field(k).type) for k in range(6)]
    offsets = [kinds[:n].count(k) for n, k in enumerate(kinds)]
    value = pa.UnionArray.from_dense(pa.array(kinds, pa.int8()), pa.array(offsets, pa.int32()), children,
                                     [f.name for f in _UNION], list(range(6)))
    return pa.Table.from_arrays([pa.array(ids, pa.uint32()), value], schema=SQL_INFO_SCHEMA)


CATALOG: dict[str, Callable[[FlightSqlServer, _Caller, Any], pa.Table]] = {
    "CommandGetCatalogs": _get_catalogs, "CommandGetDbSchemas": _get_db_schemas, "CommandGetTables": _get_tables,
    "CommandGetTableTypes": _get_table_types, "CommandGetSqlInfo": _get_sql_info,
}
COMMANDS: dict[str, Callable[[FlightSqlServer, _Caller, Any], tuple[pa.Schema, flight.Ticket]]] = {
    "CommandStatementQuery": _statement, **{name: _catalog_command for name in CATALOG},
}


# errors ----------------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """Turn saferoom's errors into Flight errors once, at the edge: the message is the explanation, the structured
    fields (column, tag, roles that may see it) ride along as JSON in the error's extra info."""
    try:
        yield
    except SaferoomError as exc:
        raise _flight_error(exc) from None


def _flight_error(exc: SaferoomError) -> flight.FlightError:
    from saferoom.server.streams import error_body

    detail = json.dumps(error_body(exc)).encode()
    if isinstance(exc, AuthError):
        return flight.FlightUnauthenticatedError(str(exc), detail)
    if isinstance(exc, LimitExceeded) and exc.http_status == 429:
        return flight.FlightUnavailableError(str(exc), detail)
    if exc.http_status == 403:
        return flight.FlightUnauthorizedError(str(exc), detail)
    return flight.FlightServerError(str(exc), detail)


def start(gateway: Gateway, host: str, port: int, tls: tuple[Path, Path] | None = None) -> FlightSqlServer:
    """Listen on ``host:port`` (TLS with the HTTP server's certificate and key when given) and serve on a thread."""
    scheme = "grpc+tls" if tls else "grpc+tcp"
    certificates = [flight.CertKeyPair(tls[0].read_bytes(), tls[1].read_bytes())] if tls else None
    server = FlightSqlServer(gateway, f"{scheme}://{host}:{port}", certificates)
    gateway.flight_sql_port = server.port
    threading.Thread(target=server.serve, name="saferoom-flight-sql", daemon=True).start()
    threading.Thread(target=_sweeping, args=(server,), name="saferoom-flight-sql-sweep", daemon=True).start()
    log.info("Flight SQL (ADBC) at %s://%s:%s", scheme, host, server.port)
    return server


def _sweeping(server: FlightSqlServer) -> None:
    while not server.stopping.wait(1.0):
        server.tickets.sweep()
