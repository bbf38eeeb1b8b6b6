"""A rule of the guard: the statement is a query (SELECT, WITH, VALUES), nothing else.

>>> import sqlglot
>>> from saferoom.guard.context import example
>>> context = example()
>>> check_statement(sqlglot.parse_one("delete from cards"), context)
Traceback (most recent call last):
saferoom.errors.QueryRejected: DELETE statements are not allowed; saferoom runs read-only queries (SELECT, WITH, VALUES)
>>> check_statement(sqlglot.parse_one("with x as (select 1) select * from x"), context).sql()
'WITH x AS (SELECT 1) SELECT * FROM x'
"""

from __future__ import annotations

from sqlglot import exp

from saferoom.errors import QueryRejected
from saferoom.guard.context import Context

QUERY_ROOTS = (exp.Select, exp.SetOperation, exp.Values, exp.Subquery)


def check_statement(expression: exp.Expr, context: Context) -> exp.Expr:
    """Refuse any statement but a query; DML hidden inside one is for :func:`check_nodes` to find."""
    if not isinstance(expression, QUERY_ROOTS):
        kind = expression.key.upper() if not isinstance(expression, exp.Command) else str(expression.this).upper()
        raise QueryRejected(f"{kind} statements are not allowed; saferoom runs read-only queries (SELECT, WITH, VALUES)")
    return expression
