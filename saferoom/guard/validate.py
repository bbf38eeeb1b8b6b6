"""First rules of the guard: one read-only statement, built only from allowed parts.

Every node of the parsed tree must be an allowed kind for the engine: query
structure, or a function on the engine's allowlist. Anything else — DML and
DDL hidden in a CTE, ``SELECT ... INTO``, ``FOR UPDATE``, table functions,
file readers, settings, variables, parameters — is refused, because it is not
on the list, not because someone remembered to forbid it.
"""

from __future__ import annotations

import re

import sqlglot
from sqlglot import exp

from saferoom.engines import spec_for
from saferoom.engines.base import EngineSpec
from saferoom.errors import QueryRejected
from saferoom.policy.filters import bind_filter, placeholders

_WORD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
QUERY_ROOTS = (exp.Select, exp.SetOperation, exp.Values, exp.Subquery)
RESERVED_PREFIX = "__saferoom"
TABLE_ARGS = frozenset({"this", "db", "catalog", "alias"})


def parse(sql: str, spec: EngineSpec) -> exp.Expression:
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


def check_statement(tree: exp.Expression, spec: EngineSpec) -> exp.Expression:
    if not isinstance(tree, QUERY_ROOTS):
        kind = tree.key.upper() if not isinstance(tree, exp.Command) else str(tree.this).upper()
        raise QueryRejected(f"{kind} statements are not allowed; saferoom runs read-only queries (SELECT, WITH, VALUES)")
    return tree


def check_nodes(tree: exp.Expression, spec: EngineSpec) -> exp.Expression:
    """Refuse any node that is not query structure or an allowlisted function."""
    for node in tree.walk():
        name = type(node).__name__
        if name == "Anonymous":
            if node.name.upper() not in spec.anonymous_functions:
                raise QueryRejected(f"function {node.name}() is not on saferoom's allowlist for {spec.name}")
        elif name not in spec.allowed_nodes:
            raise QueryRejected(_refusal(node))
        elif isinstance(node, exp.Identifier) and node.name.lower().startswith(RESERVED_PREFIX):
            raise QueryRejected(f"names starting with {RESERVED_PREFIX} are reserved for saferoom")
        elif isinstance(node, exp.Table):
            _check_table(node)
        elif isinstance(node, exp.Var) and not _WORD.match(node.name):
            raise QueryRejected(f"`{node.name[:40]}` is not allowed here")  # Var is emitted verbatim
    return tree


def _check_table(table: exp.Table) -> None:
    extra = {k for k, v in table.args.items() if v not in (None, [], False)} - TABLE_ARGS
    if not isinstance(table.this, exp.Identifier):
        raise QueryRejected("table functions are not allowed in FROM; query the policy's tables by name")
    if extra:
        raise QueryRejected(f"table modifiers ({', '.join(sorted(extra))}) are not allowed on `{table.name}`")


def _refusal(node: exp.Expression) -> str:
    if isinstance(node, exp.Func):
        return f"function {node.sql_name().lower()}() is not on saferoom's allowlist"
    if isinstance(node, (exp.Placeholder, exp.Parameter, exp.SessionParameter)):
        return "parameters and session variables are not allowed; write values into the query"
    if isinstance(node, exp.Lock):
        return "locking clauses (FOR UPDATE/SHARE) are not allowed; saferoom is read-only"
    if isinstance(node, exp.Into):
        return "SELECT ... INTO is not allowed; saferoom is read-only"
    return f"SQL construct `{node.key.upper()}` is not allowed by saferoom's guard"


def check_filter(predicate: exp.Expression, dialect: str) -> None:
    """Row filters in the policy obey the same allowlist as queries."""
    spec = spec_for(dialect)
    bound = bind_filter(predicate, {name: "" for name in placeholders(predicate)})
    check_nodes(exp.select("1").where(bound), spec)
    if any(isinstance(n, (exp.Select, exp.Table)) for n in predicate.walk()):
        raise QueryRejected("a row filter may not contain subqueries; write a predicate over the table's own columns")


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:300]
