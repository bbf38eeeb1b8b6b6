"""The output columns a query names, and the column names each one's expression reads, for its decision.

Worked out from the tree, without the engine, so that the gateway can record each output column's sources
before the query runs. A ``*`` reads any column in reach (``None``); a UNION's column reads what its
branches read at the same position.

>>> import sqlglot
>>> outputs(sqlglot.parse_one("select name, upper(zip) as z, count(*) from customers"), "duckdb")
(('name', ('name',)), ('z', ('zip',)), ('COUNT(*)', ()))
>>> outputs(sqlglot.parse_one("select c.* from cards c union all select card_id, pan from old_cards"), "duckdb")
(('c.*', None),)
>>> outputs(sqlglot.parse_one("select card_id from cards union select customer_id from orders"), "duckdb")
(('card_id', ('card_id', 'customer_id')),)
"""

from __future__ import annotations

from sqlglot import exp

NAME_CHARS = 200  # an unnamed expression is named by its text, cut: a name, not a copy of the query

Outputs = tuple[tuple[str, tuple[str, ...] | None], ...]


def outputs(tree: exp.Expr, dialect: str) -> Outputs:
    """Each output column's name and the column names it reads, in the order of the select list."""
    branches = _selects(tree)
    if not branches:
        return ()
    return tuple((_name(p, dialect), _reads([b.expressions[i] for b in branches if i < len(b.expressions)]))
                 for i, p in enumerate(branches[0].expressions))


def first_select(tree: exp.Expr) -> exp.Select | None:
    """The SELECT whose list names the result's columns: the query's own, or a set operation's first branch."""
    branches = _selects(tree)
    return branches[0] if branches else None


def _selects(tree: exp.Expr) -> list[exp.Select]:
    """The SELECTs whose lists make the result's columns: one, or each branch of a set operation."""
    if isinstance(tree, exp.SetOperation):
        return _selects(tree.left) + _selects(tree.right)
    if isinstance(tree, exp.Subquery):
        return _selects(tree.this)
    return [tree] if isinstance(tree, exp.Select) else []


def _name(projection: exp.Expr, dialect: str) -> str:
    if projection.alias:
        return projection.alias
    named = isinstance(projection, exp.Column) and not _is_star(projection)
    return projection.name if named else projection.sql(dialect)[:NAME_CHARS]


def _reads(projections: list[exp.Expr]) -> tuple[str, ...] | None:
    if any(_is_star(p) for p in projections):
        return None
    return tuple(dict.fromkeys(c.name.lower() for p in projections for c in p.find_all(exp.Column)))


def _is_star(projection: exp.Expr) -> bool:
    """``*``, ``t.*`` and DuckDB's ``COLUMNS(…)``: columns chosen by the engine, not named in the text."""
    if isinstance(projection, exp.Star | exp.Columns):
        return True
    if isinstance(projection, exp.Column) and isinstance(projection.this, exp.Star):
        return True
    return any(isinstance(n, exp.Columns) for n in projection.walk())
