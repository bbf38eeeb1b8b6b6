"""The (n, k) dominance rule for an aggregate-only role: a group whose sum is mostly a few entities' is suppressed.

A total of ten customers' balances of which one holds 95% tells that customer (and anyone who knows the
others) what the one holds. With ``aggregate.dominance: {n: 2, k: 0.85}``, a group is dropped when its
``n`` largest entities add up to more than ``k`` of any ``sum``/``avg`` column it returns. The rule adds one
condition to the query's HAVING: its keys are not among those of an uncorrelated subquery that sums each
column per group and entity over the same sources and WHERE, and keeps the groups that are dominated.

>>> import sqlglot
>>> from sqlglot import exp
>>> from saferoom.policy.aggregate import Dominance
>>> select = sqlglot.parse_one("select region, sum(amount) from orders o group by region")
>>> dominance_condition(select, exp.column("customer_id", table="o"), Dominance(n=1, k=0.5)).sql()[:79]
'NOT (region) IN (SELECT __saferoom_k0 FROM (SELECT region AS __saferoom_k0, SUM'
"""

from __future__ import annotations

from sqlglot import exp

from saferoom.guard.aggregate_shape import group_expressions
from saferoom.policy.aggregate import Dominance

PARTS = "__saferoom_d"


def dominance_condition(select: exp.Select, entity: exp.Column, rule: Dominance) -> exp.Expr | None:
    """The HAVING condition that drops dominated groups; None when the query sums nothing."""
    summed: list[exp.Expr] = [n.this for p in select.expressions for n in p.find_all(exp.Sum, exp.Avg)
                              if isinstance(n.this, exp.Column)]
    if not summed:
        return None
    keys = group_expressions(select)
    dominated = _dominated(select, entity, keys, summed, rule)
    if not keys:
        return exp.Not(this=exp.Exists(this=dominated))
    return exp.Not(this=exp.In(this=exp.Tuple(expressions=[k.copy() for k in keys]), query=exp.Subquery(this=dominated)))


def _dominated(select: exp.Select, entity: exp.Column, keys: list[exp.Expr], summed: list[exp.Expr],
               rule: Dominance) -> exp.Select:
    names = [f"__saferoom_k{i}" for i in range(len(keys))]
    sums = [f"__saferoom_s{i}" for i in range(len(summed))]
    parts = _per_entity(select, entity, list(zip(names, keys, strict=True)), list(zip(sums, summed, strict=True)))
    outputs: list[exp.Expr] = [exp.column(n) for n in names] or [exp.Literal.number(1)]
    shares = [_share_above(exp.column(s), rule) for s in sums]
    query = exp.Select(expressions=outputs).from_(exp.Subquery(this=parts, alias=exp.TableAlias(this=exp.to_identifier(PARTS))))
    if names:
        query = query.group_by(*[exp.column(n) for n in names], copy=False)
    return query.having(exp.or_(*shares, copy=False), copy=False)


def _per_entity(select: exp.Select, entity: exp.Column, keys: list[tuple[str, exp.Expr]],
                sums: list[tuple[str, exp.Expr]]) -> exp.Select:
    """Each group's sums per entity, over the query's own sources and WHERE."""
    outputs = [exp.alias_(k.copy(), n) for n, k in keys] + [exp.alias_(exp.Sum(this=c.copy()), n) for n, c in sums]
    inner = exp.Select(expressions=outputs).from_(select.args["from_"].copy(), copy=False)
    for join in select.args.get("joins") or []:
        inner.append("joins", join.copy())
    if select.args.get("where") is not None:
        inner.set("where", select.args["where"].copy())
    return inner.group_by(*[k.copy() for _, k in keys], entity.copy(), copy=False)


def _share_above(column: exp.Column, rule: Dominance) -> exp.Expr:
    """``sum of the n largest > k × the total``, in the engine's list functions."""
    largest = exp.func("list_reverse_sort", exp.func("list", column.copy()))
    top = exp.func("list_sum", exp.func("list_slice", largest, exp.Literal.number(1), exp.Literal.number(rule.n)))
    total = exp.Sum(this=column.copy())
    return exp.GT(this=top, expression=exp.Mul(this=exp.Literal.number(rule.k), expression=total))
