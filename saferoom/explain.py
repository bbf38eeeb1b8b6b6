"""What a user may see, and why: the catalog, and the decision on each query (:mod:`saferoom.decision`)."""

from __future__ import annotations

from saferoom.decision import MAX_SQL_BYTES, ColumnInfo, Decision, OutputColumn, TableInfo, allowed
from saferoom.engines import registry
from saferoom.errors import EngineError
from saferoom.guard import Guard, GuardedQuery
from saferoom.guard.outputs import Outputs
from saferoom.notices import filter_description
from saferoom.policy import Action, ColumnRule

# the record's column and table types are named here too: the build's plan (saferoom.split) imports them from here
__all__ = ["ColumnInfo", "OutputColumn", "TableInfo", "catalog", "column_info", "decide", "table_info"]


def column_info(rule: ColumnRule, kind: str) -> ColumnInfo:
    return ColumnInfo(rule.column, kind, rule.action.value, rule.tag, rule.threats, rule.reason)


def table_info(guard: Guard, table: str) -> TableInfo:
    types = guard.types(table)
    listed = guard.policy.columns(table)
    columns = tuple(column_info(guard.policy.rule(guard.role, table, c), kind) for c, kind in types.items() if c in listed)
    return TableInfo(table, columns, _row_filter(guard, table))


def catalog(guard: Guard) -> list[TableInfo]:
    tables = [t for t, ref in guard.policy.tables.items() if registry.serves(guard.policy, ref.source, guard.spec)]
    return [table_info(guard, t) for t in tables if _exists(guard, t)]


def _exists(guard: Guard, table: str) -> bool:
    try:
        guard.types(table)
    except EngineError:
        return False
    return True


def _row_filter(guard: Guard, table: str) -> str | None:
    """The filter as the policy writes it (placeholders, not the user's values); one that reads other tables is
    described by the tables it reads, not quoted: its text is the policy's, not the role's, to read."""
    read = guard.policy.filter_reads(guard.role, table)
    if read:
        return filter_description(read)
    return guard.policy.model.roles[guard.role].rows.get(table)


def decide(guard: Guard, sql: str, guarded: GuardedQuery, types: list[tuple[str, str]] | None = None, *,
           notes: tuple[str, ...] = (), limit: int = MAX_SQL_BYTES) -> Decision:
    """The decision on a query the guard accepted: the tables it reads, each with its row filter and the
    columns the query can reach, and each output column with the source columns it reads.

    ``types`` are the engine's output columns (``explain``); without them (the gateway, which records the
    decision before the engine sees the query) output columns are named from the query's select list."""
    rules = [guard.policy.rule(guard.role, t, c) for t, c in guarded.columns]
    tables = tuple(_read(guard, t, [r for r in rules if r.table == t]) for t in guarded.tables)
    reached = [c for t in tables for c in t.columns]
    tags = tuple(sorted({tag for r in rules for tag in r.tags}))
    return allowed(guard.user, guard.role, sql, tables=tables, columns=_output_columns(reached, guarded.outputs, types),
                   tags=tags, notes=notes, limit=limit)


def _read(guard: Guard, table: str, rules: list[ColumnRule]) -> TableInfo:
    types = guard.types(table)
    return TableInfo(table, tuple(column_info(r, types.get(r.column, "")) for r in rules), _row_filter(guard, table))


def _output_columns(reached: list[ColumnInfo], named: Outputs, types: list[tuple[str, str]] | None) -> tuple[OutputColumn, ...]:
    """Each output column and the visible source columns it reads, matched by name."""
    visible = [c for c in reached if c.action != Action.DENY.value]
    if types is None:
        return tuple(OutputColumn(name, None, _sources(reads, visible)) for name, reads in named)
    if len(named) == len(types) and all(reads is not None for _, reads in named):
        return tuple(OutputColumn(n, t, _sources(reads, visible)) for (n, t), (_, reads) in zip(types, named, strict=True))
    # a `*` the engine expanded: its columns are matched to the sources by their names
    return tuple(OutputColumn(n, t, _sources((n.lower(),), visible)) for n, t in types)


def _sources(reads: tuple[str, ...] | None, visible: list[ColumnInfo]) -> tuple[ColumnInfo, ...]:
    """The columns named in ``reads`` (None: a `*`, which may read any of them)."""
    if reads is None:
        return tuple(visible)
    by_name = {c.name.lower(): c for c in visible}
    return tuple(by_name[n] for n in reads if n in by_name)
