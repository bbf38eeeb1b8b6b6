"""The guard: every query passes through :meth:`Guard.rewrite` or is refused.

A query is parsed, then passed through :data:`RULES` in order, each a small
function ``rule(expression, context) -> expression`` over the sqlglot tree in
its own module (as sqlglot's optimizer is built), then generated::

    parse → check_statement → check_nodes → bound_sizes → unqualify_columns → resolve_tables
          → refuse_hidden_columns → refuse_empty_stars → explain_tokens → name_outputs → aggregate_only
          → substitute_views
          → generate

The engine only ever runs SQL generated from the rewritten tree, never the
text the user sent, so the guard and the engine cannot disagree about what
a query means.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import sqlglot
from sqlglot import exp

from saferoom.engines.base import Catalog, ColumnTypes, EngineSpec, KeyRows
from saferoom.errors import EngineError, LimitExceeded, QueryRejected
from saferoom.guard.aggregate_dp import NoisePlan
from saferoom.guard.aggregate_only import aggregate_only
from saferoom.guard.bound_sizes import bound_sizes
from saferoom.guard.check_nodes import check_nodes
from saferoom.guard.check_statement import check_statement
from saferoom.guard.context import INTEGERS, Columns, Context, Hidden, Touched
from saferoom.guard.explain_tokens import explain_tokens
from saferoom.guard.name_outputs import name_outputs
from saferoom.guard.outputs import Outputs, outputs
from saferoom.guard.parse import parse
from saferoom.guard.refuse_empty_stars import refuse_empty_stars
from saferoom.guard.refuse_hidden_columns import refuse_hidden_columns
from saferoom.guard.render import render, rendered
from saferoom.guard.resolve_tables import resolve_tables
from saferoom.guard.resolver import Resolver
from saferoom.guard.substitute_views import substitute_views
from saferoom.guard.unqualify_columns import unqualify_columns
from saferoom.guard.views import build_view, physical_table, visible_columns
from saferoom.policy import Action, Policy

__all__ = ["RULES", "Context", "Guard", "GuardedQuery", "Rule"]

Rule = Callable[[exp.Expr, Context], exp.Expr]
KeyRowsOf = Callable[[tuple[str, str, str], str], "KeyRows | None"]

RULES: tuple[Rule, ...] = (
    check_statement,
    check_nodes,
    bound_sizes,
    unqualify_columns,
    resolve_tables,
    refuse_hidden_columns,
    refuse_empty_stars,
    explain_tokens,
    name_outputs,
    aggregate_only,
    substitute_views,
)

CACHE_SIZE = 4096


@dataclass(frozen=True)
class GuardedQuery:
    """A query the guard accepted: the SQL the engine runs and what it touches."""

    sql: str
    tables: tuple[str, ...]
    columns: tuple[tuple[str, str], ...] = ()  # (table, column) the query can reach, for the audit log
    outputs: Outputs = ()  # each output column's name and the column names it reads, for its decision
    noise: NoisePlan | None = None  # the noise the session adds to the result, and the budget it spends


class Guard:
    """Rewrites queries for one user acting as one role."""

    def __init__(self, policy: Policy, user: str, role: str, spec: EngineSpec, catalog: Catalog,
                 fixed: frozenset[tuple[str, str, str]] = frozenset(), key_rows: KeyRowsOf | None = None) -> None:
        """``fixed``: the catalog's tables whose columns cannot change while the guard lives (by catalog key);
        ``key_rows``: the engine's :meth:`~saferoom.engines.base.Engine.key_rows`, for those tables."""
        self.policy, self.user, self.role, self.spec = policy, user, role, spec
        self._attributes = policy.user(user).attributes
        self._catalog, self._fixed, self._key_rows = catalog, fixed, key_rows
        self._itself: dict[str, exp.Table | None] = {}
        self._unproven: set[tuple[tuple[str, str, str], str]] = set()  # the engine could not work these out
        self._given = (policy, user, role, spec, Resolver(policy, spec.default_schema, spec), self.columns, self.view)
        self._columns: dict[str, Columns] = {}
        self._listed: dict[str, tuple[str, ...]] = {}
        self._views: dict[tuple[str, frozenset[str] | None], str] = {}
        self._rewrites: OrderedDict[str, GuardedQuery] = OrderedDict()
        self._lock = threading.Lock()

    def rewrite(self, sql: str) -> GuardedQuery:
        """The guarded form of ``sql``, or :class:`QueryRejected`. Repeats are a dictionary lookup."""
        cached = self._rewrites.get(sql)
        if cached is not None:
            return cached
        guarded = self._rewrite(sql)
        with self._lock:
            self._rewrites[sql] = guarded
            if len(self._rewrites) > CACHE_SIZE:
                self._rewrites.popitem(last=False)
        return guarded

    def _rewrite(self, sql: str) -> GuardedQuery:
        try:
            return self._pipeline(sql)
        except RecursionError:
            raise QueryRejected("the query is nested too deeply to check; simplify it") from None
        except sqlglot.errors.SqlglotError as exc:
            raise QueryRejected(f"the query could not be checked: {str(exc).splitlines()[0][:200]}") from None

    def _pipeline(self, sql: str) -> GuardedQuery:
        context = self.context(sql)
        tree = parse(sql, self.spec)
        for rule in RULES:
            tree = rule(tree, context)
        tables = tuple(dict.fromkeys(context.touched.tables))
        reached = self._reached(tables, context.touched.names, context.touched.whole)
        named = outputs(tree, self.spec.dialect)  # before rendering, which may change the tree it is given
        sql = render(tree, self.spec.dialect, copy=False)
        return GuardedQuery(sql, tables, reached, named, context.touched.noise)

    def context(self, text: str = "") -> Context:
        """A fresh context for one query (``text``): what the rules know, and an empty record of what it touches."""
        return Context(*self._given, touched=Touched(), text=text, itself=self.itself,  # faster than dataclasses.replace
                       key_rows=self.key_rows)

    def _reached(self, tables: tuple[str, ...], names: frozenset[str] | None, whole: set[str]) -> tuple[tuple[str, str], ...]:
        listed = ((t, c) for t in tables for c in self._listed_columns(t))
        return tuple((t, c) for t, c in listed if names is None or t in whole or c in names)

    def _listed_columns(self, table: str) -> tuple[str, ...]:
        """The policy's columns of a table, once per guard (the policy builds them afresh on each call)."""
        if table not in self._listed:
            self._listed[table] = tuple(self.policy.columns(table))
        return self._listed[table]

    def view(self, table: str, names: frozenset[str] | None = None) -> exp.Var:
        """The policy view of a table for this user and role, cut to ``names``; rendered once."""
        types = self.types(table)
        keep = None if names is None else _keep(types, names, self.columns(table).visible)
        key = (table, keep)
        if key not in self._views:
            ref = self.policy.tables[table]
            select = build_view(self.policy, self.role, self._attributes, ref, types, self.spec, keep=keep)
            self._views[key] = render(select, self.spec.dialect)
        return rendered(self._views[key])

    def itself(self, table: str) -> exp.Table | None:
        """The table's own name, when its policy view would be exactly the table, else None. DuckDB plans a
        table's scan better than a view's (a self join of scans becomes one aggregate, TPC-DS Q95), so such a
        table is read bare; the caller still checks that the query names nothing beyond its columns."""
        if table not in self._itself:
            self._itself[table] = self._bare(table)
        found = self._itself[table]
        return found.copy() if found is not None else None

    def _bare(self, table: str) -> exp.Table | None:
        """Only when the catalog proves it the same relation: the table's columns cannot change (a read-only
        file's base table), the policy lists exactly them, in order, the role sees each unmasked, no filter."""
        if self._key(table) not in self._fixed or self.policy.row_filter(self.role, table) is not None:
            return None
        types = self.types(table)
        if list(self._listed_columns(table)) != list(types):
            return None
        if any(self.policy.rule(self.role, table, column).action is not Action.ALLOW for column in types):
            return None
        return physical_table(self.policy.tables[table], self.spec)

    def key_rows(self, table: str, column: str) -> KeyRows | None:
        """How the rows of the policy table ``table`` share the values of ``column``, when the engine proves the
        table fixed and the role sees the column whole (a masked or tokenized value may merge or split keys);
        None otherwise. Its ``most`` bounds the role's view too (a row filter only removes rows); its
        ``values`` counts the role's entities only where no row filter applies."""
        if self._key_rows is None or self._key(table) not in self._fixed:
            return None
        column = column.lower()  # as the catalog and the policy key their columns; a query may write `"CustID"`
        if column not in self.types(table) or self.policy.rule(self.role, table, column).action is not Action.ALLOW:
            return None
        asked = (self._key(table), column)
        if asked in self._unproven:
            return None
        try:
            return self._key_rows(*asked)
        except (EngineError, LimitExceeded):  # its GROUP BY can need more than the query (memory_limit): count exactly
            self._unproven.add(asked)
            return None

    def _key(self, table: str) -> tuple[str, str, str]:
        ref = self.policy.tables[table]
        return ref.source.lower(), (ref.schema or self.spec.default_schema).lower(), ref.name.lower()

    def types(self, table: str) -> dict[str, str]:
        ref = self.policy.tables[table]
        key = self._key(table)
        if key not in self._catalog:
            raise EngineError(f"table {table} is in the policy but not in source `{ref.source}`; run `saferoom lint`")
        return self._catalog[key]

    def columns(self, table: str) -> Columns:
        """What this role's view of a table shows, and what it hides; worked out once."""
        if table not in self._columns:
            self._columns[table] = _columns(self.policy, self.role, table, self.types(table))
        return self._columns[table]


def _columns(policy: Policy, role: str, table: str, types: ColumnTypes) -> Columns:
    """Denied columns are hidden with their rule, to be explained: those in the database, and those the policy
    declares that the database no longer has (a column a split removed). Unclassified ones are not listed at
    all, so a query naming one fails exactly as for a column that does not exist (its existence is not disclosed)."""
    listed = policy.columns(table)
    typed = visible_columns(policy, role, table, types)
    shown = [rule for rule, _ in typed]
    visible = frozenset(rule.column for rule in shown)
    rules = (policy.rule(role, table, c) for c in listed if c not in visible)
    hidden = {r.column.lower(): Hidden(table, r.column, r) for r in rules if r.action is Action.DENY}
    tokenized = frozenset(r.column.lower() for r in shown if r.action is Action.TOKENIZE)
    integers = frozenset(r.column.lower() for r, kind in typed if r.action is Action.ALLOW and kind.upper() in INTEGERS)
    return Columns(visible, hidden, tokenized, integers)


def _keep(types: dict[str, str], names: frozenset[str], visible: frozenset[str]) -> frozenset[str]:
    """The visible columns a query names; at least one, since a view cannot be empty. Only visible columns
    count: a view cut to a hidden column would fail otherwise than one cut for a name that does not exist."""
    keep = frozenset(c for c in names & visible if c in types)  # sets meet faster than every column is listed
    return keep or frozenset(([c for c in types if c in visible] or list(types))[:1])
