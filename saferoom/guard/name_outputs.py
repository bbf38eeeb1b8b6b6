"""A rule of the guard: an unnamed output column that holds a subquery is named by the query as written.

An engine names an unnamed expression by its own text. After the views are put in, a subquery's text is
the rewritten one: the physical table names, the bound row filter and the masking functions would come
back as the column's name. So such a column is named here, before the views go in, by the expression as
the query wrote it (as the decision record names it too). Other unnamed columns keep the engine's names:
the rewrite does not touch their text.

>>> import sqlglot
>>> from saferoom.guard.context import example
>>> name_outputs(sqlglot.parse_one("select (select max(amount) from orders), count(*) from cards"), example()).sql()
'SELECT (SELECT MAX(amount) FROM orders) AS "(SELECT MAX(amount) FROM orders)", COUNT(*) FROM cards'
"""

from __future__ import annotations

from sqlglot import exp

from saferoom.guard.context import Context, changed
from saferoom.guard.outputs import NAME_CHARS, first_select


def name_outputs(expression: exp.Expr, context: Context) -> exp.Expr:
    select = first_select(expression)
    if select is None:
        return expression
    for projection in list(select.expressions):
        if not projection.alias and _holds_a_query(projection):
            name = projection.sql(context.spec.dialect)[:NAME_CHARS]
            projection.replace(exp.alias_(projection.copy(), exp.to_identifier(name, quoted=True)))
            changed(context)
    return expression


def _holds_a_query(projection: exp.Expr) -> bool:
    return any(isinstance(node, exp.Query) for node in projection.walk() if node is not projection) or isinstance(projection, exp.Subquery)
