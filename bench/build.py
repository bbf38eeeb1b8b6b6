"""`saferoom build` against a plain copy of the same tables, measured side by side.

Prints rows per second, the ratio of build time to a plain `CREATE TABLE AS
SELECT *` copy on the same engine (each in its own process, so peak memory is
its own), the ratio of an incremental build with nothing changed to the full
build just before it, and the cost of one HMAC per value in DuckDB versus
Python's hashlib.

Usage: python bench/build.py [--orders 10000000] [--customers 500000]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import duckdb

DATA = Path(__file__).parent / "data" / "build"

POLICY = """\
version: 1
sources: {prod: {engine: duckdb, path: prod.duckdb}}
secrets: {token_key: file:token.key}
threats: {reidentification: A customer is re-identified}
tags: {pii: {threats: [reidentification]}, quasi: {threats: [reidentification]}, key: {}}
tables:
  prod.customers: {customer_id: key, name: pii, email: pii, birth_date: quasi, zip: quasi, segment: public}
  prod.orders: {order_id: public, customer_id: key, amount: public, region: public, created_at: public}
roles:
  analyst:
    columns: {pii: tokenize, quasi: generalize, key: tokenize}
builds:
  analytics:
    role: analyst
    target: {engine: duckdb, path: analytics.duckdb}
"""

# Both sides start with no earlier output (removing a large old file takes time of its own) and end
# with their connection closed.
CHILD_BUILD = """
import json, resource, sys, time, saferoom
from pathlib import Path
from saferoom.split import build
(Path(sys.argv[1]).parent / "analytics.duckdb").unlink(missing_ok=True)
start = time.perf_counter()
manifest = build(saferoom.load_policy(sys.argv[1]), "analytics", full=True)
print(json.dumps({"seconds": time.perf_counter() - start, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rows": sum(t.rows_out for t in manifest.tables), "fingerprints": manifest.fingerprints["values"]}))
"""

# Right after a full build, with the sources unchanged: what the nightly rebuild costs on a quiet night.
CHILD_INCREMENTAL = """
import json, resource, sys, time, saferoom
from saferoom.split import build
start = time.perf_counter()
manifest = build(saferoom.load_policy(sys.argv[1]), "analytics")
print(json.dumps({"seconds": time.perf_counter() - start, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "carried": sum(t.carried_over for t in manifest.tables), "tables": len(manifest.tables)}))
"""

CHILD_COPY = """
import json, resource, sys, time, duckdb
from pathlib import Path
folder = Path(sys.argv[1]); target = folder / "copy.duckdb"; target.unlink(missing_ok=True)
start = time.perf_counter()
con = duckdb.connect(":memory:", config={"preserve_insertion_order": False})
con.execute(f"attach '{folder / 'prod.duckdb'}' as prod (read_only)")
con.execute(f"attach '{target}' as copy")
for table in ("customers", "orders"):
    con.execute(f"create table copy.main.{table} as select * from prod.main.{table}")
con.execute("detach copy")
con.close()
print(json.dumps({"seconds": time.perf_counter() - start, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make(orders: int, customers: int) -> Path:
    DATA.mkdir(parents=True, exist_ok=True)
    marker = DATA / f".size-{orders}-{customers}"
    if marker.exists():
        return DATA / "saferoom.yaml"
    for old in DATA.iterdir():
        old.unlink() if old.is_file() else None
    with duckdb.connect(str(DATA / "prod.duckdb")) as con:
        con.execute(f"""create table customers as select range as customer_id,
            'First' || (range % 997) || ' Last' || (range % 1009) as name,
            'user' || range || '@example.com' as email,
            date '1940-01-01' + (hash(range) % 24000)::int as birth_date,
            lpad(((hash(range * 7) % 99999))::varchar, 5, '0') as zip,
            ['retail', 'premium', 'business'][1 + (range % 3)::int] as segment
            from range({customers})""")
        con.execute(f"""create table orders as select range as order_id, (hash(range) % {customers})::bigint as customer_id,
            round((hash(range * 3) % 100000) / 100.0, 2)::decimal(12, 2) as amount,
            ['EU', 'US', 'APAC'][1 + (range % 3)::int] as region,
            timestamp '2024-01-01' + to_seconds((hash(range * 5) % 31536000)::bigint) as created_at
            from range({orders})""")
    (DATA / "token.key").write_text("bench-key-" * 4)
    (DATA / "saferoom.yaml").write_text(POLICY)
    marker.touch()
    return DATA / "saferoom.yaml"


def child(code: str, arg: str) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", code, arg], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def hmac_per_value(n: int) -> tuple[float, float, float]:
    """Seconds per value over the same column: DuckDB's SQL macro, the compiled kernel in DuckDB, hashlib in a loop."""
    from saferoom import keyed
    from saferoom.keyed import token_macro
    from saferoom.secrets import Secret

    key = "bench-key-" * 4
    values = [str(i) for i in range(n)]
    start = time.perf_counter()
    for value in values:
        hmac.new(key.encode(), value.encode(), hashlib.sha256).digest()
    python = (time.perf_counter() - start) / n
    con = duckdb.connect()
    con.execute(f"create table v as select range::varchar as v from range({n})")
    con.execute(token_macro(Secret(key)))
    start = time.perf_counter()
    con.execute("select count(__saferoom_token(v)) from v").fetchall()
    macro = (time.perf_counter() - start) / n
    native = float("nan")
    if keyed.available():
        keyed.register(con, "native_token", Secret(key), keyed.TOKEN_BYTES)
        start = time.perf_counter()
        con.execute("select count(native_token(v)) from v").fetchall()
        native = (time.perf_counter() - start) / n
    return macro, native, python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=10_000_000)
    parser.add_argument("--customers", type=int, default=500_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    policy = make(args.orders, args.customers)
    rows = args.orders + args.customers
    builds, copies, incrementals = [], [], []
    for _ in range(args.repeat):
        copies.append(child(CHILD_COPY, str(DATA)))
        builds.append(child(CHILD_BUILD, str(policy)))
        incrementals.append(child(CHILD_INCREMENTAL, str(policy)))
    b = min(builds, key=lambda r: r["seconds"])
    c = min(copies, key=lambda r: r["seconds"])
    i = min(incrementals, key=lambda r: r["seconds"])
    print(f"saferoom build of {rows:,} rows ({args.orders:,} orders, {args.customers:,} customers), best of {args.repeat}")
    print(f"{'':<28}{'seconds':>9}{'rows/s':>14}{'peak RSS':>11}")
    print(f"{'plain CREATE TABLE AS copy':<28}{c['seconds']:>9.2f}{rows / c['seconds']:>14,.0f}{c['rss_mb']:>8.0f} MB")
    print(f"{'saferoom build':<28}{b['seconds']:>9.2f}{rows / b['seconds']:>14,.0f}{b['rss_mb']:>8.0f} MB")
    print(f"{'incremental, nothing changed':<28}{i['seconds']:>9.2f}{'':>14}{i['rss_mb']:>8.0f} MB")
    print(f"build / copy: {b['seconds'] / c['seconds']:.2f}×  ({b['fingerprints']:,} fingerprints written)")
    print(f"incremental / full build: {i['seconds'] / b['seconds']:.3f}×  ({i['carried']} of {i['tables']} tables carried over)")
    macro, native, python = hmac_per_value(2_000_000)
    threads = duckdb.execute("select current_setting('threads')").fetchall()[0][0]
    print(f"HMAC-SHA256 per value (DuckDB, {threads} threads): "
          f"SQL macro {macro * 1e9:.0f} ns, compiled kernel {native * 1e9:.0f} ns ({macro / native:.1f}× faster); "
          f"Python hashlib loop {python * 1e9:.0f} ns ({python / native:.1f}× the kernel)")
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
