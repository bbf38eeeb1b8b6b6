"""What a user may see, and why: the catalog and per-query explanations."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from sqlglot import exp

from saferoom.engines import registry
from saferoom.errors import EngineError
from saferoom.guard import Guard
from saferoom.guard.parse import parse
from saferoom.policy import Action, ColumnRule


@dataclass(frozen=True)
class ColumnInfo:
    """One column as a role sees it."""

    name: str
    type: str
    action: str
    tag: str | None
    threats: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class TableInfo:
    """One table as a role sees it. Denied columns are listed so the rule is visible."""

    name: str
    columns: tuple[ColumnInfo, ...]
    row_filter: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class OutputColumn:
    name: str
    type: str
    sources: tuple[ColumnInfo, ...] = ()


@dataclass(frozen=True)
class Explanation:
    """What a query will see, column by column, and the rules that shaped it."""

    role: str
    tables: tuple[TableInfo, ...]
    columns: tuple[OutputColumn, ...]
    refused: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def column_info(rule: ColumnRule, kind: str) -> ColumnInfo:
    return ColumnInfo(rule.column, kind, rule.action.value, rule.tag, rule.threats, rule.reason)


def table_info(guard: Guard, table: str) -> TableInfo:
    types = guard.types(table)
    listed = guard.policy.columns(table)
    columns = tuple(column_info(guard.policy.rule(guard.role, table, c), kind) for c, kind in types.items() if c in listed)
    filtered = guard.policy.model.roles[guard.role].rows.get(table)
    return TableInfo(table, columns, filtered)


def catalog(guard: Guard) -> list[TableInfo]:
    tables = [t for t, ref in guard.policy.tables.items() if registry.serves(guard.policy, ref.source, guard.spec)]
    return [table_info(guard, t) for t in tables if _exists(guard, t)]


def _exists(guard: Guard, table: str) -> bool:
    try:
        guard.types(table)
    except EngineError:
        return False
    return True


def output_sources(guard: Guard, sql: str, tables: tuple[str, ...], names: list[str]) -> list[tuple[ColumnInfo, ...]]:
    """For each output column, the policy columns its expression names (matched by name)."""
    visible = {i.name: i for t in tables for i in table_info(guard, t).columns if i.action != Action.DENY.value}
    tree = parse(sql, guard.spec)
    select = tree if isinstance(tree, exp.Select) else tree.find(exp.Select)
    projections = select.expressions if select is not None else []
    if len(projections) != len(names) or any(isinstance(p, exp.Star) for p in projections):
        return [((visible[n],) if n in visible else ()) for n in names]
    return [_named(p, visible) for p in projections]


def _named(projection: exp.Expr, visible: dict[str, ColumnInfo]) -> tuple[ColumnInfo, ...]:
    names = dict.fromkeys(c.name.lower() for c in projection.find_all(exp.Column))
    return tuple(visible[n] for n in names if n in visible)
