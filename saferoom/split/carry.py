"""What an incremental build carries over from the last build, and why.

A table is carried over when the last build of this target made it from the
same source content (an order-independent hash of every row) with the same
recipe (policy view, k-anonymity settings, token key, saferoom version) under
the same name. When every table is carried over, the target is left as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from saferoom.engines.duckdb import scrub
from saferoom.errors import BuildError
from saferoom.policy import Policy
from saferoom.split.manifest import Manifest, TableResult, read_manifest
from saferoom.split.plan import BuildPlan, TablePlan
from saferoom.split.sources import Sources, opened
from saferoom.split.writers import target_build_id


@dataclass(frozen=True)
class Change:
    """One table: carried over from the last build (``before``) or built again, and why."""

    table: str
    identity: str
    rows_in: int
    reason: str
    before: TableResult | None = None

    @property
    def carried(self) -> bool:
        return self.before is not None


def previous_build(plan: BuildPlan) -> Manifest | None:
    """The last build's manifest, if it describes the target that is actually there."""
    manifest = read_manifest(plan.manifest_path)
    return manifest if manifest is not None and target_build_id(plan) == manifest.build_id else None


def changes(sources: Sources, policy: Policy, plan: BuildPlan, previous: Manifest | None, *, full: bool) -> list[Change]:
    return [_change(table, *sources.identity(policy, table), previous, full) for table in plan.tables]


def planned_changes(policy: Policy, plan: BuildPlan, *, full: bool = False) -> list[Change]:
    """What ``build`` would carry over and build again (it reads the sources' content hashes; writes nothing)."""
    try:
        with opened(policy, plan) as sources:
            return changes(sources, policy, plan, None if full else previous_build(plan), full=full)
    except duckdb.Error as exc:
        raise BuildError(f"cannot read the sources' content: {scrub(str(exc), {})}") from None


def unchanged(plan: BuildPlan, previous: Manifest | None, found: list[Change]) -> bool:
    """Every table carried over, and no other table in the target: nothing to write."""
    if previous is None or not all(c.carried for c in found):
        return False
    return sorted((t.table, t.name) for t in previous.tables) == sorted((t.table, t.name) for t in plan.tables)


def _change(table: TablePlan, identity: str, rows_in: int, previous: Manifest | None, full: bool) -> Change:
    before = next((t for t in previous.tables if t.table == table.table), None) if previous else None
    if full:
        reason = "--full builds every table"
    elif previous is None:
        reason = "no earlier build of this target"
    elif before is None:
        reason = "not in the last build"
    elif before.name != table.name:
        reason = f"its name in the target changed from {before.name}"
    elif before.recipe != table.recipe:
        reason = "its policy view, k-anonymity settings, token key or saferoom version changed"
    elif before.source_identity != identity:
        reason = "its source changed"
    else:
        return Change(table.table, identity, rows_in, f"unchanged since build {previous.build_id}", before)
    return Change(table.table, identity, rows_in, reason)
