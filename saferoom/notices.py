"""Notices: plain sentences that travel with a result and say how the policy shaped it.

A role's row filter turns ``where region = 'US'`` into an empty result with no error, and a role's
``max_rows`` cuts a result short; without a word, either reads as "there is no such data". A notice
says which it was. It names the table and shows the filter only as far as the role may see: a filter
on a column the role sees masked, tokenized or not at all is named but not shown, since its values
(the user's attribute, the policy's literals) would say what those rows hold.
"""

from __future__ import annotations

from sqlglot import exp

from saferoom.policy import Action, Policy
from saferoom.policy.filters import bind_filter, placeholders, raw_columns
from saferoom.policy.model import Attribute


def row_filter_notice(policy: Policy, role: str, attributes: dict[str, Attribute], table: str) -> str | None:
    """The notice for one table a query reads, or None when the role reads all of its rows."""
    predicate = policy.row_filter(role, table)
    if predicate is None:
        return None
    missing = sorted(name for name in placeholders(predicate) if name not in attributes)
    if missing:
        return (f"no rows of {table} are visible to you: its filter for role {role} needs the user attribute "
                f"{', '.join(missing)}, which you do not have")
    if not _shown_in_the_clear(policy, role, table, predicate):
        return f"rows of {table} are filtered for role {role} by a rule on columns this role does not see"
    bound = bind_filter(predicate, attributes).sql(dialect=policy.dialect(table))
    return f"rows of {table} are filtered for role {role}: {bound}"


def cut_notice(max_rows: int, role: str) -> str:
    return f"cut at max_rows={max_rows} (the limit of role {role}): the query had more rows"


def _shown_in_the_clear(policy: Policy, role: str, table: str, predicate: exp.Expr) -> bool:
    """Whether the role sees every column the filter reads as it is stored (action allow)."""
    listed = policy.columns(table)  # the policy checks this at load; an unlisted name still fails closed
    return all(c in listed and policy.rule(role, table, c).action is Action.ALLOW for c in raw_columns(predicate))
