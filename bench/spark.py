"""Guarded against direct Spark SQL on the same Parquet table, in one run (local[2]).

Prints the ratio guarded / direct for a scan into Arrow and for an aggregate (target <= 1.05 each).

Usage: python bench/spark.py [--rows 20000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).parent.parent))

from timing import median_seconds

import saferoom

DATA = Path(__file__).parent / "data" / "spark"
POLICY = """\
version: 1
sources:
  lake:
    engine: spark
    master: local[2]
    tables: {{orders: {{format: parquet, path: {path}}}}}
secrets: {{token_key: env:BENCH_TOKEN_KEY}}
tags: {{key: {{}}}}
tables:
  lake.orders: {{order_id: public, customer_id: key, amount: public, region: public}}
users: {{ana: {{roles: [analyst]}}, rita: {{roles: [reporting]}}}}
roles: {{analyst: {{columns: {{key: allow}}}}, reporting: {{columns: {{key: tokenize}}}}}}
builds:
  analytics: {{role: reporting, target: {{engine: parquet, path: {target}}}}}
"""
QUERIES = {
    "scan into Arrow": "select order_id, customer_id, amount, region from {}",
    "aggregate": "select region, count(*) as n, sum(amount) as total from {} group by region",
}


def make(rows: int) -> Path:
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / f"orders-{rows}.parquet"
    if not path.exists():
        with duckdb.connect() as con:
            con.execute(f"""COPY (SELECT range AS order_id, (range * 7919) % 200000 AS customer_id,
                round((hash(range) % 100000) / 100.0, 2)::DECIMAL(12, 2) AS amount,
                ['EU', 'US', 'APAC'][1 + (range % 3)::INT] AS region FROM range({rows})) TO '{path}' (FORMAT parquet)""")
    (DATA / "saferoom.yaml").write_text(POLICY.format(path=path, target=DATA / "analytics"))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    path = make(args.rows)
    os.environ["BENCH_TOKEN_KEY"] = "bench-key-" * 4
    os.environ.setdefault("PYSPARK_SUBMIT_ARGS", "--driver-memory 8g pyspark-shell")  # 20M rows collected into Arrow
    with saferoom.connect(DATA / "saferoom.yaml", user="ana") as session:
        spark = session._engine.session
        print(f"{args.rows:,}-row Parquet table, Spark local[2], median of {args.repeat}")
        print(f"{'':<18}{'direct':>9}{'guarded':>9}{'ratio':>8}")
        for label, sql in QUERIES.items():
            direct = lambda sql=sql: spark.sql(sql.format(f"parquet.`{path}`")).toArrow()  # noqa: E731
            guarded = lambda sql=sql: session.query(sql.format("orders")).to_arrow()  # noqa: E731
            direct(), guarded()  # warm both
            times: dict[str, list[float]] = {"direct": [], "guarded": []}
            for i in range(args.repeat):
                for name, fn in (("direct", direct), ("guarded", guarded)) if i % 2 else (("guarded", guarded), ("direct", direct)):
                    start = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - start)
            d, g = statistics.median(times["direct"]), statistics.median(times["guarded"])
            print(f"{label:<18}{d:>8.2f}s{g:>8.2f}s{g / d:>7.2f}x")
        with saferoom.connect(DATA / "saferoom.yaml", user="rita") as reporting:
            sql = "select customer_id, count(*) as n from {} group by customer_id"
            direct = median_seconds(lambda: spark.sql(sql.format(f"parquet.`{path}`")).toArrow(), args.repeat)
            tokens = "compiled kernel in the Python workers" if reporting._engine.native_tokens else "Spark SQL sha2"
            guarded = median_seconds(lambda: reporting.query(sql.format("orders")).to_arrow(), args.repeat)
            print(f"{'group by a tokenized key':<18}{direct:>8.2f}s{guarded:>8.2f}s{guarded / direct:>7.2f}x  (tokens: {tokens})")
        from saferoom.split import build

        copy = DATA / "copy"
        plain = median_seconds(lambda: spark.sql(f"select * from parquet.`{path}`").write.mode("overwrite").parquet(str(copy)), args.repeat)
        policy = saferoom.load_policy(DATA / "saferoom.yaml")
        built = median_seconds(lambda: build(policy, "analytics", full=True), args.repeat)
        print(f"{'build (tokenized key) vs CTAS copy':<36}{plain:>8.2f}s{built:>8.2f}s{built / plain:>7.2f}x")


if __name__ == "__main__":
    main()
