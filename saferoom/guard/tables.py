"""Resolve every table a query names, respecting CTE scope, and swap in policy views.

A name that a visible CTE defines refers to that CTE; every other table
reference must resolve to exactly one table in the policy, or the query is
refused. Names compare case-insensitively, quoted or not, as DuckDB does.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

from sqlglot import exp

from saferoom.errors import QueryRejected
from saferoom.policy import Policy, TableRef

ViewFor = Callable[[str], exp.Expression]


class Resolver:
    """Maps the names a user may write (t, source.t, source.schema.t) to policy tables."""

    def __init__(self, policy: Policy, default_schema: str, engine: str | None = None) -> None:
        self._names: dict[tuple[str, ...], list[str]] = {}
        for key, ref in policy.tables.items():
            if engine is not None and policy.model.sources[ref.source].engine != engine:
                continue  # a session reads one engine's sources
            schema = (ref.schema or default_schema).lower()
            for name in _spellings(ref, schema, default_schema):
                self._names.setdefault(name, []).append(key)

    def resolve(self, table: exp.Table) -> str:
        parts = tuple(p.name.lower() for p in table.parts)
        keys = self._names.get(parts, [])
        if len(keys) == 1:
            return keys[0]
        written = ".".join(p.name for p in table.parts)
        if keys:
            raise QueryRejected(f"table `{written}` is ambiguous: write one of {', '.join(sorted(keys))}")
        raise QueryRejected(f"unknown table `{written}`.{self._suggest(written)} Run `saferoom tables` to list what you can query.")

    def names_table(self, column: exp.Column) -> bool:
        parts = tuple(p.name.lower() for p in column.parts[:-1])
        return len(self._names.get(parts, [])) == 1

    def _suggest(self, written: str) -> str:
        names = sorted({".".join(n) for n in self._names})
        close = difflib.get_close_matches(written.lower(), names, n=1)
        return f" Did you mean `{close[0]}`?" if close else ""


def _spellings(ref: TableRef, schema: str, default_schema: str) -> list[tuple[str, ...]]:
    source, name = ref.source.lower(), ref.name.lower()
    spellings = [(source, schema, name), (name,)]
    if schema == default_schema.lower():
        spellings.append((source, name))
    return spellings


def substitute_tables(tree: exp.Expression, resolver: Resolver, view_for: ViewFor) -> tuple[exp.Expression, list[str]]:
    """Replace each base-table reference by its policy view; return the tree and the tables touched."""
    touched: list[str] = []
    _visit(tree, frozenset(), resolver, view_for, touched)
    return tree, touched


def _visit(node: exp.Expression, ctes: frozenset[str], resolver: Resolver, view_for: ViewFor, touched: list[str]) -> None:
    with_ = node.args.get("with_")
    if isinstance(with_, exp.With):
        ctes = _visit_ctes(with_, ctes, resolver, view_for, touched)
    for child in list(node.iter_expressions()):
        if child is with_:
            continue
        if isinstance(child, exp.Table):
            _replace(child, ctes, resolver, view_for, touched)
        else:
            _visit(child, ctes, resolver, view_for, touched)


def _visit_ctes(with_: exp.With, ctes: frozenset[str], resolver: Resolver, view_for: ViewFor, touched: list[str]) -> frozenset[str]:
    recursive = bool(with_.args.get("recursive"))
    for cte in with_.expressions:
        name = cte.alias_or_name.lower()
        _visit(cte.this, ctes | {name} if recursive else ctes, resolver, view_for, touched)
        ctes = ctes | {name}
    return ctes


def _replace(table: exp.Table, ctes: frozenset[str], resolver: Resolver, view_for: ViewFor, touched: list[str]) -> None:
    if not table.args.get("db") and not table.args.get("catalog") and table.name.lower() in ctes:
        return
    key = resolver.resolve(table)
    touched.append(key)
    alias = table.args.get("alias") or exp.TableAlias(this=table.this.copy())
    table.replace(exp.Subquery(this=view_for(key), alias=alias))


def unqualify_columns(tree: exp.Expression, resolver: Resolver) -> exp.Expression:
    """``prod.main.cards.pan`` names the view aliased ``cards``; drop the source and schema."""
    for column in tree.find_all(exp.Column):
        if column.args.get("db") and resolver.names_table(column):
            column.set("catalog", None)
            column.set("db", None)
    return tree


def referenced_names(tree: exp.Expression) -> frozenset[str] | None:
    """Every name the query could use to reach a view column; None when it may need them all.

    Views are cut to these columns so the engine plans less. Cutting only
    ever removes columns: a name missed here is a binder error, never a leak.
    """
    names: set[str] = set()
    tables: set[str] = set()
    single: set[str] = set()
    for node in tree.walk():
        if isinstance(node, exp.Identifier):
            names.add(node.name.lower())
        elif isinstance(node, exp.Star) and not isinstance(node.parent, exp.Count):
            return None
        elif isinstance(node, exp.Table):
            tables.add(node.alias_or_name.lower())
        elif isinstance(node, exp.Column) and not node.args.get("table"):
            single.add(node.name.lower())
        elif isinstance(node, exp.Join) and str(node.args.get("method") or "").upper() == "NATURAL":
            return None
    return None if single & tables else frozenset(names)  # a table used as a value needs its whole row
