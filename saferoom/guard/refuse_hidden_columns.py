"""A rule of the guard: a column the role may not see is refused by name, with the rule that hides it;
one that no source in reach shows is refused as unknown, with the closest name the role may see.

The policy view is the enforcement: a denied or unclassified column is not in
it, so the engine could never read it. This rule is for the explanation and
the audit record. When a reference can only mean such a column — nothing else
in reach has that name visibly — the query is refused here, before it runs,
naming the column, its tag, the threat and the roles that may see it. Columns
compare by name, case-insensitively, as the engines bind them.

A reference that no source in reach shows at all is refused as an unknown
column. The engine cannot say it better: it sees only the policy view, cut to
the columns the query names, so its own "candidate" would be a wrong guess.
The hint is the closest name the role may see (a visible column, or a name the
query defines); an unclassified column is not in the view and is refused as
one that does not exist, so its existence is not disclosed.

A reference this rule cannot pin down is left to the engine: one inside a
lambda, a struct field (``a.b.c``), a name a select list defines (DuckDB lets
WHERE and ORDER BY use those), a table used as a value, or a name that a
source of unknown shape might supply (renamed columns ``t(a, b)``,
``* REPLACE``, unnamed expressions, table functions).

>>> import sqlglot
>>> from saferoom.guard.context import example
>>> context = example()
>>> from saferoom.guard.resolve_tables import resolve_tables
>>> refuse_hidden_columns(resolve_tables(sqlglot.parse_one("select c.pan from cards c"), context), context)
Traceback (most recent call last):
saferoom.errors.QueryRejected: column `pan` of prod.cards is tagged `pci` (no threat named). Role `analyst` is denied it, so it does not exist in your queries. Roles that may see it: no role. Leave it out, or ask the security team for a role that includes it.
>>> refuse_hidden_columns(resolve_tables(sqlglot.parse_one("select card_id as pan from cards order by pan"), context), context).sql()
'SELECT card_id AS pan FROM cards ORDER BY pan'
>>> refuse_hidden_columns(resolve_tables(sqlglot.parse_one("select crad_id from cards"), context), context)
Traceback (most recent call last):
saferoom.errors.QueryRejected: unknown column `crad_id`. Did you mean `card_id`? Run `saferoom tables` to list the columns you can query.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from sqlglot import exp
from sqlglot.errors import OptimizeError
from sqlglot.optimizer.scope import Scope

from saferoom.errors import QueryRejected, did_you_mean
from saferoom.guard.context import Columns, Context, Hidden, nodes_of, scope_of
from saferoom.guard.outputs import first_select
from saferoom.guard.resolve_tables import POLICY_TABLE
from saferoom.policy import Action, ColumnRule

Source = exp.Table | Scope
T = TypeVar("T")


@dataclass(frozen=True)
class Unknown:
    """A column that no source in reach shows, and the names in reach the role may see, for a hint."""

    written: str
    nearby: frozenset[str]


def refuse_hidden_columns(expression: exp.Expr, context: Context) -> exp.Expr:
    tables = [context.columns(table) for table in context.touched.tables]
    names = frozenset(n for table in tables for n in table.hidden)
    visible = frozenset().union(*(table.visible for table in tables))
    # with no policy table every column name is suspect: `select user` or `current_schema` would otherwise reach
    # the engine, which reads them as its session's functions, past the allowlist
    named, columns = _suspects(nodes_of(expression, context, (exp.Identifier, exp.Column)), names, visible)
    columns = _past_own_aliases(columns, names)
    if not named and not columns:
        return expression  # the common case: every name the query uses is a column it may see
    root = scope_of(expression, context)
    try:
        hit = next(_references(root, names, columns, Shapes(context)), None) if root else None
    except OptimizeError:
        return expression  # e.g. one alias used twice: the engine's own error says it better
    if hit is not None:
        raise refusal(context, hit)
    return expression


def _suspects(nodes: list[exp.Expr], hidden: frozenset[str], visible: frozenset[str]) -> tuple[bool, list[exp.Column]]:
    """Whether the query uses a hidden name anywhere (USING's too), and the columns that are hidden or that no
    policy table it reads shows: the only ones the scopes need to explain. Dispatched on the node's exact class
    (Column's one subclass listed): it runs for every query."""
    named, columns = False, list[exp.Column]()
    for node in nodes:
        kind = type(node)
        if kind is exp.Identifier:
            named = named or node.this.lower() in hidden
        elif kind is exp.Column or kind is exp.Pseudocolumn:
            name = node.this
            if type(name) is exp.Identifier and ((lowered := name.this.lower()) in hidden or lowered not in visible):
                columns.append(node)  # type: ignore[arg-type]  # its class is Column's
    return named, columns


def _past_own_aliases(columns: list[exp.Column], hidden: frozenset[str]) -> list[exp.Column]:
    """Leaves out each unqualified column that names a select alias of its own SELECT (`ORDER BY revenue`), not
    a hidden column: the scopes would pass it as an alias (see _binding), and a query whose only unseen names
    are such aliases, as most long ones, needs no scopes built."""
    aliases: dict[int, set[str]] = {}
    return [c for c in columns if c.args.get("table") or c.name.lower() in hidden or not _own_alias(c, aliases)]


def _own_alias(column: exp.Column, aliases: dict[int, set[str]]) -> bool:
    node = column.parent
    while node is not None and not isinstance(node, exp.Query):
        node = node.parent
    if not isinstance(node, exp.Select):
        return False  # a set operation's ORDER BY, say: left to the scopes
    if id(node) not in aliases:
        aliases[id(node)] = {p.alias.lower() for p in node.expressions if isinstance(p, exp.Alias)}
    return column.name.lower() in aliases[id(node)]


def _unseen(column: exp.Column, visible: frozenset[str]) -> bool:
    """A named column (not ``*``) that no policy table the query reads shows."""
    return isinstance(column.this, exp.Identifier) and column.this.name.lower() not in visible


def _references(root: Scope, names: frozenset[str], suspects: list[exp.Column], shapes: Shapes) -> Iterator[Hidden | Unknown]:
    """Each hidden or unknown column the query provably names, innermost scope first."""
    scopes = list(root.traverse())
    found = _by_scope(scopes, suspects)
    for scope in scopes:
        levels = list(_levels(scope))
        for column in found.get(id(scope), ()):
            if hit := _binding(column, levels, shapes):
                yield hit
        yield from _using(scope, names, shapes)


def _by_scope(scopes: list[Scope], columns: list[exp.Column]) -> dict[int, list[exp.Column]]:
    """Each column under the scope it is in: the nearest enclosing node that is a scope's expression (a column
    in none is put under the outermost scope, the last). Climbing from the few suspect columns spares a walk of
    every scope for all of its columns."""
    expressions = {id(scope.expression): scope for scope in scopes}
    found: dict[int, list[exp.Column]] = {}
    for column in columns:
        node: exp.Expr | None = column.parent
        while node is not None and id(node) not in expressions:
            node = node.parent
        scope = expressions[id(node)] if node is not None else scopes[-1]
        found.setdefault(id(scope), []).append(column)
    return found


def _levels(scope: Scope) -> Iterator[Scope]:
    """A scope and those whose sources its names may also reach (a CTE's body sees no query around it)."""
    current: Scope | None = scope
    while current is not None:
        yield current
        current = None if current.is_cte else current.parent


def _binding(column: exp.Column, levels: list[Scope], shapes: Shapes) -> Hidden | Unknown | None:
    if (pivot := _in_pivot(column)) is not None:
        return _pivoted_column(column, pivot, shapes)
    if column.args.get("db") or column.find_ancestor(exp.Lambda) or _in_star_options(column):
        return None
    name = column.name.lower()
    if column.table:
        return _qualified(column, levels, shapes)
    if any(name in shapes.aliases(level) or name in shapes.sources(level) or shapes.pivoted(level) for level in levels):
        return None  # a select alias, a table used as a value, or a column a PIVOT makes
    seen, hidden = _reach(name, levels, shapes)
    if seen:
        return None
    return hidden or Unknown(column.name, _nearby(levels, shapes))


def _pivoted(scope: Scope) -> bool:
    """The scope reads a PIVOT or UNPIVOT, whose columns sqlglot's scopes do not know."""
    reads = [scope.expression.args.get("from_"), *scope.expression.args.get("joins", [])]
    return any(r is not None and r.find(exp.Pivot) is not None for r in reads)


def _in_pivot(column: exp.Column) -> exp.Pivot | None:
    """The PIVOT whose ON, USING or GROUP BY names ``column``: a column of the pivoted relation, which sqlglot's
    scopes do not bind."""
    parent = column.parent
    while parent is not None and not isinstance(parent, (exp.Select, exp.Subquery, exp.Pivot)):
        parent = parent.parent
    return parent if isinstance(parent, exp.Pivot) else None


def _pivoted_column(column: exp.Column, pivot: exp.Pivot, shapes: Shapes) -> Hidden | None:
    """A denied column of a policy table pivoted by name is explained; any other name is left to the engine,
    which binds it against the pivoted relation (views only)."""
    shape = shapes.of(pivot.this) if isinstance(pivot.this, exp.Table) else None
    return None if shape is None else shape.hidden.get(column.name.lower())


def _qualified(column: exp.Column, levels: list[Scope], shapes: Shapes) -> Hidden | Unknown | None:
    """``q.name`` where ``q`` is a source in reach; if ``q`` may also be a column, it may be a struct field."""
    qualifier, name = column.table.lower(), column.name.lower()
    for level in levels:
        source = shapes.sources(level).get(qualifier)
        if source is not None:
            shape = shapes.of(source)
            if shape is None or name in shape.visible or _reach(qualifier, levels, shapes)[0]:
                return None
            return shape.hidden.get(name) or Unknown(column.name, shape.visible)
    return None


def _nearby(levels: list[Scope], shapes: Shapes) -> frozenset[str]:
    """The names an unqualified column could have meant: what the sources in reach show, and select aliases."""
    nearby: set[str] = set()
    for level in levels:
        nearby |= shapes.aliases(level)
        for source in shapes.sources(level).values():
            shape = shapes.of(source)
            nearby |= shape.visible if shape is not None else set()
    return frozenset(nearby)


def _reach(name: str, levels: list[Scope], shapes: Shapes) -> tuple[bool, Hidden | None]:
    """Whether any source in reach may show ``name``, and the innermost that hides it.

    A subquery in FROM (``LATERAL``) is a source of the scope around it, but not one its own names can reach.
    """
    hidden = None
    for level in levels:
        for source in (s for s in shapes.sources(level).values() if not any(s is inner for inner in levels)):
            shape = shapes.of(source)
            if shape is None or name in shape.visible:
                return True, None
            hidden = hidden or shape.hidden.get(name)
    return False, hidden


def _using(scope: Scope, names: frozenset[str], shapes: Shapes) -> Iterator[Hidden]:
    """``JOIN t USING (c)``: both sides must have ``c``; the joined table and the first FROM item are checked."""
    first = scope.expression.args.get("from_")
    for i, join in enumerate(scope.expression.args.get("joins") or []):
        sides = [join.this, first.this] if i == 0 and first else [join.this]
        used = {u.name.lower() for u in join.args.get("using") or []} & names
        for side, name in ((side, name) for side in sides for name in sorted(used)):
            shape = shapes.of(shapes.sources(scope).get(side.alias_or_name.lower()))
            if shape is not None and name not in shape.visible and name in shape.hidden:
                yield shape.hidden[name]


def _in_star_options(column: exp.Column) -> bool:
    """Inside ``* REPLACE (...)`` or ``* RENAME (...)``; an ``* EXCLUDE`` name must exist, so it is checked."""
    star = column.find_ancestor(exp.Star)
    return star is not None and not (column.parent is star and column.arg_key == "except_")


def _aliases(scope: Scope) -> set[str]:
    """The names a select list defines; a set operation's are its first branch's (its ORDER BY sorts by them)."""
    select = first_select(scope.expression)
    if select is None:
        return set()
    if isinstance(scope.expression, exp.SetOperation):
        return {p.alias_or_name.lower() for p in select.expressions}
    return {p.alias.lower() for p in select.expressions if isinstance(p, exp.Alias)}


def _sources(scope: Scope) -> dict[str, Source]:
    return {name.lower(): source for name, (_, source) in scope.selected_sources.items()}


class Shapes:
    """The columns each source offers, worked out once per query; ``None`` when unknown. Also each scope's
    sources, select aliases and whether it reads a PIVOT, asked for every column in reach: worked out once."""

    def __init__(self, context: Context) -> None:
        self._context = context
        self._scopes: dict[int, Columns | None] = {}
        self._sources: dict[int, dict[str, Source]] = {}
        self._aliases: dict[int, set[str]] = {}
        self._pivoted: dict[int, bool] = {}

    def sources(self, scope: Scope) -> dict[str, Source]:
        return _once(self._sources, scope, _sources)

    def aliases(self, scope: Scope) -> set[str]:
        return _once(self._aliases, scope, _aliases)

    def pivoted(self, scope: Scope) -> bool:
        return _once(self._pivoted, scope, _pivoted)

    def of(self, source: Source | None) -> Columns | None:
        if isinstance(source, exp.Table):
            return self._table(source)
        if source is None:
            return None
        if id(source) not in self._scopes:
            self._scopes[id(source)] = None  # a recursive CTE reads itself: unknown while it is worked out
            self._scopes[id(source)] = self._scope(source)
        return self._scopes[id(source)]

    def _table(self, table: exp.Table) -> Columns | None:
        key, alias = table.meta.get(POLICY_TABLE), table.args.get("alias")
        if key is None or (alias is not None and alias.columns):
            return None  # not a policy table, or its columns renamed
        return self._context.columns(key)

    def _scope(self, scope: Scope) -> Columns | None:
        expression = scope.expression
        alias = expression.parent.args.get("alias") if isinstance(expression.parent, (exp.Subquery, exp.CTE)) else None
        if alias is not None and alias.columns:
            return None
        if isinstance(expression, exp.SetOperation):
            return self.of(scope.set_operation_scopes[0])  # a set operation's columns are named by its first branch
        if not isinstance(expression, exp.Select):
            return None
        return _merge([self._projection(p, scope) for p in expression.expressions])

    def _projection(self, projection: exp.Expr, scope: Scope) -> Columns | None:
        if isinstance(projection, exp.Star):
            plain = not any(projection.args.get(k) for k in ("except_", "replace", "rename", "ilike"))
            return _merge([self.of(s) for s in self.sources(scope).values()]) if plain else None
        if isinstance(projection, exp.Column) and isinstance(projection.this, exp.Star):
            plain = not any(projection.this.args.values())
            return self.of(self.sources(scope).get(projection.table.lower())) if plain else None
        if isinstance(projection, (exp.Alias, exp.Column)):
            return Columns(frozenset({projection.alias_or_name.lower()}), {})
        return None  # the engine names it


def _once(cache: dict[int, T], scope: Scope, work: Callable[[Scope], T]) -> T:
    if id(scope) not in cache:
        cache[id(scope)] = work(scope)
    return cache[id(scope)]


def _merge(shapes: list[Columns | None]) -> Columns | None:
    known = [s for s in shapes if s is not None]
    if len(known) < len(shapes):
        return None
    visible = frozenset().union(*(s.visible for s in known))
    hidden = {n: h for s in reversed(known) for n, h in s.hidden.items() if n not in visible}
    return Columns(visible, hidden)


def refusal(context: Context, hidden: Hidden | Unknown) -> QueryRejected:
    """The policy's explanation of a denied column, or the hint for an unknown one, for the user and the audit record."""
    if isinstance(hidden, Unknown):
        return unknown(hidden)
    assert hidden.rule is not None  # only denied columns are hidden with a rule; unclassified ones are not listed
    return denied(context, hidden.rule)


def unknown(column: Unknown) -> QueryRejected:
    """Worded the same for a column that does not exist and one nobody classified: neither is disclosed."""
    return QueryRejected(f"unknown column `{column.written}`.{did_you_mean(column.written, column.nearby)} "
                         "Run `saferoom tables` to list the columns you can query.")


def roles_and_actions(seeing: Sequence[tuple[str, Action]]) -> str:
    """``investigator (allow), auditor (mask)``: roles to ask for, each with what it gets; or "no role"."""
    return ", ".join(f"{role} ({action.value})" for role, action in seeing) or "no role"


def denied(context: Context, rule: ColumnRule) -> QueryRejected:
    policy = context.policy
    threats = "; ".join(f"{t}: {policy.threat(t)}" for t in rule.threats) or "no threat named"
    seeing = policy.roles_seeing(rule.table, rule.column)
    who = roles_and_actions(seeing)
    return QueryRejected(
        f"column `{rule.column}` of {rule.table} is tagged `{rule.tag}` ({threats}). "
        f"Role `{context.role}` is denied it, so it does not exist in your queries. "
        f"Roles that may see it: {who}. Leave it out, or ask the security team for a role that includes it.",
        column=f"{rule.table}.{rule.column}",
        tag=rule.tag,
        threats=rule.threats,
        allowed_roles=[r for r, _ in seeing],
    )
