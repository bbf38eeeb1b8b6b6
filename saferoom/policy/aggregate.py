"""Aggregate-only roles: what a role that may see statistics, never rows, is given (the policy's side).

A role with ``aggregate:`` answers only queries that aggregate every row they return; each output group
must rest on at least ``min_group`` distinct entities (customers, say), counted through the key that each
table declares or shares by name with the entity column. The guard's rule that enforces this is
:mod:`saferoom.guard.aggregate_only`; this module is data and the one lookup of a table's entity key.

>>> rules = Aggregate(min_group=10, entity="prod.customers.customer_id")
>>> rules.entity_table, rules.entity_column
('prod.customers', 'customer_id')
>>> entity_key(rules, "prod.orders", {"order_id": (), "customer_id": ("key",)})
'customer_id'
>>> entity_key(rules, "prod.stores", {"store_id": ()}) is None
True
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

PERIOD = r"^[1-9][0-9]*d$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Dominance(_Strict):
    """The (n, k) dominance rule of statistical disclosure control: a group whose top ``n`` entities hold
    more than ``k`` of a sum is suppressed (the sum would tell those few what the others hold)."""

    n: int = Field(default=2, ge=1, le=10, description="How many of the largest contributors are added up.")
    k: float = Field(default=0.85, gt=0, lt=1, description="The share of a group's sum they may hold at most.")


class Budget(_Strict):
    epsilon: float = Field(gt=0, description="The privacy loss one user may spend in each period.")
    per: str = Field(default="30d", pattern=PERIOD, description="The period, in days: `30d`.")

    @property
    def seconds(self) -> int:
        return int(self.per[:-1]) * 86400


class DP(_Strict):
    """Differential privacy: counts, sums and means come back with noise from OpenDP, each query spending
    ``epsilon_per_query`` of the user's budget; a query that would overspend it is refused."""

    epsilon_per_query: float = Field(gt=0, description="The privacy loss of one query (all its groups and columns).")
    budget: Budget
    max_contributions: int = Field(default=1, ge=1, description="Rows one entity adds to a query, at most: "
                                   "its rows past this many are left out, so one entity moves a count by at most this.")
    bounds: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="column -> (lower, upper): a summed or averaged value is clamped to "
        "these bounds, which set the noise; a column not listed cannot be summed.")


class Aggregate(_Strict):
    """``aggregate: {min_group: 10, entity: prod.customers.customer_id, dominance: {n: 2, k: 0.85}}``."""

    min_group: int = Field(default=10, ge=2, description="Distinct entities a shown group must rest on.")
    entity: str = Field(pattern=r"^[^.]+(\.[^.]+){2,3}$", description="source.table.column (or source.schema."
                        "table.column) of the entity a group counts: usually the customer's key.")
    keys: dict[str, str] = Field(default_factory=dict, description="table -> its column holding the entity's key, "
                                 "where that column's name differs from the entity column's.")
    tables: list[str] | None = Field(default=None, description="Only these tables are aggregate-only (default: all).")
    dominance: Dominance | None = None
    dp: DP | None = None

    @property
    def entity_table(self) -> str:
        return self.entity.rsplit(".", 1)[0]

    @property
    def entity_column(self) -> str:
        return self.entity.rsplit(".", 1)[1].lower()

    def covers(self, table: str) -> bool:
        """Whether queries reading ``table`` are held to these rules."""
        return self.tables is None or table in self.tables

    def allowed_instead(self) -> str:
        """What a refused query may do instead, in the words a refusal uses."""
        return (f"aggregate by segment (count, sum, avg with GROUP BY); groups under {self.min_group} "
                f"distinct {_plural(self.entity_table)} are suppressed")


class Disclosure(_Strict):
    """Live disclosure warnings for a role that sees rows: how many result rows are unique on the columns of
    these tags (each such row singles out whoever it describes), and a limit above which a result is refused."""

    tags: list[str] = Field(default_factory=lambda: ["quasi"], min_length=1,
                            description="Tags of quasi-identifiers: birth dates, zip codes, and the like.")
    max_unique: int | None = Field(default=None, ge=0, description="Refuse a result with more rows than this "
                                   "unique on those columns (default: report only).")


def entity_key(rules: Aggregate, table: str, columns: Mapping[str, object]) -> str | None:
    """The column of ``table`` holding the entity's key (None: the table has none): declared under ``keys``,
    or, as a foreign key usually is, named as the entity column."""
    declared = rules.keys.get(table)
    if declared is not None:
        return declared.lower()
    return rules.entity_column if rules.entity_column in columns else None


def _plural(table: str) -> str:
    name = table.rsplit(".", 1)[-1]
    return name if re.search(r"s$", name) else f"{name}s"
