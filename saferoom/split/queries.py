"""SQL the split asks of a source or of its own output, as sqlglot trees for any engine's dialect."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlglot import exp

from saferoom.guard.views import INNER_ALIAS

if TYPE_CHECKING:
    from saferoom.split.plan import TablePlan

MIN_FINGERPRINT_LENGTH = 4  # shorter values (small integers, codes) would match everything


def fingerprint_values(table: TablePlan, text_type: str, *, distinct: bool = True) -> exp.Query:
    """The normalised text of every value the build removed or changed (trimmed, lower case, long enough)."""
    source = table.select.args["from_"].this
    parts = []
    for column in table.fingerprinted:
        text = exp.func("lower", exp.func("trim", exp.cast(exp.column(column, quoted=True), text_type)))
        normalised = exp.select(exp.alias_(text, "v")).from_(source.copy()).subquery("n")
        long_enough = exp.GTE(this=exp.func("length", exp.column("v")), expression=exp.Literal.number(MIN_FINGERPRINT_LENGTH))
        parts.append(exp.select("v").from_(normalised).where(long_enough))
    union: exp.Query = parts[0]
    for part in parts[1:]:
        union = exp.union(union, part, distinct=distinct)
    return union


def _from(source: exp.Expr, alias: str) -> exp.Expr:
    return source.subquery(alias) if isinstance(source, exp.Select) else source


def count_query(source: exp.Expr) -> exp.Select:
    """Rows of a view (or of a written table), in any engine's dialect."""
    return exp.select(exp.Count(this=exp.Star())).from_(_from(source, "v"))


def smallest_group_query(source: exp.Expr, columns: tuple[str, ...]) -> exp.Select:
    """The size of the smallest group over ``columns``: what k-anonymity is measured by."""
    groups = exp.select(exp.alias_(exp.Count(this=exp.Star()), "n")).from_(_from(source, "g"))
    groups = groups.group_by(*[exp.column(c, quoted=True) for c in columns])
    return exp.select(exp.Min(this=exp.column("n"))).from_(groups.subquery("s"))


def distinct_estimates_query(table: TablePlan, columns: list[str]) -> exp.Select:
    """Approximate distinct counts of raw columns, to decide where tokenizing distinct values first pays."""
    counts = [exp.func("approx_count_distinct", exp.column(c, table=INNER_ALIAS, quoted=True)) for c in columns]
    return exp.select(*counts).from_(table.select.args["from_"].this.copy())
