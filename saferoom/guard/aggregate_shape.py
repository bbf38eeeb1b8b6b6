"""What an aggregate-only role may ask: one SELECT over policy tables that aggregates every row it returns.

An allowlist, as the rest of the guard: each output is an allowed aggregate of a bare column (or ``*``), a
GROUP BY key, a literal, or arithmetic over those; anything else is refused with what is allowed instead.
Each refusal closes a way of getting one person's value out past the group minimum:

- ``min``/``max``/``any_value``/``array_agg``/``list``/``string_agg``/``median``… return one row's value;
- a window function, a subquery, a CTE, LATERAL, PIVOT or a set operation (UNION, EXCEPT) returns or combines
  rows the minimum is not counted on;
- ``FILTER (WHERE …)``, CASE or arithmetic inside an aggregate narrows it to rows the group's count does not
  describe (``sum(CASE WHEN id = 7 THEN amount END)``);
- GROUPING SETS, ROLLUP and CUBE return subtotals whose differences are single groups;
- a sample (USING SAMPLE, TABLESAMPLE) is drawn anew each time the table is read, so the minimum's exact
  recount could vouch for rows other than the ones the answer comes from; so is ``random()``, the one
  function on the engines' allowlists that DuckDB marks volatile (``WHERE g = 'nine' OR random() < 0.01``);
- a filter, key or join on a direct identifier (an entity key, a tokenized column) singles a person out.

>>> import sqlglot
>>> from saferoom.guard.aggregate_only import example
>>> from saferoom.guard.resolve_tables import resolve_tables
>>> def check(sql): check_shape(resolve_tables(sqlglot.parse_one(sql), example()), frozenset({"customer_id"}))
>>> check("select region, count(*) from orders group by 1")
>>> check("select max(amount) from orders")
Traceback (most recent call last):
saferoom.errors.QueryRejected: MAX returns one row's value, which may be one person's; use count, sum, avg, stddev or variance
"""

from __future__ import annotations

from sqlglot import exp

from saferoom.errors import QueryRejected
from saferoom.guard.resolve_tables import POLICY_TABLE

AGGREGATES = (exp.Count, exp.Sum, exp.Avg, exp.Stddev, exp.StddevPop, exp.StddevSamp, exp.Variance, exp.VariancePop)
ARITHMETIC = (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Neg, exp.Paren, exp.Cast, exp.Round, exp.Alias)
CONSTANTS = (exp.Literal, exp.Null, exp.Boolean)
MANY_ROWS = (exp.Window, exp.Lateral, exp.Unnest, exp.Qualify, exp.Rollup, exp.Cube, exp.GroupingSets, exp.Pivot,
             exp.MatchRecognize)


def check_shape(select: exp.Expr, identifiers: frozenset[str]) -> None:
    """Refuse a query an aggregate-only role may not run; ``identifiers``: lower-cased names of direct ones."""
    if not isinstance(select, exp.Select):
        raise QueryRejected("only one SELECT may be asked: UNION, EXCEPT and INTERSECT combine groups that the "
                            "minimum is not counted on")
    _check_nodes(select)
    _check_sources(select)
    keys = group_keys(select)
    for projection in select.expressions:
        _check_output(projection, keys)
    if not keys and not any(isinstance(n, exp.AggFunc) for p in select.expressions for n in p.walk()):
        raise QueryRejected("every row returned must be an aggregate: add count(*), sum(…) or avg(…) with GROUP BY")
    _check_identifiers(select, identifiers)


def group_keys(select: exp.Select) -> frozenset[str]:
    """The GROUP BY expressions, by their SQL text; ``GROUP BY 1`` and an output alias name the output."""
    group = select.args.get("group")
    if group is None:
        return frozenset()
    if group.args.get("all"):
        raise QueryRejected("name the GROUP BY keys (GROUP BY ALL is not allowed for an aggregate-only role)")
    return frozenset(e.sql() for e in group_expressions(select))


def group_expressions(select: exp.Select) -> list[exp.Expr]:
    """The GROUP BY expressions as written, each positional or alias reference replaced by the output's."""
    group = select.args.get("group")
    outputs = {p.alias_or_name.lower(): p.unalias() for p in select.expressions}
    return [_key(e, select.expressions, outputs) for e in (group.expressions if group is not None else [])]


def _key(key: exp.Expr, projections: list[exp.Expr], outputs: dict[str, exp.Expr]) -> exp.Expr:
    if isinstance(key, exp.Literal) and key.is_int and 0 < int(key.this) <= len(projections):
        return projections[int(key.this) - 1].unalias()
    if isinstance(key, exp.Column) and not key.table and key.name.lower() in outputs:
        return outputs[key.name.lower()]
    return key


def _check_nodes(select: exp.Select) -> None:
    if select.args.get("with_") is not None:
        raise QueryRejected("WITH (a CTE) is not allowed for an aggregate-only role; ask one SELECT with GROUP BY")
    for node in select.walk():
        if isinstance(node, exp.Query) and node is not select:
            raise QueryRejected("subqueries are not allowed for an aggregate-only role: each group's minimum is "
                                "counted on the query's own rows")
        if isinstance(node, exp.Star) and not isinstance(node.parent, exp.Count):
            raise QueryRejected("SELECT * returns rows; name the aggregates you want, e.g. count(*)")
        if isinstance(node, MANY_ROWS):
            raise QueryRejected(f"{node.key.upper()} is not allowed for an aggregate-only role: it returns rows "
                                "or subtotals the group minimum does not cover")
        if isinstance(node, exp.Filter):
            raise QueryRejected("FILTER (WHERE …) on an aggregate narrows it below the group's minimum; use WHERE")
        if isinstance(node, exp.TableSample):  # the minimum's recount would read another draw than the answer
            raise QueryRejected("sampling (USING SAMPLE, TABLESAMPLE) is not allowed for an aggregate-only role: a "
                                "group's minimum must be counted on the very rows its aggregates come from; "
                                "aggregate the whole table")
        if isinstance(node, exp.Rand):  # drawn anew by the recount and the left-out count, as a sample is
            raise QueryRejected("random() is not allowed for an aggregate-only role: it is drawn anew each time the "
                                "rows are read, so a group's minimum would be counted on other rows than its "
                                "aggregates come from; filter and group on the columns")
        if isinstance(node, exp.AggFunc):  # in HAVING and ORDER BY too: an order by max(x) tells max(x)
            _check_aggregate(node)


def _check_sources(select: exp.Select) -> None:
    """FROM and each JOIN name a policy table; a join's condition equates columns (no filter hides in it)."""
    sources = [select.args.get("from_")] + list(select.args.get("joins") or [])
    for source in sources:
        table = source.this if source is not None else None
        if not isinstance(table, exp.Table) or POLICY_TABLE not in table.meta:
            raise QueryRejected("an aggregate-only role reads policy tables only: FROM and JOIN name tables")
    for join in select.args.get("joins") or []:
        if str(join.args.get("method") or "").upper() == "NATURAL":
            raise QueryRejected("NATURAL JOIN is not allowed for an aggregate-only role; write ON a.x = b.x")
        condition = join.args.get("on")
        if condition is not None and not _equates_columns(condition.unnest()):
            raise QueryRejected("a JOIN's ON may only equate columns (ON a.x = b.x AND …); filter in WHERE")


def _equates_columns(condition: exp.Expr) -> bool:
    if isinstance(condition, exp.And):
        return all(_equates_columns(c) for c in condition.flatten())
    return isinstance(condition, exp.EQ) and all(isinstance(s, exp.Column) for s in (condition.this, condition.expression))


def _check_output(node: exp.Expr, keys: frozenset[str]) -> None:
    if node.unalias().sql() in keys or isinstance(node, CONSTANTS):
        return
    if isinstance(node, exp.IgnoreNulls | exp.RespectNulls):
        _check_output(node.this, keys)
    elif isinstance(node, exp.AggFunc):
        _check_aggregate(node)
    elif isinstance(node, ARITHMETIC):
        for child in node.iter_expressions():
            if not isinstance(child, (exp.DataType, exp.Identifier)):
                _check_output(child, keys)
    else:
        raise QueryRejected(f"`{node.sql()[:80]}` is neither an aggregate nor a GROUP BY key; every row returned "
                            "must be an aggregate (count, sum, avg, stddev, variance) over a group")


def _check_aggregate(node: exp.AggFunc) -> None:
    if not isinstance(node, AGGREGATES):
        name = node.sql_name() if not isinstance(node, exp.Anonymous) else node.name.upper()
        raise QueryRejected(f"{name} returns one row's value, which may be one person's; use count, sum, avg, "
                            "stddev or variance")
    argument = node.this
    if isinstance(argument, exp.Distinct):
        argument = argument.expressions[0] if len(argument.expressions) == 1 else None
    if not (isinstance(argument, (exp.Column, *CONSTANTS)) or (isinstance(argument, exp.Star) and isinstance(node, exp.Count))):
        raise QueryRejected(f"{node.sql_name()}() takes a column as it is: CASE, comparisons or arithmetic inside an "
                            "aggregate can narrow it to one person (aggregate the column, filter in WHERE)")


def _check_identifiers(select: exp.Select, identifiers: frozenset[str]) -> None:
    """A direct identifier may only be counted distinct or equated in a join: filtering or grouping on it
    (``WHERE customer_id = 7``, ``<> 7``, ``IN``, ranges) singles a person out."""
    for column in select.find_all(exp.Column):
        if column.name.lower() in identifiers and not _counted_or_joined(column):
            raise QueryRejected(f"`{column.sql()}` is a direct identifier: filtering, grouping or computing on it "
                                "singles people out. It may only be counted, count(DISTINCT …), or joined on",
                                column=column.name)


def _counted_or_joined(column: exp.Column) -> bool:
    parent = column.parent
    if isinstance(parent, exp.Distinct) and isinstance(parent.parent, exp.Count):
        return True
    if isinstance(parent, exp.Count):
        return True
    return isinstance(parent, exp.EQ) and isinstance(parent.parent, (exp.Join, exp.And)) and parent.find_ancestor(exp.Join) is not None
