"""A query's decision: one typed record, made once, that every surface carries.

:meth:`Session.explain <saferoom.session.Session.explain>` returns it, the gateway's audit log writes it
(each ``decision`` event is this record's :meth:`Decision.to_dict` plus the event's own ``event``,
``request_id``, ``time`` and ``method``), ``POST /v1/explain`` and a JSON ``POST /v1/query`` send it, and
the web page renders it. Its parts::

    Decision      who (user, role), the statement (query, or its prefix and digest), allowed or refused
    ├── refusal   Refusal: the error's type, message and structured fields, when refused
    ├── tables    TableInfo: each table read, its row filter, and the columns the query can reach
    │   └── columns   ColumnInfo: a source column's type, action and the reason for it
    └── columns   OutputColumn: each output column and the source columns (ColumnInfo) it comes from

A record holds no secret: the token key, audit key and source credentials never enter it.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

from sqlglot import exp

from saferoom import display
from saferoom.errors import SaferoomError

ALLOWED, REFUSED = "allowed", "refused"
MAX_SQL_BYTES = 256 * 1024  # a query's text; lists of values that long belong in a table
RECORDED_PREFIX = 4096  # of a query past the limit, the record keeps this much, its length and its digest


@dataclass(frozen=True)
class ColumnInfo:
    """One source column as a role sees it: the action on it and the rule behind that."""

    name: str
    type: str
    action: str
    tag: str | None
    threats: tuple[str, ...]
    reason: str

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ColumnInfo:
        return cls(data["name"], data["type"], data["action"], data.get("tag"), tuple(data.get("threats") or ()),
                   data["reason"])


@dataclass(frozen=True)
class TableInfo:
    """One table as a role sees it. Denied columns are listed so the rule is visible."""

    name: str
    columns: tuple[ColumnInfo, ...]
    row_filter: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def no_rows_sql(self, dialect: str) -> str | None:
        """A query of the columns the role may read that returns no rows: its result's schema is what the role
        receives (None when it may read none)."""
        visible = [c.name for c in self.columns if c.action != "deny"]
        if not visible:
            return None
        schema, _, name = self.name.rpartition(".")
        table = exp.table_(name, db=schema or None, quoted=True)
        return exp.select(*(exp.column(c, quoted=True) for c in visible)).from_(table).limit(0).sql(dialect=dialect)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TableInfo:
        return cls(data["name"], tuple(ColumnInfo.from_dict(c) for c in data["columns"]), data.get("row_filter"))


@dataclass(frozen=True)
class OutputColumn:
    """A column of the result and the source columns its expression reads (none: computed from no column).

    ``type`` is the engine's; None where the decision was made before the engine saw the query (the audit log)."""

    name: str
    type: str | None
    sources: tuple[ColumnInfo, ...] = ()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OutputColumn:
        return cls(data["name"], data.get("type"), tuple(ColumnInfo.from_dict(s) for s in data.get("sources") or ()))


@dataclass(frozen=True)
class Refusal:
    """Why a query was refused: the error's class name, its message and, for the guard's refusals, the rule."""

    type: str
    message: str
    column: str | None = None
    tag: str | None = None
    threats: tuple[str, ...] = ()
    allowed_roles: tuple[str, ...] = ()

    @classmethod
    def of(cls, error: SaferoomError) -> Refusal:
        fields = error.fields()
        return cls(type(error).__name__, error.message, _text(fields.get("column")), _text(fields.get("tag")),
                   _texts(fields.get("threats")), _texts(fields.get("allowed_roles")))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Refusal:
        return cls(data["type"], data["message"], data.get("column"), data.get("tag"),
                   tuple(data.get("threats") or ()), tuple(data.get("allowed_roles") or ()))


@dataclass(frozen=True)
class Decision:
    """What one user, acting as one role, may get from one query, column by column, or why not."""

    user: str
    role: str
    query: str
    decision: str  # ALLOWED or REFUSED
    refusal: Refusal | None = None
    tables: tuple[TableInfo, ...] = ()
    columns: tuple[OutputColumn, ...] = ()
    tags: tuple[str, ...] = ()  # every tag of the columns the query can reach
    notes: tuple[str, ...] = ()
    query_bytes: int | None = None  # set when ``query`` is only the text's first RECORDED_PREFIX bytes
    query_sha256: str | None = None
    unique_rows: int | None = None  # result rows unique on the role's quasi-identifiers, when it asks (disclosure)

    @property
    def allowed(self) -> bool:
        return self.decision == ALLOWED

    def __str__(self) -> str:
        """A short table for ``print``: each output column, the action on it and why, or the refusal."""
        return display.decision_text(self)

    def _repr_html_(self) -> str:
        """The same, as an escaped HTML table for notebooks."""
        return display.decision_html(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Decision:
        """The record from its dictionary: the gateway's JSON, or an audit log's decision event, of any version."""
        if _before_the_record(data):
            return _from_first_version(data)
        refusal = data.get("refusal")
        return cls(data["user"], data["role"], data["query"], data["decision"],
                   Refusal.from_dict(refusal) if refusal else None,
                   tuple(TableInfo.from_dict(t) for t in data.get("tables") or ()),
                   tuple(OutputColumn.from_dict(c) for c in data.get("columns") or ()),
                   tuple(data.get("tags") or ()), tuple(data.get("notes") or ()),
                   data.get("query_bytes"), data.get("query_sha256"), data.get("unique_rows"))


def allowed(user: str, role: str, sql: str, *, tables: tuple[TableInfo, ...], columns: tuple[OutputColumn, ...],
            tags: tuple[str, ...], notes: tuple[str, ...] = (), limit: int = MAX_SQL_BYTES) -> Decision:
    return Decision(user, role, decision=ALLOWED, tables=tables, columns=columns, tags=tags, notes=notes,
                    **_statement(sql, limit))


def refused(user: str, role: str, sql: str, error: SaferoomError, *, limit: int = MAX_SQL_BYTES,
            notes: tuple[str, ...] = ()) -> Decision:
    return Decision(user, role, decision=REFUSED, refusal=Refusal.of(error), notes=notes, **_statement(sql, limit))


def _statement(sql: str, limit: int) -> dict[str, Any]:
    """The query as a record keeps it: whole up to ``limit`` bytes; past it, a prefix, the length and a digest,
    so that a record (and the audit log) stays small whatever was sent."""
    data = sql.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return {"query": sql}
    return {"query": data[:RECORDED_PREFIX].decode("utf-8", "ignore"), "query_bytes": len(data),
            "query_sha256": hashlib.sha256(data).hexdigest()}


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _texts(value: object) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list | tuple) else ()


def _before_the_record(data: dict[str, Any]) -> bool:
    """Audit logs written before this record hold table names as strings and a ``reason`` of their own."""
    return "reason" in data or any(isinstance(t, str) for t in data.get("tables") or ())


def _from_first_version(data: dict[str, Any]) -> Decision:
    """A decision event of the first audit log format: its tables and reachable columns (without types or
    reasons, which it did not record) and, when refused, its reason as the refusal's message."""
    reached: dict[str, list[ColumnInfo]] = {t: [] for t in data.get("tables") or ()}
    for column in data.get("columns") or ():
        reached.setdefault(column["table"], []).append(ColumnInfo(column["column"], "", column["action"], None, (), ""))
    refusal = Refusal("", str(data.get("reason", ""))) if data.get("decision") == REFUSED else None
    return Decision(data["user"], data["role"], data.get("query", ""), data["decision"], refusal,
                    tuple(TableInfo(t, tuple(c)) for t, c in reached.items()), (), tuple(data.get("tags") or ()),
                    (), data.get("query_bytes"), data.get("query_sha256"))
