"""`saferoom build`: a closed analytics database made from production through one role's eyes."""

from __future__ import annotations

from saferoom.policy import Policy
from saferoom.split.plan import BuildPlan, TablePlan, make_plan
from saferoom.split.run import Manifest, Progress, TableResult, run

__all__ = ["BuildPlan", "Manifest", "TablePlan", "TableResult", "build", "plan"]


def plan(policy: Policy, name: str) -> BuildPlan:
    """What ``build`` would do, without writing anything."""
    from saferoom import __version__
    from saferoom.engines.duckdb import build_connection, read_catalog
    from saferoom.split.run import _source_paths

    conn = build_connection(_source_paths(policy), None)
    try:
        catalog = read_catalog(conn)
    finally:
        conn.close()
    for source in _remote_sources(policy):
        catalog |= _remote_catalog(policy, source)
    return make_plan(policy, name, catalog, __version__)


def _remote_sources(policy: Policy) -> list[str]:
    return [n for n, s in policy.model.sources.items() if s.engine in ("postgres", "spark") and n not in policy.model.builds]


def _remote_catalog(policy: Policy, source: str) -> dict:  # type: ignore[type-arg]
    if policy.model.sources[source].engine == "spark":
        from saferoom.engines.spark import SparkEngine

        return SparkEngine(source, policy.model.sources[source], policy.base).catalog()
    from saferoom.split.postgres import PostgresSide

    side = PostgresSide(policy, source)
    try:
        return side.engine.catalog()
    finally:
        side.close()


def build(policy: Policy, name: str, *, full: bool = False, progress: Progress | None = None) -> Manifest:
    """Build ``name``; unchanged tables are carried over from the last build unless ``full``."""
    from saferoom import __version__

    return run(policy, plan(policy, name), __version__, full=full, progress=progress)
