"""Notices: plain sentences that travel with a result and say how the policy shaped it.

A role's row filter turns ``where region = 'US'`` into an empty result with no error, and a role's
``max_rows`` cuts a result short; without a word, either reads as "there is no such data". A notice
says which it was. It names the table and shows the filter only as far as the role may see: a filter
on a column the role sees masked, tokenized or not at all is named but not shown, since its values
(the user's attribute, the policy's literals) would say what those rows hold.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlglot import exp

from saferoom.policy import Action, Policy
from saferoom.policy.aggregate import Aggregate
from saferoom.policy.filters import bind_filter, placeholders, raw_columns
from saferoom.policy.model import Attribute

if TYPE_CHECKING:
    from saferoom.guard.aggregate_dp import NoisePlan


def row_filter_notice(policy: Policy, role: str, attributes: dict[str, Attribute], table: str) -> str | None:
    """The notice for one table a query reads, or None when the role reads all of its rows."""
    predicate = policy.row_filter(role, table)
    if predicate is None:
        return None
    missing = sorted(name for name in placeholders(predicate) if name not in attributes)
    if missing:
        return (f"no rows of {table} are visible to you: its filter for role {role} needs the user attribute "
                f"{', '.join(missing)}, which you do not have")
    read = policy.filter_reads(role, table)
    if read:
        return f"rows of {table} are filtered for role {role} by {filter_description(read)}"
    if not _shown_in_the_clear(policy, role, table, predicate):
        return f"rows of {table} are filtered for role {role} by a rule on columns this role does not see"
    bound = bind_filter(predicate, attributes).sql(dialect=policy.dialect(table))
    return f"rows of {table} are filtered for role {role}: {bound}"


def filter_description(read: tuple[str, ...]) -> str:
    """A filter that reads other tables, said without its text or the values bound into it."""
    return f"a condition that reads {', '.join(read)}"


def cut_notice(max_rows: int, role: str) -> str:
    return f"cut at max_rows={max_rows} (the limit of role {role}): the query had more rows"


def _shown_in_the_clear(policy: Policy, role: str, table: str, predicate: exp.Expr) -> bool:
    """Whether the role sees every column the filter reads as it is stored (action allow)."""
    listed = policy.columns(table)  # the policy checks this at load; an unlisted name still fails closed
    return all(c in listed and policy.rule(role, table, c).action is Action.ALLOW for c in raw_columns(predicate))


def aggregate_rules(rules: Aggregate) -> tuple[str, ...]:
    """An aggregate-only role's rules, each a sentence: for ``saferoom explain``, refusals and decisions."""
    lines = [f"aggregate-only: every row returned is an aggregate; groups resting on fewer than {rules.min_group} "
             f"distinct {rules.entity} are suppressed (dropped), and a query with WHERE must leave at least "
             f"{rules.min_group} of them out",
             "direct identifiers (entity keys, tokenized columns) may only be counted or joined on"]
    if rules.tables is not None:
        lines.append(f"applies to queries reading {', '.join(rules.tables)}")
    if rules.dominance is not None:
        lines.append(f"a sum whose top {rules.dominance.n} entities hold more than {rules.dominance.k:.0%} of it "
                     "is suppressed")
    if rules.dp is not None:
        dp = rules.dp
        lines.append(f"differential privacy: counts, sums and means carry noise; each query spends epsilon "
                     f"{dp.epsilon_per_query:g} of {dp.budget.epsilon:g} per {dp.budget.per}")
    return tuple(lines)


def aggregate_notes(rules: Aggregate | None, noise: NoisePlan | None) -> tuple[str, ...]:
    """What a decision on a query of an aggregate-only role says: its rules, and the epsilon it will spend."""
    if rules is None:
        return ()
    spent = (f"this query spends epsilon {noise.epsilon:g} of the user's privacy budget",) if noise else ()
    return (*aggregate_rules(rules), *spent)
