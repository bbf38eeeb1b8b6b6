"""Parse a query's text: exactly one statement, or an error that says what is wrong with it.

>>> from saferoom.engines.duckdb import DUCKDB
>>> parse("select 1; select 2", DUCKDB)
Traceback (most recent call last):
saferoom.errors.QueryRejected: send exactly one statement per query (got 2)
>>> parse("selec 1", DUCKDB)
Traceback (most recent call last):
saferoom.errors.UsageError: the query is not valid SQL: Invalid expression / Unexpected token at line 1, column 7. Correct it and send it again
"""

from __future__ import annotations

import re

import sqlglot
from sqlglot import exp

from saferoom.engines.base import EngineSpec
from saferoom.errors import QueryRejected, UsageError
from saferoom.guard.render import dialect_of


def parse(sql: str, spec: EngineSpec) -> exp.Expr:
    """Parse exactly one statement. SQL that is not SQL is the caller's mistake (:class:`UsageError`);
    SQL the guard will not check (too deep, several statements) is refused."""
    if not isinstance(sql, str) or not sql.strip():
        raise UsageError("the query is empty; write one SELECT statement")
    try:
        statements = [s for s in sqlglot.parse(sql, read=dialect_of(spec.dialect)) if s is not None]
    except sqlglot.errors.SqlglotError as exc:
        raise UsageError(f"the query is not valid SQL: {_syntax(exc)}. Correct it and send it again") from None
    except RecursionError:
        raise QueryRejected("the query is nested too deeply to check") from None
    if len(statements) != 1:
        raise QueryRejected(f"send exactly one statement per query (got {len(statements)})")
    return statements[0]


def _syntax(exc: sqlglot.errors.SqlglotError) -> str:
    """What is wrong and where, from sqlglot's structured errors (its message carries terminal colour codes).

    The query's own text is not quoted back: messages reach the audit log and the web page, and a line and
    column are enough to find the mistake."""
    if isinstance(exc, sqlglot.errors.TokenError):
        return "it cannot be split into words (an unclosed quote or comment?)"
    errors = getattr(exc, "errors", None)
    if not errors:
        return "it does not parse"
    first = errors[0]
    return f"{_plain(str(first.get('description')))} at line {first.get('line')}, column {first.get('col')}"


def _plain(description: str) -> str:
    """sqlglot's description without the parser's internals (token and class reprs)."""
    description = re.sub(r" but got <Token[^>]*>", "", description)
    return re.sub(r"<class '[\w.]*\.(\w+)'>", r"\1", description)[:200]
