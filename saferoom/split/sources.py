"""The connections a build reads through: one DuckDB with every DuckDB source attached, and one side per
PostgreSQL or Spark source, where that source's policy views run."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
from sqlglot import exp

from saferoom.engines.base import Catalog
from saferoom.engines.duckdb import CLOSED_CONFIG, attach_source, read_catalog
from saferoom.keyed import fingerprint_function, fingerprint_key, token_function
from saferoom.policy import Policy
from saferoom.secrets import Secret

if TYPE_CHECKING:
    from saferoom.split.plan import BuildPlan, TablePlan


@dataclass(frozen=True)
class Sources:
    conn: duckdb.DuckDBPyConnection  # DuckDB sources, the token functions, and the target being written
    sides: dict[str, Any]  # source name -> PostgresSide or SparkSide

    def side(self, policy: Policy, table: TablePlan) -> Any:
        return self.sides.get(policy.tables[table.table].source) if table.engine != "duckdb" else None

    def identity(self, policy: Policy, table: TablePlan) -> tuple[str, int]:
        """The source table's content hash (order-independent, all columns) and its row count."""
        side = self.side(policy, table)
        return side.identity(table) if side is not None else _identity(self.conn, table)


@contextlib.contextmanager
def opened(policy: Policy, plan: BuildPlan) -> Iterator[Sources]:
    conn = build_connection(source_paths(policy), policy.token_key)
    sides: dict[str, Any] = {}
    try:
        _open_sides(policy, plan, sides)
        yield Sources(conn, sides)
    finally:
        conn.close()
        for side in sides.values():
            side.close()


def _open_sides(policy: Policy, plan: BuildPlan, sides: dict[str, Any]) -> None:
    """Into ``sides`` as each opens, so the ones opened are closed if a later one fails."""
    from saferoom.split.postgres import PostgresSide

    for name in sorted({policy.tables[t.table].source for t in plan.tables if t.engine != "duckdb"}):
        if policy.model.sources[name].engine == "spark":
            from saferoom.split.spark import SparkSide

            sides[name] = SparkSide(policy, name)
        else:
            sides[name] = PostgresSide(policy, name)


def _identity(conn: duckdb.DuckDBPyConnection, table: TablePlan) -> tuple[str, int]:
    source = table.select.args["from_"].this.copy()
    source.set("alias", exp.TableAlias(this=exp.to_identifier("t")))
    row = exp.func("hash", exp.column("t"))
    query = exp.select(exp.Count(this=exp.Star()), exp.Sum(this=exp.cast(row, "HUGEINT")), exp.func("bit_xor", row)).from_(source)
    count, total, xor = conn.execute(query.sql("duckdb")).fetchall()[0]
    return f"{count}:{total}:{xor}", int(count)


def build_connection(sources: dict[str, Path], token_key: Secret | None) -> duckdb.DuckDBPyConnection:
    """A connection for `saferoom build`: sources read-only, the token and fingerprint macros.

    Only SQL that saferoom generates runs here, and it must write the target,
    so external access stays on; extensions stay off.
    """
    conn = duckdb.connect(":memory:", config={**CLOSED_CONFIG, "preserve_insertion_order": False})
    try:
        conn.execute("SET enable_progress_bar = false")
        for name, path in sources.items():
            attach_source(conn, name, path, {})
        if token_key is not None:
            keyed_functions(conn, token_key)
    except BaseException:
        conn.close()
        raise
    return conn


def keyed_functions(conn: duckdb.DuckDBPyConnection, token_key: Secret) -> None:
    """The token and fingerprint functions of a build."""
    token_function(conn, token_key)
    fingerprint_function(conn, fingerprint_key(token_key))


def source_paths(policy: Policy) -> dict[str, Path]:
    """The DuckDB files a build reads: every DuckDB source but the builds' own targets."""
    from saferoom.session import _path

    return {name: _path(policy, source.path) for name, source in policy.model.sources.items()
            if name not in policy.model.builds and source.engine == "duckdb"}


def sources_catalog(policy: Policy) -> Catalog:
    """Tables and column types of every source a build may read."""
    conn = build_connection(source_paths(policy), None)
    try:
        catalog = read_catalog(conn)
    finally:
        conn.close()
    for source in _remote_sources(policy):
        catalog |= _remote_catalog(policy, source)
    return catalog


def _remote_sources(policy: Policy) -> list[str]:
    return [n for n, s in policy.model.sources.items() if s.engine in ("postgres", "spark") and n not in policy.model.builds]


def _remote_catalog(policy: Policy, source: str) -> Catalog:
    if policy.model.sources[source].engine == "spark":
        from saferoom.engines.spark import SparkEngine

        return SparkEngine(source, policy.model.sources[source], policy.base).catalog()
    from saferoom.split.postgres import PostgresSide

    side = PostgresSide(policy, source)
    try:
        return side.engine.catalog()
    finally:
        side.close()
