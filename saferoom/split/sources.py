"""The connections a build reads through: one DuckDB with every DuckDB source attached, and one side per
PostgreSQL or Spark source, where that source's policy views run."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import duckdb
from sqlglot import exp

from saferoom.engines.duckdb import build_connection
from saferoom.policy import Policy
from saferoom.split.plan import BuildPlan, TablePlan, source_paths


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
