"""Parse a query's text: exactly one statement, or a refusal.

>>> from saferoom.engines.duckdb import DUCKDB
>>> parse("select 1; select 2", DUCKDB)
Traceback (most recent call last):
saferoom.errors.QueryRejected: send exactly one statement per query (got 2)
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp

from saferoom.engines.base import EngineSpec
from saferoom.errors import QueryRejected


def parse(sql: str, spec: EngineSpec) -> exp.Expr:
    """Parse exactly one statement; anything else is refused."""
    if not isinstance(sql, str) or not sql.strip():
        raise QueryRejected("the query is empty; write one SELECT statement")
    try:
        statements = [s for s in sqlglot.parse(sql, read=spec.dialect) if s is not None]
    except sqlglot.errors.SqlglotError as exc:
        raise QueryRejected(f"the query could not be parsed: {_first_line(exc)}") from None
    except RecursionError:
        raise QueryRejected("the query is nested too deeply to check") from None
    if len(statements) != 1:
        raise QueryRejected(f"send exactly one statement per query (got {len(statements)})")
    return statements[0]


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:300]
