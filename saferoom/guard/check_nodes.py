"""A rule of the guard: a query is built only from allowed parts.

Every node of the parsed tree must be an allowed kind for the engine: query
structure, or a function on the engine's allowlist. Anything else — DML and
DDL hidden in a CTE, ``SELECT ... INTO``, ``FOR UPDATE``, table functions,
file readers, settings, variables, parameters — is refused, because it is not
on the list, not because someone remembered to forbid it.

>>> import sqlglot
>>> from saferoom.guard.context import example
>>> context = example()
>>> check_nodes(sqlglot.parse_one("select * from read_csv('/etc/passwd')", read="duckdb"), context)
Traceback (most recent call last):
saferoom.errors.QueryRejected: table functions are not allowed in FROM; query the policy's tables by name
>>> check_nodes(sqlglot.parse_one("select count(*) from cards", read="duckdb"), context).sql("duckdb")
'SELECT COUNT(*) FROM cards'
"""

from __future__ import annotations

import re
from collections.abc import Callable

from sqlglot import exp

from saferoom.engines import registry
from saferoom.engines.base import EngineSpec
from saferoom.errors import PolicyError, QueryRejected
from saferoom.guard.context import Context
from saferoom.policy import Policy
from saferoom.policy.filters import bind_filter, placeholders

_WORD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED_PREFIX = "__saferoom"
TABLE_ARGS = frozenset({"this", "db", "catalog", "alias", "sample"})
# What a generator's or a PIVOT list's arguments may be built of: values written in the query, nothing read.
LITERAL = (exp.Literal, exp.Null, exp.Boolean, exp.Cast, exp.DataType, exp.DataTypeParam, exp.Interval, exp.Var,
           exp.Neg, exp.Paren, exp.Identifier)


def check_nodes(expression: exp.Expr, context: Context) -> exp.Expr:
    """Refuse any node that is not query structure or an allowlisted function."""
    nodes = list(expression.walk())
    allowed_nodes(expression, context.spec, context.text, nodes)
    context.touched.nodes = (id(expression), nodes)  # for the rules after, until one adds nodes (see nodes_of)
    return expression


def allowed_nodes(tree: exp.Expr, spec: EngineSpec, text: str = "", nodes: list[exp.Expr] | None = None) -> exp.Expr:
    """``text`` is the query as written, to quote a refused function as the user wrote it (sqlglot parses
    ``time_bucket`` into ``DateBin``). ``nodes``: the tree's, when already listed."""
    allowed = spec.allowed_nodes
    for node in tree.walk() if nodes is None else nodes:
        kind = type(node)
        name = kind.__name__
        if name == "Anonymous":
            if node.name.upper() not in spec.anonymous_functions:
                raise QueryRejected(f"function {node.name}() is not on saferoom's allowlist for {spec.name}")
        elif name not in allowed:
            raise QueryRejected(_refusal(node, text))
        elif (check := _CHECKS.get(kind, _UNSEEN)) is _UNSEEN:
            _CHECKS[kind] = check = _check_for(kind)
            if check is not None:
                check(node, text)
        elif check is not None:
            check(node, text)
    return tree


def _check_identifier(node: exp.Expr, text: str) -> None:
    if node.name.lower().startswith(RESERVED_PREFIX):
        raise QueryRejected(f"names starting with {RESERVED_PREFIX} are reserved for saferoom")


def _check_var(node: exp.Expr, text: str) -> None:
    if not _WORD.match(node.name):
        raise QueryRejected(f"`{node.name[:40]}` is not allowed here")  # Var is emitted verbatim


def _check_sample(node: exp.Expr, text: str) -> None:
    if not _literal(node):
        raise QueryRejected("a sample's size and seed must be numbers written in the query")


Check = Callable[[exp.Expr, str], None]
# What each allowed node class needs checked beyond being allowed, by class: most need nothing, and a lookup
# is cheaper than asking each node of a long query what it is an instance of. Worked out on first sight of a
# class, from the same isinstance tests in the same order.
_CHECKS: dict[type, Check | None] = {}


def _unseen(node: exp.Expr, text: str) -> None:
    """Marks a class not yet looked at (never stored in ``_CHECKS``)."""


_UNSEEN: Check = _unseen


def _check_for(kind: type) -> Check | None:
    tests: list[tuple[type | tuple[type, ...], Check]] = [
        (exp.Identifier, _check_identifier), (exp.Table, _check_table), (exp.Var, _check_var),
        ((exp.GenerateSeries, exp.Pivot), _check_form), (exp.TableSample, _check_sample)]
    return next((check for base, check in tests if issubclass(kind, base)), None)


def _check_table(table: exp.Expr, text: str = "") -> None:
    extra = {k for k, v in table.args.items() if v not in (None, [], False)} - TABLE_ARGS
    if not isinstance(table.this, (exp.Identifier, exp.GenerateSeries)):
        raise QueryRejected("table functions are not allowed in FROM; query the policy's tables by name")
    if extra:
        raise QueryRejected(f"table modifiers ({', '.join(sorted(extra))}) are not allowed on `{table.name}`")


def _check_form(node: exp.Expr, text: str) -> None:
    """A generator stands in FROM with literal arguments (a calendar spine, a counter): it reads no column,
    and its size is written in the query. A PIVOT lists the values it spreads into columns, so its result's
    shape is the query's, not the data's."""
    if isinstance(node, exp.GenerateSeries):
        if not isinstance(node.parent, exp.Table) or not _literal(node):
            raise QueryRejected(f"{_written(node, text)}() may only stand in FROM with literal arguments, as in "
                                "`FROM generate_series(DATE '2024-01-01', DATE '2024-12-31', INTERVAL 1 DAY) AS d(day)`")
    elif not node.args.get("unpivot") and not all(isinstance(e, exp.In) and _literal_list(e) for e in node.expressions):
        raise QueryRejected("PIVOT needs the values it turns into columns listed, as in `PIVOT … ON year IN (2023, 2024)`")


def _literal(node: exp.Expr) -> bool:
    return all(isinstance(child, LITERAL) for child in node.iter_expressions() for child in child.walk())


def _literal_list(clause: exp.In) -> bool:
    return bool(clause.expressions) and all(_literal(exp.Tuple(expressions=[e.copy()])) for e in clause.expressions)


def _written(node: exp.Expr, text: str) -> str:
    """A function's name as the query wrote it, from the parser's positions; sqlglot's name without them."""
    start, end = node.meta.get("start"), node.meta.get("end")
    if isinstance(start, int) and isinstance(end, int) and _WORD.match(text[start:end + 1]):
        return text[start:end + 1]
    if isinstance(node, exp.GenerateSeries) and node.args.get("is_end_exclusive"):
        return "range"  # DuckDB's range() parses into GenerateSeries, marked end-exclusive, with no position
    return str(node.sql_name()).lower() if isinstance(node, exp.Func) else node.key


def _refusal(node: exp.Expr, text: str = "") -> str:
    if isinstance(node, exp.Func):
        return f"function {_written(node, text)}() is not on saferoom's allowlist"
    if isinstance(node, (exp.Placeholder, exp.Parameter, exp.SessionParameter)):
        return "parameters and session variables are not allowed; write values into the query"
    if isinstance(node, exp.Lock):
        return "locking clauses (FOR UPDATE/SHARE) are not allowed; saferoom is read-only"
    if isinstance(node, exp.Into):
        return "SELECT ... INTO is not allowed; saferoom is read-only"
    return f"SQL construct `{node.key.upper()}` is not allowed by saferoom's guard"


def check_filters(policy: Policy, spec: EngineSpec) -> None:
    """Every row filter on this engine's tables obeys the same allowlist as queries.

    The policy checks a filter's shape when it loads (it knows no engine); the
    functions a filter may call depend on the engine, so they are checked here,
    where an engine is chosen, and again wherever a view is built.
    """
    for role, spec_of_role in policy.model.roles.items():
        for table in spec_of_role.rows:
            if registry.serves(policy, policy.tables[table].source, spec):
                check_filter(policy, role, table, spec)


def check_filter(policy: Policy, role: str, table: str, spec: EngineSpec) -> None:
    """A :class:`PolicyError` naming the line of a row filter that calls what the engine's allowlist does not have."""
    predicate = policy.written_filter(role, table)  # as written: its qualified form holds reserved names
    if predicate is None:
        return
    bound = bind_filter(predicate, {name: "" for name in placeholders(predicate)})
    try:
        allowed_nodes(exp.select("1").where(bound), spec)
    except QueryRejected as exc:
        line = policy.lines.line(("roles", role, "rows", table))
        raise PolicyError(f"row filter for `{table}`: {exc}", file=str(policy.path), line=line) from None
