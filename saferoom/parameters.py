"""Query parameters, bound as literals into the statement's tree: a value can never change its shape.

The statement is parsed first; each placeholder (``:name`` for a mapping, ``$1``, ``$2`` … for a sequence) is
then replaced by a literal node and the tree rendered again. A value is never pasted into the text, so a value
like ``x' or 1=1 --`` stays one string literal, and a value that looks like a column name stays a string.

>>> bind("select * from orders where region = :region", {"region": "x' or 1=1 --"})
"SELECT * FROM orders WHERE region = 'x'' or 1=1 --'"
>>> bind("select * from orders where amount > $1 limit $2", [10.5, 3])
'SELECT * FROM orders WHERE amount > CAST(10.5 AS DOUBLE) LIMIT 3'
"""

from __future__ import annotations

import datetime
import decimal
import math
from collections.abc import Iterator, Mapping, Sequence

import sqlglot
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.tokenizer_core import Token, TokenType

from saferoom.errors import UsageError

Parameters = Mapping[str, object] | Sequence[object]


def bind(sql: str, parameters: Parameters | None, dialect: str = "duckdb") -> str:
    """``sql`` with its placeholders replaced by ``parameters`` as literals; unchanged when there are none."""
    if parameters is None:
        return sql
    try:
        reader = Dialect.get_or_raise(dialect)
        statements = reader.parser().parse(list(_named_as_parameters(reader.tokenize(sql))), sql)
    except sqlglot.errors.SqlglotError:
        raise UsageError("the query is not valid SQL, so its parameters cannot be bound; correct it and send it "
                         "again") from None
    if len(statements) != 1 or statements[0] is None:
        raise UsageError(f"send exactly one statement per query (got {len(statements)})")
    tree = statements[0]
    if isinstance(parameters, Mapping):
        bound = _bind_named(tree, parameters)
    else:
        bound = _bind_numbered(tree, parameters)
    return bound.sql(dialect=dialect)


# tokens after which a colon is part of an expression (a slice `a[1:2]` or `a[:n]`, a path `v:field`)
_NOT_BEFORE_A_PLACEHOLDER = {TokenType.VAR, TokenType.NUMBER, TokenType.STRING, TokenType.IDENTIFIER, TokenType.R_PAREN,
                             TokenType.L_BRACKET, TokenType.R_BRACKET}


def _named_as_parameters(tokens: list[Token]) -> Iterator[Token]:
    """``:name`` read as the dialect's own parameter (``$name``): DuckDB reads ``select :v`` as a prefix alias.

    Tokens, not text, are rewritten: a colon directly followed by a name, after no operand."""
    previous: Token | None = None
    at = 0
    while at < len(tokens):
        token, following = tokens[at], tokens[at + 1] if at + 1 < len(tokens) else None
        if _is_named_placeholder(previous, token, following):
            assert following is not None
            yield Token(TokenType.PARAMETER, "$", token.line, token.col, token.start, token.end)
            yield following
            previous, at = following, at + 2
            continue
        yield token
        previous, at = token, at + 1


def _is_named_placeholder(previous: Token | None, token: Token, following: Token | None) -> bool:
    return (token.token_type == TokenType.COLON and following is not None and following.start == token.end + 1
            and following.token_type in (TokenType.VAR, TokenType.NUMBER)
            and (following.text.isidentifier() or following.text.isdigit())
            and (previous is None or previous.token_type not in _NOT_BEFORE_A_PLACEHOLDER))


def _placeholders(tree: exp.Expr) -> list[exp.Placeholder | exp.Parameter]:
    """``:name`` and ``$1`` (a Placeholder in DuckDB's reading, a Parameter in PostgreSQL's), and ``?``."""
    found = tree.find_all(exp.Placeholder, exp.Parameter)
    return [p for p in found if isinstance(p, exp.Placeholder | exp.Parameter) and not isinstance(p.parent, exp.Parameter)]


def _bind_named(tree: exp.Expr, parameters: Mapping[str, object]) -> exp.Expr:
    for placeholder in _placeholders(tree):
        name = _name(placeholder)
        if name not in parameters:
            raise UsageError(f"no value for the parameter `:{name}`; pass it in the parameters")
        placeholder.replace(literal(parameters[name]))
    return tree


def _bind_numbered(tree: exp.Expr, parameters: Sequence[object]) -> exp.Expr:
    if isinstance(parameters, str | bytes):
        raise UsageError("parameters must be a sequence or a mapping of values, not one string")
    for placeholder in _placeholders(tree):
        name = _name(placeholder)
        if not name.isdigit() or not 1 <= int(name) <= len(parameters):
            raise UsageError(f"the parameters are a sequence of {len(parameters)}, so placeholders are `$1` to "
                             f"`${len(parameters)}`, not `{name}`; or pass a mapping for `:name`")
        placeholder.replace(literal(parameters[int(name) - 1]))
    return tree


def _name(placeholder: exp.Placeholder | exp.Parameter) -> str:
    # `?` has no name, and counting them would rely on the tree's order, which is not the text's
    if not placeholder.this:
        raise UsageError("`?` placeholders are not supported: write `:name` with a mapping of values, or `$1`, "
                         "`$2` … with a sequence")
    return placeholder.name if isinstance(placeholder, exp.Parameter) else str(placeholder.this)


def literal(value: object) -> exp.Expr:
    """A value as a SQL node: NULL, a boolean, a number, a string, or a typed date and time string."""
    if value is None:
        return exp.Null()
    if isinstance(value, bool):
        return exp.Boolean(this=value)
    if isinstance(value, int | float | decimal.Decimal):
        return _number(value)
    if isinstance(value, str):
        return exp.Literal.string(value)
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return _temporal(value)
    raise UsageError(f"a parameter of type {type(value).__name__} cannot be bound; pass None, a bool, a number, "
                     "a string, a date, a time or a datetime")


def _number(value: int | float | decimal.Decimal) -> exp.Expr:
    # only finite numbers have a literal; `nan` or `inf` written out would read as a column name
    if isinstance(value, float | decimal.Decimal) and not math.isfinite(value):
        raise UsageError(f"the parameter {value} is not a finite number; compare with isnan() or a range instead")
    if isinstance(value, float):  # a double stays a double (DuckDB reads a bare 10.5 as a decimal)
        return exp.Cast(this=exp.Literal.number(repr(value)), to=exp.DataType(this=exp.DataType.Type.DOUBLE))
    return exp.Literal.number(format(value, "f") if isinstance(value, decimal.Decimal) else str(value))


def _temporal(value: datetime.datetime | datetime.date | datetime.time) -> exp.Expr:
    if isinstance(value, datetime.datetime):
        kind = exp.DataType.Type.TIMESTAMPTZ if value.tzinfo else exp.DataType.Type.TIMESTAMP
    elif isinstance(value, datetime.date):
        kind = exp.DataType.Type.DATE
    else:
        kind = exp.DataType.Type.TIME
    return exp.Cast(this=exp.Literal.string(value.isoformat()), to=exp.DataType(this=kind))
