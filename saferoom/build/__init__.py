"""`saferoom build`: a closed analytics database made from production through one role's eyes."""

from __future__ import annotations

from saferoom.build.plan import BuildPlan, TablePlan, make_plan
from saferoom.build.run import Manifest, Progress, TableResult, run
from saferoom.policy import Policy

__all__ = ["BuildPlan", "Manifest", "TablePlan", "TableResult", "build", "plan"]


def plan(policy: Policy, name: str) -> BuildPlan:
    """What ``build`` would do, without writing anything."""
    from saferoom import __version__
    from saferoom.build.run import _source_paths
    from saferoom.engines.duckdb import build_connection

    conn = build_connection(_source_paths(policy), None)
    try:
        from saferoom.engines.duckdb import read_catalog

        return make_plan(policy, name, read_catalog(conn), __version__)
    finally:
        conn.close()


def build(policy: Policy, name: str, *, full: bool = False, progress: Progress | None = None) -> Manifest:
    """Build ``name``; unchanged tables are carried over from the last build unless ``full``."""
    from saferoom import __version__

    return run(policy, plan(policy, name), __version__, full=full, progress=progress)
