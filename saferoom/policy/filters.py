"""Row filters: SQL predicates over a raw table with ``{user.<attribute>}`` placeholders.

A filter may read other policy tables in subqueries (see :mod:`saferoom.policy.filter_reads`).
The policy checks a filter's shape here, knowing no engine; which functions
a filter may call depends on the engine and is checked by the guard.

A placeholder is parsed as a marker column and later replaced by a literal node
holding the user's attribute, so an attribute value can never change the shape
of the SQL (no string pasting, no injection).
"""

from __future__ import annotations

import re

import sqlglot
from sqlglot import exp

from saferoom.policy.model import Attribute

_PLACEHOLDER = re.compile(r"\{\s*user\.([A-Za-z_][A-Za-z0-9_]*)\s*\}")
_MARKER = "__saferoom_attr__"


def parse_filter(text: str, dialect: str) -> exp.Expr:
    """Parse a row filter; ``ValueError`` when it is not a single SQL predicate."""
    if "{" in _PLACEHOLDER.sub("", text):
        raise ValueError("placeholders are written {user.<attribute>}, e.g. region = {user.region}")
    marked = _PLACEHOLDER.sub(_MARKER + r"\1", text)
    try:
        expressions = sqlglot.parse(f"SELECT 1 WHERE {marked}", read=dialect)
    except sqlglot.errors.SqlglotError as exc:
        raise ValueError(_sql_problem(text, exc)) from None
    select = expressions[0] if len(expressions) == 1 else None
    if not isinstance(select, exp.Select) or {k for k, v in select.args.items() if v} != {"expressions", "where"}:
        raise ValueError("a row filter must be one SQL predicate, like region = {user.region}")
    predicate: exp.Expr = select.args["where"].this
    if any(isinstance(n, exp.Table) and n.find_ancestor(exp.Query) is select for n in predicate.walk()):
        raise ValueError("a row filter reads other tables only in a subquery, like "
                         "customer_id IN (SELECT customer_id FROM prod.customers WHERE region = {user.region})")
    return predicate


def placeholders(predicate: exp.Expr) -> set[str]:
    return {c.name[len(_MARKER):] for c in predicate.find_all(exp.Column) if c.name.startswith(_MARKER)}


def raw_columns(predicate: exp.Expr) -> set[str]:
    return {c.name.lower() for c in predicate.find_all(exp.Column) if not c.name.startswith(_MARKER)}


def bind_filter(predicate: exp.Expr, attributes: dict[str, Attribute]) -> exp.Expr:
    """Replace placeholders by literals; a user without a needed attribute gets FALSE."""
    if any(name not in attributes for name in placeholders(predicate)):
        return exp.false()

    def bind(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Column) and node.name.startswith(_MARKER):
            return literal(attributes[node.name[len(_MARKER):]])
        return node

    return predicate.copy().transform(bind)


def literal(value: Attribute) -> exp.Expr:
    if isinstance(value, list):
        return exp.Tuple(expressions=[literal(v) for v in value])
    if isinstance(value, bool):
        return exp.Boolean(this=value)
    if isinstance(value, (int, float)):
        return exp.Literal.number(value)
    return exp.Literal.string(str(value))


def _sql_problem(text: str, exc: sqlglot.errors.SqlglotError) -> str:
    """sqlglot's parser states (``Required keyword: 'expression' missing for <class …EQ>``) in SQL terms."""
    said = str(exc)
    if isinstance(exc, sqlglot.errors.TokenError):
        return f"the filter `{text}` has a quote that is not closed"
    if "Required keyword" in said:
        return f"the filter `{text}` is not a complete condition; a comparison, AND or OR needs something on both sides"
    if "Expecting )" in said:
        return f"the filter `{text}` opens a parenthesis that it does not close"
    near = _near(exc)
    return f"the filter `{text}` is not valid SQL" + (f" near `{near}`" if near else "")


def _near(exc: sqlglot.errors.SqlglotError) -> str:
    errors = getattr(exc, "errors", None) or [{}]
    return str(errors[0].get("highlight") or "").replace(_MARKER, "user.")
