"""A SQLAlchemy 2 dialect over :mod:`saferoom.dbapi`, registered as ``saferoom``.

    saferoom:///saferoom.yaml?user=alice               embedded: a policy file (relative; four slashes for absolute)
    saferoom:////srv/room/saferoom.yaml?user=alice&role=investigator
    saferoom+https://gateway:8470                      a gateway; the token from SAFEROOM_TOKEN or `saferoom login`
    saferoom+http://:TOKEN@127.0.0.1:8470              ... or in the URL's password (or ``?token=``)
    saferoom://                                        what saferoom.connect() finds: SAFEROOM_URL, a login, SAFEROOM_POLICY

Read-only. Reflection shows the schemas, tables and columns the user's role may see (denied columns are
not there), with the types the role receives: a tokenized id is a string, whatever its source type.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import pyarrow as pa

from saferoom.errors import UsageError

try:
    from sqlalchemy import types as sqltypes
    from sqlalchemy.engine import URL, default, reflection
    from sqlalchemy.engine.interfaces import ConnectArgsType as ConnectArgs
    from sqlalchemy.engine.interfaces import DBAPIConnection, ReflectedColumn, ReflectedPrimaryKeyConstraint
except ImportError:  # pragma: no cover - exercised in a subprocess without SQLAlchemy
    raise UsageError("the saferoom SQLAlchemy dialect needs SQLAlchemy: pip install 'saferoom[sqlalchemy]'") from None

from saferoom import dbapi
from saferoom.decision import TableInfo

_TYPES: tuple[tuple[Callable[[pa.DataType], bool], Callable[[pa.DataType], sqltypes.TypeEngine[Any]]], ...] = (
    (pa.types.is_boolean, lambda t: sqltypes.Boolean()),
    (lambda t: pa.types.is_int8(t) or pa.types.is_int16(t), lambda t: sqltypes.SmallInteger()),
    (lambda t: pa.types.is_int32(t) or pa.types.is_uint8(t) or pa.types.is_uint16(t), lambda t: sqltypes.Integer()),
    (pa.types.is_integer, lambda t: sqltypes.BigInteger()),
    (pa.types.is_float32, lambda t: sqltypes.Float()),
    (pa.types.is_floating, lambda t: sqltypes.Double()),
    (pa.types.is_decimal, lambda t: sqltypes.Numeric(t.precision, t.scale)),
    (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t), lambda t: sqltypes.String()),
    (lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t), lambda t: sqltypes.LargeBinary()),
    (pa.types.is_timestamp, lambda t: sqltypes.DateTime(timezone=t.tz is not None)),
    (pa.types.is_date, lambda t: sqltypes.Date()),
    (pa.types.is_time, lambda t: sqltypes.Time()),
    (pa.types.is_duration, lambda t: sqltypes.Interval()),
)


FLOOR_DIVISION = frozenset({"postgres"})  # the engines (sqlglot dialects) whose integer `/` floors


def sql_type(arrow: pa.DataType) -> sqltypes.TypeEngine[Any]:
    """The SQLAlchemy type for a column the role receives as ``arrow``; NullType when there is none."""
    return next((make(arrow) for test, make in _TYPES if test(arrow)), sqltypes.NullType())


def connect_args(url: URL) -> dict[str, Any]:
    """:func:`saferoom.dbapi.connect`'s arguments for a ``saferoom`` URL."""
    query = {k: v if isinstance(v, str) else v[-1] for k, v in url.query.items()}
    unknown = set(query) - {"user", "role", "token", "backend"}
    if unknown:
        raise UsageError(f"unknown option(s) in the saferoom URL: {', '.join(sorted(unknown))}; "
                         "use user, role, token or backend")
    if url.host:
        scheme = url.get_driver_name() if url.get_driver_name() in ("http", "https") else "https"
        port = f":{url.port}" if url.port else ""
        gateway = f"{scheme}://{url.host}{port}"
        return {"url": gateway, "token": url.password or query.get("token"), "role": query.get("role")}
    return {"policy": url.database or None, "user": url.username or query.get("user"), "role": query.get("role"),
            "backend": query.get("backend")}


class SaferoomDialect(default.DefaultDialect):
    """Generic SQL with ``:name`` parameters, which the dbapi binds as literals and the guard reads."""

    name = "saferoom"
    driver = "saferoom"
    default_paramstyle = "named"
    supports_statement_cache = True
    supports_native_boolean = True
    supports_native_decimal = True
    supports_alter = False
    supports_sequences = False
    supports_default_values = False
    supports_empty_insert = False
    supports_multivalues_insert = False
    postfetch_lastrowid = False

    @classmethod
    def import_dbapi(cls) -> ModuleType:
        return dbapi

    def create_connect_args(self, url: URL) -> ConnectArgs:
        return [], connect_args(url)

    def initialize(self, connection: Any) -> None:
        super().initialize(connection)
        # `/` of two integers: floor division in PostgreSQL, true division in DuckDB and Spark; SQLAlchemy writes
        # `a / b` or `FLOOR(a / b)` by this, so `//` and `/` keep Python's meaning on every engine
        self.div_is_floordiv = _session(connection).dialect in FLOOR_DIVISION

    def _get_server_version_info(self, connection: Any) -> tuple[int, ...]:
        return ()

    def _get_default_schema_name(self, connection: Any) -> str:
        schemas = self.get_schema_names(connection)
        return schemas[0] if len(schemas) == 1 else ""  # with several, a table is named with its schema

    def do_rollback(self, dbapi_connection: DBAPIConnection) -> None:
        """Nothing to undo: every statement is a read."""

    def get_isolation_level(self, dbapi_connection: DBAPIConnection) -> Any:
        raise NotImplementedError  # no transactions: SQLAlchemy then leaves isolation levels alone

    @reflection.cache
    def _catalog(self, connection: Any, **kw: Any) -> dict[tuple[str, str], TableInfo]:
        """The tables the role sees, by (schema, table): what every reflection call reads from."""
        session = _session(connection)
        return {_split(t.name): t for t in session.tables()}

    def get_schema_names(self, connection: Any, **kw: Any) -> list[str]:
        return sorted({schema for schema, _ in self._catalog(connection, **kw)})

    def get_table_names(self, connection: Any, schema: str | None = None, **kw: Any) -> list[str]:
        """A schema's tables; with none named, the tables a query may name without a schema (unambiguous ones)."""
        names = [table for s, table in self._catalog(connection, **kw) if not schema or s == schema]
        return sorted(n for n in set(names) if schema or names.count(n) == 1)

    def get_view_names(self, connection: Any, schema: str | None = None, **kw: Any) -> list[str]:
        return []

    def has_table(self, connection: Any, table_name: str, schema: str | None = None, **kw: Any) -> bool:
        return self._find(connection, table_name, schema, **kw) is not None

    def get_columns(self, connection: Any, table_name: str, schema: str | None = None,
                    **kw: Any) -> list[ReflectedColumn]:
        """The columns the role may see, typed as the role receives them (a query of no rows tells)."""
        table = self._find(connection, table_name, schema, **kw)
        if table is None:
            from sqlalchemy.exc import NoSuchTableError

            raise NoSuchTableError(f"{schema}.{table_name}" if schema else table_name)
        received = _received_types(connection, table)
        return [{"name": f.name, "type": sql_type(f.type), "nullable": True, "default": None} for f in received]

    def _find(self, connection: Any, table_name: str, schema: str | None, **kw: Any) -> TableInfo | None:
        """The table ``schema.table_name``; without a schema, the one table of that name, as the guard resolves it."""
        found = [t for (s, name), t in self._catalog(connection, **kw).items()
                 if name == table_name and (not schema or s == schema)]
        return found[0] if len(found) == 1 else None

    def get_pk_constraint(self, connection: Any, table_name: str, schema: str | None = None,
                          **kw: Any) -> ReflectedPrimaryKeyConstraint:
        return {"constrained_columns": [], "name": None}

    def get_foreign_keys(self, connection: Any, table_name: str, schema: str | None = None, **kw: Any) -> list[Any]:
        return []

    def get_indexes(self, connection: Any, table_name: str, schema: str | None = None, **kw: Any) -> list[Any]:
        return []

    def get_unique_constraints(self, connection: Any, table_name: str, schema: str | None = None,
                               **kw: Any) -> list[Any]:
        return []

    def get_check_constraints(self, connection: Any, table_name: str, schema: str | None = None,
                              **kw: Any) -> list[Any]:
        return []


def _session(connection: Any) -> Any:
    """The saferoom session under a SQLAlchemy connection."""
    return connection.connection.dbapi_connection.session


def _split(name: str) -> tuple[str, str]:
    schema, _, table = name.rpartition(".")
    return schema, table


def _received_types(connection: Any, table: TableInfo) -> pa.Schema:
    """The schema of the columns of ``table`` the role may read, as they are received (a query of no rows tells)."""
    session = _session(connection)
    sql = table.no_rows_sql(session.dialect)
    if sql is None:
        return pa.schema([])
    result = session.query(sql)
    result.close()
    return result.schema

