"""Aggregate-only roles: the cost of counting entities, and of differential privacy, measured side by side.

Prints ratios against baselines measured in the same run, on the same DuckDB file, through saferoom
sessions that differ only in their role:

* an aggregate-only group-by over the orders (each group's distinct customers certified, see below) against
  the same group-by for a role without ``aggregate:`` (target ≤ 1.3×);
* a DP count over the orders (each customer's rows bounded, then OpenDP's Laplace noise) against the plain
  count (target ≤ 1.5×): with a bound of 25 rows a customer, which no customer here exceeds (the busiest has
  about 20), and with a bound of 1, which drops four rows in five and so must read every key; and the same
  count over the customers table, which holds one row per customer and so needs no bounding.

The file is attached read-only, so the session proves once, on a table's first aggregate-only query, how its
rows share the customer key (the most rows of one customer, and how many customers: one GROUP BY, printed
as its own line). Then a group of at least ``10 × most`` orders rests on at least 10 customers, a bound
that covers every customer drops no row, and a table read whole rests on all its customers, with no key read.

Then, on the engine directly and at 3, 100k and 1M groups, the plan the guard writes for the per-group
entity minimum (saferoom.guard.aggregate_certified), which counts distinct customers only where a cheap
certificate cannot settle it: each group's customer keys put into 64 buckets and OR-ed into one UBIGINT,
whose popcount is a lower bound on its distinct customers (two buckets are two customers), so a popcount of
``min_group`` or more shows the group; the groups left are recounted exactly from their own rows. The buckets
are a hash of the key (keys the role sees as tokens) or, for a whole integer key, its six low bits; and the
plan the guard writes for a read-only file's table, each group's count of keys against ten times the most
orders of one customer. All are timed, and their groups checked equal to the exact HAVING's.

Usage: python bench/aggregate.py [--rows 10000000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import duckdb
import sqlglot
from timing import median_seconds, paired_for, paired_medians

import saferoom
from saferoom.engines.duckdb import key_rows_sql
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
  sam: {roles: [survey]}
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
  survey:
    columns: {key: allow}
    aggregate:
      min_group: 10
      entity: bench.customers.customer_id
      dp: {epsilon_per_query: 0.000001, budget: {epsilon: 1000}, bounds: {amount: [0, 1000]}, max_contributions: 25}
"""

GROUPED = "CREATE OR REPLACE TEMP VIEW o AS SELECT *, order_id % {groups} AS g FROM orders"
PLAIN = "SELECT g, count(*) AS n, sum(amount) AS revenue FROM o GROUP BY g"
EXACT = PLAIN + " HAVING count(DISTINCT customer_id) >= 10"


def _plan(integers: frozenset[int], most: list[int | None]) -> str:
    """A plan the guard writes, from the guard itself: hashed buckets, buckets by an integer key's low bits, or
    (``most`` given) each group's count of keys against the most rows one customer has."""
    select = sqlglot.parse_one(PLAIN + " HAVING count(customer_id) >= 10", dialect="duckdb")
    return certified_plan(select, [sqlglot.exp.column("customer_id")], 10, integers, most).sql("duckdb")


HASHED, RESIDUES = _plan(frozenset(), []), _plan(frozenset({0}), [])

SECONDS = 2.0  # each session workload is timed in pairs for at least this long

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
          saferoom.connect(policy, user="dana") as dana, saferoom.connect(policy, user="sam") as sam):
        proving = time.perf_counter()
        mo.guard(GROUP_BY)  # the first query of a table proves how its rows share the key, once (see docstring)
        proving = time.perf_counter() - proving
        for label, session, sql, target in (
            ("aggregate-only group-by (entities counted)", mo, GROUP_BY, 1.3),
            ("DP count over the orders, at most 25 rows a customer", sam, COUNT_ORDERS, 1.5),
            ("DP count over the orders, at most 1 (rows dropped)", dana, COUNT_ORDERS, None),
            ("DP count over the customers (one row each)", dana, COUNT_CUSTOMERS, 1.5),
        ):
            pairs = paired_for(lambda s=session, q=sql: s.query(q).to_arrow(), lambda q=sql: pat.query(q).to_arrow(),
                               SECONDS, least=args.repeat)  # a 1 ms query gets hundreds of pairs
            guarded, plain = (statistics.median(p[i] for p in pairs) for i in (0, 1))
            ratio = statistics.median(a / b for a, b in pairs)
            wanted = f"{target:>7.1f}×" if target else ""
            print(f"{label:<52}{plain * 1e3:>7.1f} ms{guarded * 1e3:>8.1f} ms{ratio:>7.2f}×{wanted}")
    print(f"proving once how the orders share their customer key (the first query's extra): {proving * 1e3:.0f} ms")
    certified(policy.parent / "bench.duckdb", args.repeat)


def _rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple[object, ...]]:
    return con.execute(sql).fetchall()


def certified(path: Path, repeat: int) -> None:
    """The certified plans against the plain group-by and against the exact HAVING, on the engine alone."""
    print(f"{'engine plans, groups of order_id % N':<40}{'plain':>9}{'exact':>16}{'hashed':>16}{'residues':>16}"
          f"{'rows':>16}  same groups")
    with duckdb.connect(str(path), read_only=True) as con:
        ((most, _, _),) = con.execute(key_rows_sql(("bench", "main", "orders"), "customer_id")).fetchall()
        rows = _plan(frozenset(), [most])
        for groups in (3, 100_000, 1_000_000):
            con.execute(GROUPED.format(groups=groups))
            plain = partial(_rows, con, PLAIN)
            line = f"{f'N = {groups:,}':<40}{median_seconds(plain, repeat) * 1e3:>6.0f} ms"
            for sql in (EXACT, HASHED, RESIDUES, rows):
                guarded, _, ratio = paired_medians(partial(_rows, con, sql), plain, repeat)
                line += f"{guarded * 1e3:>7.0f} ms{ratio:>6.2f}×"
            exact = sorted(r[:2] for r in _rows(con, EXACT))
            same = all(sorted(r[:2] for r in _rows(con, sql)) == exact for sql in (HASHED, RESIDUES, rows))
            print(f"{line}  {same}")
    print(f"(rows: no customer has more than {most} orders, so a group of {10 * most} keys is certified)")


if __name__ == "__main__":
    main()
