"""A rule of the guard: ``prod.main.cards.pan`` names the view aliased ``cards``.

A policy table is replaced by its view under the table's bare name, so a
column qualified with source and schema loses them; any other qualified name
(a struct field, say) is left as written.

>>> import sqlglot
>>> from saferoom.guard.context import example
>>> context = example()
>>> unqualify_columns(sqlglot.parse_one("select prod.main.cards.card_id, s.field.leaf from prod.main.cards"), context).sql()
'SELECT cards.card_id, s.field.leaf FROM prod.main.cards'
"""

from __future__ import annotations

from sqlglot import exp

from saferoom.guard.context import Context, nodes_of


def unqualify_columns(expression: exp.Expr, context: Context) -> exp.Expr:
    for column in nodes_of(expression, context, exp.Column):
        if column.args.get("db") and context.resolver.names_table(column):
            column.set("catalog", None)
            column.set("db", None)
    return expression
