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

from saferoom.guard.context import Context

POLICY_TABLE = "saferoom_table"  # the meta key that marks a table node as a policy table


def resolve_tables(expression: exp.Expr, context: Context) -> exp.Expr:
    _visit(expression, frozenset(), context)
    return expression


def _visit(node: exp.Expr, ctes: frozenset[str], context: Context) -> None:
    with_ = node.args.get("with_")
    if isinstance(with_, exp.With):
        ctes = _visit_ctes(with_, ctes, context)
    for child in node.iter_expressions():
        if child is with_:
            continue
        if isinstance(child, exp.Table):
            _resolve(child, ctes, context)
        else:
            _visit(child, ctes, context)


def _visit_ctes(with_: exp.With, ctes: frozenset[str], context: Context) -> frozenset[str]:
    recursive = bool(with_.args.get("recursive"))
    for cte in with_.expressions:
        name = cte.alias_or_name.lower()
        _visit(cte.this, ctes | {name} if recursive else ctes, context)
        ctes = ctes | {name}
    return ctes


def _resolve(table: exp.Table, ctes: frozenset[str], context: Context) -> None:
    if not isinstance(table.this, exp.Identifier):
        return  # a generator with literal arguments (check_nodes allows no other table function)
    if not table.args.get("db") and not table.args.get("catalog") and table.name.lower() in ctes:
        return
    key = context.resolver.resolve(table)
    table.meta[POLICY_TABLE] = key
    context.touched.tables.append(key)
