"""A rule of the guard: every table a query names is a CTE in scope or exactly one policy table.

A name that a visible CTE defines refers to that CTE; every other table
reference must resolve to exactly one table in the policy, or the query is
refused. Each policy table is marked with its key (in the node's ``meta``)
for the rules after this one, and recorded in ``context.touched``.

>>> import sqlglot
>>> from saferoom.guard.context import example
>>> context = example()
>>> tree = resolve_tables(sqlglot.parse_one("with c as (select * from prod.cards) select * from c, cards"), context)
>>> [(t.sql(), t.meta.get(POLICY_TABLE)) for t in tree.find_all(sqlglot.exp.Table)]
[('c', None), ('cards', 'prod.cards'), ('prod.cards', 'prod.cards')]
>>> resolve_tables(sqlglot.parse_one("select * from crads"), context)
Traceback (most recent call last):
saferoom.errors.QueryRejected: unknown table `crads`. Did you mean `cards`? Run `saferoom tables` to list what you can query.
"""

from __future__ import annotations

from sqlglot import exp

from saferoom.guard.context import Context, nodes_of

POLICY_TABLE = "saferoom_table"  # the meta key that marks a table node as a policy table


def resolve_tables(expression: exp.Expr, context: Context) -> exp.Expr:
    # The tables are found by sqlglot's own walk and each climbs to the root for the CTE names in its reach,
    # rather than by recursing over every node in Python: on long queries that recursion cost as much as
    # parsing. They are resolved in the order a depth-first visit with each WITH first meets them, so the
    # tables recorded, and the first unknown name refused, are those of the query as written.
    found = [(_order(table, expression), table) for table in nodes_of(expression, context, exp.Table) if _outermost(table, expression)]
    for _, table in sorted(found, key=lambda pair: pair[0]):
        _resolve(table, _ctes(table, expression), context)
    return expression


def _outermost(table: exp.Table, root: exp.Expr) -> bool:
    """Not inside another table node (a generator's arguments, say), which is checked as a whole."""
    parent = table.parent
    while parent is not None and parent is not root:
        if isinstance(parent, exp.Table):
            return False
        parent = parent.parent
    return True


def _order(node: exp.Expr, root: exp.Expr) -> tuple[tuple[int, int], ...]:
    """Where a depth-first visit that takes each WITH before the rest of its node meets ``node``."""
    steps = []
    while node is not root and node.parent is not None:
        parent, key = node.parent, node.arg_key
        steps.append((-1 if key == "with_" else list(parent.args).index(key or ""), node.index or 0))
        node = parent
    return tuple(reversed(steps))


def _ctes(node: exp.Expr, root: exp.Expr) -> frozenset[str]:
    """The CTE names a table reference can mean: all of each WITH around it, and of a WITH whose CTE holds it
    those defined before that CTE (and that CTE itself, when RECURSIVE)."""
    names: set[str] = set()
    path: list[exp.Expr] = [node]
    while node is not root and node.parent is not None:
        node = node.parent
        with_ = node.args.get("with_")
        if isinstance(with_, exp.With):
            names |= _defined(with_, path[-2] if len(path) > 1 and path[-1] is with_ else None)
        path.append(node)
    return frozenset(names)


def _defined(with_: exp.With, within: exp.Expr | None) -> set[str]:
    """The names ``with_`` defines that a reference inside CTE ``within`` (None: after the WITH) can mean."""
    ctes = with_.expressions
    if within is None or not any(cte is within for cte in ctes):
        return {cte.alias_or_name.lower() for cte in ctes}
    index = next(i for i, cte in enumerate(ctes) if cte is within)
    reach = index + 1 if with_.args.get("recursive") else index
    return {cte.alias_or_name.lower() for cte in ctes[:reach]}


def _resolve(table: exp.Table, ctes: frozenset[str], context: Context) -> None:
    if not isinstance(table.this, exp.Identifier):
        return  # a generator with literal arguments (check_nodes allows no other table function)
    if not table.args.get("db") and not table.args.get("catalog") and table.name.lower() in ctes:
        return
    key = context.resolver.resolve(table)
    table.meta[POLICY_TABLE] = key
    context.touched.tables.append(key)
