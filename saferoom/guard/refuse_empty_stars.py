"""A rule of the guard: ``*`` over a table of which the role sees no column is refused, saying so; so is the
table used as a value (``select t from t``), which is a struct of the same columns.

Such a table's policy view still has to be valid SQL, so it holds one placeholder column of NULLs
(:data:`saferoom.guard.views.INNER_ALIAS` ``_none``). A query that names no column of the table
(``count(*)``, a join used only to filter) reads nothing through it and is left alone;
but ``*``, ``t.*`` or ``t`` would show the placeholder as if it were data, so it is refused here instead,
with the roles that may see some of the table. Only denied columns are named to find those roles:
an unclassified column is not disclosed.

>>> import sqlglot
>>> from saferoom.guard.context import example
>>> context = example()
>>> from saferoom.guard.resolve_tables import resolve_tables
>>> refuse_empty_stars(resolve_tables(sqlglot.parse_one("select * from cards"), context), context).sql()
'SELECT * FROM cards'
"""

from __future__ import annotations

from collections.abc import Iterator

from sqlglot import exp

from saferoom.errors import QueryRejected
from saferoom.guard.context import Context
from saferoom.guard.resolve_tables import POLICY_TABLE


def refuse_empty_stars(expression: exp.Expr, context: Context) -> exp.Expr:
    empty = {table for table in context.touched.tables if not context.columns(table).visible}
    if not empty:
        return expression  # the common case: the role sees some column of every table it reads
    for select in expression.find_all(exp.Select):
        for table, written in (*_starred(select), *_as_values(select)):
            if table in empty:
                raise _refusal(context, table, written)
    return expression


def _starred(select: exp.Select) -> Iterator[tuple[str, str]]:
    """The policy tables a SELECT's ``*`` or ``t.*`` expands, each with how the query wrote it; a subquery in FROM is
    its own SELECT, checked on its own."""
    sources = _sources(select)
    for projection in select.expressions:
        if isinstance(projection, exp.Star):
            yield from ((table, "*") for table in sources.values())
        elif isinstance(projection, exp.Column) and isinstance(projection.this, exp.Star):
            found = sources.get(projection.table.lower())
            if found is not None:
                yield found, f"{projection.table}.*"


def _as_values(select: exp.Select) -> Iterator[tuple[str, str]]:
    """The policy tables a SELECT uses as a value (``select t from t``: a struct of every column of its view)."""
    sources = _sources(select)
    for column in select.find_all(exp.Column):
        if not column.table and isinstance(column.this, exp.Identifier) and column.name.lower() in sources:
            yield sources[column.name.lower()], column.name


def _sources(select: exp.Select) -> dict[str, str]:
    """The policy tables a SELECT reads directly (FROM and JOIN), by the name the query calls them."""
    from_ = select.args.get("from_")
    items = [from_.this] if from_ is not None else []
    items += [join.this for join in select.args.get("joins") or []]
    return {t.alias_or_name.lower(): t.meta[POLICY_TABLE] for t in items if isinstance(t, exp.Table) and POLICY_TABLE in t.meta}


def _refusal(context: Context, table: str, written: str) -> QueryRejected:
    hidden = context.columns(table).hidden.values()
    seeing = dict.fromkeys(r for h in hidden for r, _ in context.policy.roles_seeing(table, h.column))
    who = ", ".join(seeing) or "no role"
    return QueryRejected(
        f"role `{context.role}` sees no column of {table}: each is denied to it or not classified, so `{written}` has "
        f"nothing to show. Roles that may see some of its columns: {who}. Leave `{written}` out (counting its rows "
        f"still works), or ask the security team for a role that includes it.",
        allowed_roles=list(seeing),
    )
