"""k-anonymity in a build: suppress the rows of small groups as the table is written, measure the smallest
group before and after, and refuse what the policy does not accept."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlglot import exp

from saferoom.errors import BuildError
from saferoom.policy.model import KAnonymity
from saferoom.split.manifest import TableResult
from saferoom.split.plan import TablePlan
from saferoom.split.queries import count_query, smallest_group_query

K_COLUMN = "__saferoom_k"
Ask = Callable[[exp.Select], Any]


def suppressing(select: exp.Select, table: TablePlan, k: KAnonymity | None) -> exp.Select:
    """The view without the rows of groups smaller than k, in the same statement (``suppress`` only)."""
    if not table.k_columns or k is None or k.on_violation != "suppress":
        return select
    window = exp.Window(this=exp.Count(this=exp.Star()), partition_by=[exp.column(c, quoted=True) for c in table.k_columns])
    counted = exp.select(exp.Star(), exp.alias_(window, K_COLUMN)).from_(select.subquery("v"))
    names = [exp.column(p.alias_or_name, quoted=True) for p in table.select.expressions]
    keep = exp.select(*names).from_(counted.subquery("c"))
    return keep.where(exp.GTE(this=exp.column(K_COLUMN), expression=exp.Literal.number(k.k)))


def measure(table: TablePlan, k: KAnonymity, at_source: Ask, at_target: Ask, written: exp.Expr) -> dict[str, Any]:
    """The smallest group of the view and of the written table, and the rows suppressed between them."""
    before = at_source(smallest_group_query(table.select, table.k_columns))
    rows_view = at_source(count_query(table.select))
    after = at_target(smallest_group_query(written, table.k_columns))
    rows_out = at_target(count_query(written))
    if k.on_violation == "fail" and before is not None and before < k.k:
        raise BuildError(f"k-anonymity fails for {table.table}: a group of {before} rows over {', '.join(table.k_columns)} "
                         f"is below k={k.k}; coarsen those columns or lower k (nothing was swapped in)")
    return {"columns": list(table.k_columns), "k": k.k, "on_violation": k.on_violation,
            "smallest_group_before": before, "smallest_group": after, "rows_suppressed": rows_view - rows_out}


def check_suppressed(result: TableResult, k: KAnonymity | None) -> None:
    """A table that suppression emptied (or cut by more than ``max_suppressed``) fails the build."""
    measured = result.k_anonymity
    if k is None or not measured or k.on_violation != "suppress":
        return
    suppressed = measured["rows_suppressed"]
    total = suppressed + result.rows_out
    if not total:
        return
    too_many = result.rows_out == 0 if k.max_suppressed is None else suppressed / total > k.max_suppressed
    if too_many:
        raise BuildError(_too_many(result, suppressed, total, k))


def _too_many(result: TableResult, suppressed: int, total: int, k: KAnonymity) -> str:
    columns = ", ".join(result.k_anonymity["columns"]) if result.k_anonymity else ""
    share = "every one" if suppressed == total else f"{suppressed / total:.0%}, above max_suppressed={k.max_suppressed},"
    return (f"k-anonymity suppressed {share} of the {total:,} rows of {result.table}: too few rows share each "
            f"combination of {columns} to make groups of k={k.k}. Coarsen those columns (a wider date_unit, a shorter "
            "prefix), lower k, or set k_anonymity.max_suppressed to accept it; nothing was swapped in.")
