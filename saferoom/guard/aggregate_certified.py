"""The per-group entity minimum of an aggregate-only role, counted distinct only where a certificate cannot
settle it (DuckDB sources, queries without ORDER BY, LIMIT or DISTINCT; no GROUP BY is one group).

An exact ``count(DISTINCT key)`` per group hashes every (group, entity) pair: about 40 times a plain
three-group sum over 10M orders. Instead, each group's entity keys are hashed into 64 buckets and OR-ed
into one UBIGINT. Two set buckets are two distinct entities, so a popcount of ``min_group`` or more proves
the minimum, and can never show a small group. A group with fewer non-NULL keys than ``min_group`` is
certainly small and dropped in the query's HAVING. The groups left (fewer set bits, enough keys) are
recounted exactly over their own rows, reached by a semi-join, so the decision stays exact: a group of
exactly ``min_group`` entities whose hashes collide is still shown. NULL keys set no bucket (DuckDB's
``hash(NULL)`` is a number).

A key the role sees whole and of an integer type is bucketed by its six low bits, with no hash: two
different residues are two different keys, so the bound is as sound, and keys that share residues (all
multiples of 64, say) only fall to the exact recount. The bit is ``2**63 >> (key & 63)``: a right shift is
cheaper on DuckDB than a left one (no overflow check), and a NULL key gives a NULL that ``bit_or`` skips,
so no FILTER is needed. At three groups over 10M orders this took the certificate from about 2.2× to
1.35× a plain group-by (docs/aggregate.md).

Where no entity has more than ``most`` rows in the query's one table (proven once for a read-only file, see
``Guard.key_rows``), the certificate is the group's count of non-NULL keys: ``min_group * most`` of them
are ``min_group`` entities. DuckDB answers that count with the query's own ``count(*)`` when the file
shows no NULL keys, so a certified group then costs nothing.

The user's query becomes a materialized CTE with hidden columns (its group keys and buckets), and the
outer query keeps the groups that pass, with the CTE's own column names (``* EXCLUDE`` the hidden ones).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlglot import exp

from saferoom.guard.aggregate_shape import group_expressions

GROUPS = "__saferoom_c"


def certifiable(select: exp.Select, dialect: str) -> bool:
    """Whether the rewrite applies: DuckDB, and nothing that orders, cuts or dedups the rows (a query without
    GROUP BY is one group)."""
    return dialect == "duckdb" and not any(select.args.get(a) for a in ("order", "limit", "offset", "distinct", "with_"))


def upper_bound(key: exp.Column, minimum: int) -> exp.Expr:
    """The HAVING condition that drops groups with fewer than ``minimum`` non-NULL keys (certainly small)."""
    return exp.GTE(this=exp.Count(this=key.copy()), expression=exp.Literal.number(minimum))


def certified(select: exp.Select, keys: list[exp.Column], minimum: int, integers: frozenset[int] = frozenset(),
              most: Sequence[int | None] = ()) -> exp.Select:
    """``select`` (its HAVING already holding :func:`upper_bound` for each key) wrapped as described above;
    ``integers``: the positions in ``keys`` of whole integer keys, bucketed without a hash; ``most``: for each
    key, the most rows one entity has in the query's one table, where proven (then its rows are counted)."""
    groups = group_expressions(select)
    proofs = [_proof(key, i, i in integers, most[i] if i < len(most) else None, minimum) for i, key in enumerate(keys)]
    recount = [_recount(select, groups, key, proof, minimum) for key, proof in zip(keys, proofs, strict=True)]
    hidden = [f"__saferoom_g{i}" for i in range(len(groups))] + [f"__saferoom_b{i}" for i in range(len(keys))]
    inner = select.copy()
    for i, group in enumerate(groups):
        inner.append("expressions", exp.alias_(group.copy(), f"__saferoom_g{i}"))
    for i, proof in enumerate(proofs):
        inner.append("expressions", exp.alias_(proof.bound, f"__saferoom_b{i}"))
    star = exp.Star(except_=[exp.column(h) for h in hidden])
    outer = exp.select(star).from_(GROUPS).where(exp.and_(*recount, copy=False), copy=False)
    cte = exp.CTE(this=inner, alias=exp.TableAlias(this=exp.to_identifier(GROUPS)), materialized=True)
    outer.set("with_", exp.With(expressions=[cte]))
    return outer


@dataclass(frozen=True)
class _Proof:
    """Key ``i``'s hidden aggregate, and the measure of it that proves a group's minimum once it reaches
    ``threshold``."""

    bound: exp.Expr
    measure: exp.Expr
    threshold: int

    def proven(self) -> exp.Expr:
        return exp.GTE(this=self.measure.copy(), expression=exp.Literal.number(self.threshold))

    def unproven(self) -> exp.Expr:
        return exp.LT(this=self.measure.copy(), expression=exp.Literal.number(self.threshold))


def _proof(key: exp.Column, i: int, integer: bool, most: int | None, minimum: int) -> _Proof:
    """``minimum * most`` non-NULL keys where no entity has more than ``most`` rows, else ``minimum`` set buckets."""
    if most is not None:
        return _Proof(exp.Count(this=key.copy()), exp.column(f"__saferoom_b{i}"), minimum * max(most, 1))
    bound = _residues(key) if integer else _buckets(key)
    return _Proof(bound, exp.func("bit_count", exp.column(f"__saferoom_b{i}")), minimum)


def _buckets(key: exp.Column) -> exp.Expr:
    bit = exp.BitwiseLeftShift(this=exp.cast(exp.Literal.number(1), exp.DataType.build("UBIGINT", dialect="duckdb")),
                               expression=exp.Paren(this=exp.BitwiseAnd(
                                   this=exp.func("hash", key.copy()), expression=exp.Literal.number(63))))
    present = exp.Not(this=exp.Is(this=key.copy(), expression=exp.Null()))
    return exp.Filter(this=exp.func("bit_or", bit), expression=exp.Where(this=present))


def _residues(key: exp.Column) -> exp.Expr:
    """``bit_or(2**63 >> (key & 63))``: one bit per residue of an integer key mod 64; NULL sets none."""
    top = exp.cast(exp.Literal.number(1 << 63), exp.DataType.build("UBIGINT", dialect="duckdb"))
    low = exp.Paren(this=exp.BitwiseAnd(this=key.copy(), expression=exp.Literal.number(63)))
    return exp.func("bit_or", exp.BitwiseRightShift(this=top, expression=low))


def _recount(select: exp.Select, groups: list[exp.Expr], key: exp.Column, proof: _Proof, minimum: int) -> exp.Expr:
    """``proven OR EXISTS (the group among the uncertified ones whose exact count reaches m)``.

    Groups are matched with IS NOT DISTINCT FROM: a NULL group key is a group too, and ``IN`` would never
    find it."""
    exact = _exact(select, groups, key, proof, minimum)
    recounted = exp.select("1").from_(exp.Subquery(this=exact, alias=exp.TableAlias(this=exp.to_identifier("__saferoom_r"))))
    found = _same(_hidden(len(groups), "__saferoom_r"), _hidden(len(groups), GROUPS))
    shown = exp.Exists(this=recounted.where(found, copy=False))
    return exp.or_(proof.proven(), shown, copy=False)


def _exact(select: exp.Select, groups: list[exp.Expr], key: exp.Column, proof: _Proof, minimum: int) -> exp.Select:
    """The uncertified groups whose exact ``count(DISTINCT key)`` reaches ``minimum``, over their own rows only
    (the query's FROM, joins and WHERE, joined to those groups)."""
    number = exp.Literal.number(minimum)
    uncertified = exp.select(*_hidden(len(groups)) or [exp.Literal.number(1)]).from_(GROUPS).where(proof.unproven())
    exact = exp.Select(expressions=[exp.alias_(g.copy(), f"__saferoom_g{n}") for n, g in enumerate(groups)] or [exp.Literal.number(1)])
    exact = exact.from_(select.args["from_"].copy(), copy=False)
    for join in select.args.get("joins") or []:
        exact.append("joins", join.copy())
    exact = exact.join(exp.Subquery(this=uncertified, alias=exp.TableAlias(this=exp.to_identifier("__saferoom_u"))),
                       on=_same(groups, _hidden(len(groups), "__saferoom_u")), copy=False)
    where = select.args.get("where")
    if where is not None:
        exact.set("where", where.copy())
    distinct = exp.Count(this=exp.Distinct(expressions=[key.copy()]))
    exact = exact.group_by(*[g.copy() for g in groups], copy=False) if groups else exact
    return exact.having(
        exp.GTE(this=distinct, expression=number.copy()), copy=False)


def _hidden(count: int, table: str | None = None) -> list[exp.Expr]:
    """The hidden group-key columns ``__saferoom_g0``…, of ``table`` if given."""
    return [exp.column(f"__saferoom_g{n}", table) for n in range(count)]


def _same(left: list[exp.Expr], right: list[exp.Expr]) -> exp.Expr:
    """Each expression of ``left`` IS NOT DISTINCT FROM its counterpart in ``right`` (TRUE for none). A group key
    that is a condition is parenthesized: ``a OR b IS NOT DISTINCT FROM g`` would compare ``b`` alone."""
    if not left:
        return exp.true()
    return exp.and_(*[exp.NullSafeEQ(this=a.copy() if isinstance(a, exp.Column) else exp.paren(a.copy(), copy=False),
                                     expression=b) for a, b in zip(left, right, strict=True)])
