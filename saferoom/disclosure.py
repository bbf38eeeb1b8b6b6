"""Live disclosure warnings: how many rows of a result are unique on its quasi-identifiers.

A role that sees rows may still see a birth month and three zip digits that, together, describe one
customer. With ``disclosure: {tags: [quasi], max_unique: N}`` on a role, the decision on a query that
returns columns of those tags counts the result rows whose combination of them occurs once (each such row
singles out whoever it describes); ``explain()`` reports it, and a result with more than ``max_unique``
such rows is refused before any row leaves. The count runs on the engine over the guarded query itself.

>>> unique_rows_sql("SELECT zip, segment FROM t", ["zip"], "duckdb")
'SELECT COUNT(*) FROM (SELECT "zip" FROM (SELECT zip, segment FROM t) AS __saferoom_r GROUP BY "zip" HAVING COUNT(*) = 1) AS __saferoom_u'
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp

from saferoom.decision import Decision
from saferoom.policy.aggregate import Disclosure


def quasi_columns(decision: Decision, rules: Disclosure) -> list[str]:
    """The output columns that come from a column with one of the role's quasi-identifier tags."""
    tags = set(rules.tags)
    return [c.name for c in decision.columns if any(s.tag in tags for s in c.sources)]


def unique_rows_sql(guarded_sql: str, columns: list[str], dialect: str) -> str:
    """``SELECT COUNT(*)`` of the combinations of ``columns`` that occur in exactly one row of the result."""
    rows = exp.Subquery(this=sqlglot.parse_one(guarded_sql, read=dialect), alias=exp.TableAlias(this=exp.to_identifier("__saferoom_r")))
    keys = [exp.column(c, quoted=True) for c in columns]
    once = exp.EQ(this=exp.Count(this=exp.Star()), expression=exp.Literal.number(1))
    combinations = exp.select(*keys).from_(rows).group_by(*[k.copy() for k in keys]).having(once)
    counted = exp.select(exp.Count(this=exp.Star())).from_(combinations.subquery("__saferoom_u"))
    return counted.sql(dialect)


def unique_note(count: int, columns: list[str], rules: Disclosure) -> str:
    limit = f" (role limit {rules.max_unique})" if rules.max_unique is not None else ""
    return f"{count} result row(s) are unique on {', '.join(columns)}, quasi-identifiers: each may single a person out{limit}"
