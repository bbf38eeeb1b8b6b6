"""Aggregate-only roles: the cost of counting entities, and of differential privacy, measured side by side.

Prints ratios against baselines measured in the same run, on the same DuckDB file, through saferoom
sessions that differ only in their role:

* an aggregate-only group-by over the orders (each group's distinct customers certified, see below) against
  the same group-by for a role without ``aggregate:`` (target ≤ 1.3×);
* a DP count over the orders (each customer's rows bounded to one, then OpenDP's Laplace noise) against the
  plain count (target ≤ 1.5×), and the same over the customers table, which holds one row per customer
  and so needs no bounding.

Then, on the engine directly and at 3, 100k and 1M groups, the plan the guard writes for the per-group
entity minimum (saferoom.guard.aggregate_certified), which counts distinct customers only where a cheap
certificate cannot settle it: each group's customers, over a 10% sample of the table's vectors, hashed into
64 buckets and OR-ed into one UBIGINT, whose popcount is a lower bound on its distinct customers (two buckets
are two customers; a sample's rows are a subset of the query's), so a popcount of ``min_group`` or more shows
the group; the groups left are recounted exactly from their own rows. Its groups are checked equal to the
exact HAVING's.

Usage: python bench/aggregate.py [--rows 10000000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import duckdb
import sqlglot
from timing import paired_medians

import saferoom
from saferoom.guard.aggregate_certified import certified as certified_plan

DATA = Path(__file__).parent / "data" / "aggregate"

POLICY = """\
version: 1
sources: {bench: {engine: duckdb, path: bench.duckdb}}
tags: {key: {}}
tables:
  bench.orders: {order_id: public, customer_id: key, amount: public, region: public}
  bench.customers: {customer_id: key, segment: public}
users:
  pat: {roles: [plain]}
  mo: {roles: [marketing]}
  dana: {roles: [research]}
roles:
  plain: {columns: {key: allow}}
  marketing:
    columns: {key: allow}
    aggregate: {min_group: 10, entity: bench.customers.customer_id}
  research:
    columns: {key: allow}
    aggregate:
      min_group: 10
      entity: bench.customers.customer_id
      dp: {epsilon_per_query: 0.000001, budget: {epsilon: 1000}, bounds: {amount: [0, 1000]}}
"""

GROUPED = "CREATE OR REPLACE TEMP VIEW o AS SELECT *, order_id % {groups} AS g FROM orders"
PLAIN = "SELECT g, count(*) AS n, sum(amount) AS revenue FROM o GROUP BY g"
EXACT = PLAIN + " HAVING count(DISTINCT customer_id) >= 10"
# the plan the guard writes, from the guard itself
CERTIFIED = certified_plan(sqlglot.parse_one(PLAIN + " HAVING count(customer_id) >= 10", dialect="duckdb"),
                      [sqlglot.exp.column("customer_id")], 10).sql("duckdb")

GROUP_BY = "select region, count(*) as n, sum(amount) as revenue from orders group by region"
COUNT_ORDERS = "select count(*) from orders"
COUNT_CUSTOMERS = "select count(*) from customers"


def build(rows: int) -> Path:
    """``rows`` orders of ``rows // 5`` customers, and ``rows`` customers; made once per size."""
    DATA.mkdir(parents=True, exist_ok=True)
    marker = DATA / f".rows-{rows}"
    if not marker.exists():
        (DATA / "bench.duckdb").unlink(missing_ok=True)
        with duckdb.connect(str(DATA / "bench.duckdb")) as con:
            con.execute(f"""
                CREATE TABLE orders AS SELECT i AS order_id, hash(i) % {max(rows // 5, 1)} AS customer_id,
                  (hash(i * 7) % 100000) / 100.0 AS amount, ['EU', 'US', 'APAC'][1 + (hash(i * 3) % 3)::INT] AS region
                  FROM range({rows}) t(i);
                CREATE TABLE customers AS SELECT i AS customer_id, ['retail', 'premium'][1 + (i % 2)::INT] AS segment
                  FROM range({rows}) t(i);""")
        for old in DATA.glob(".rows-*"):
            old.unlink()
        marker.touch()
    (DATA / "saferoom.yaml").write_text(POLICY)
    return DATA / "saferoom.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    policy = build(args.rows)
    print(f"saferoom {saferoom.__version__}, duckdb {duckdb.__version__}, python {sys.version.split()[0]}, "
          f"{args.rows:,} orders and customers")
    print(f"{'workload':<52}{'plain':>10}{'guarded':>11}{'ratio':>8}{'target':>8}")
    with (saferoom.connect(policy, user="pat") as pat, saferoom.connect(policy, user="mo") as mo,
          saferoom.connect(policy, user="dana") as dana):
        for label, session, sql, target in (
            ("aggregate-only group-by (entities counted)", mo, GROUP_BY, 1.3),
            ("DP count over the orders (contributions bounded)", dana, COUNT_ORDERS, 1.5),
            ("DP count over the customers (one row each)", dana, COUNT_CUSTOMERS, 1.5),
        ):
            guarded, plain, ratio = paired_medians(lambda s=session, q=sql: s.query(q).to_arrow(),
                                                   lambda q=sql: pat.query(q).to_arrow(), args.repeat)
            print(f"{label:<52}{plain * 1e3:>7.0f} ms{guarded * 1e3:>8.0f} ms{ratio:>7.2f}×{target:>7.1f}×")
    certified(policy.parent / "bench.duckdb", args.repeat)


def _rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple[object, ...]]:
    return con.execute(sql).fetchall()


def certified(path: Path, repeat: int) -> None:
    """The certified plan against the plain group-by and against the exact HAVING, on the engine alone."""
    print(f"{'engine plans, groups of order_id % N':<52}{'plain':>10}{'exact':>11}{'ratio':>8}"
          f"{'certified':>11}{'ratio':>8}  same groups")
    with duckdb.connect(str(path), read_only=True) as con:
        for groups in (3, 100_000, 1_000_000):
            con.execute(GROUPED.format(groups=groups))
            run = {name: partial(_rows, con, sql)
                   for name, sql in (("plain", PLAIN), ("exact", EXACT), ("certified", CERTIFIED))}
            exact, plain, exact_ratio = paired_medians(run["exact"], run["plain"], repeat)
            fast, _, fast_ratio = paired_medians(run["certified"], run["plain"], repeat)
            same = sorted(r[:2] for r in run["exact"]()) == sorted(r[:2] for r in run["certified"]())
            print(f"{f'N = {groups:,}':<52}{plain * 1e3:>7.0f} ms{exact * 1e3:>8.0f} ms{exact_ratio:>7.2f}×"
                  f"{fast * 1e3:>8.0f} ms{fast_ratio:>7.2f}×  {same}")


if __name__ == "__main__":
    main()
