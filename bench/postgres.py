"""Fetching 1M rows from PostgreSQL: guarded through saferoom against direct fetches, same server, same run.

Starts its own PostgreSQL (initdb/pg_ctl in a temp folder, as the tests do) and prints rows per second for:
saferoom (ADBC into Arrow, through the guard), a direct ADBC fetch into Arrow, and psycopg into pandas.

Usage: python bench/postgres.py [--rows 1000000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))

import adbc_driver_postgresql.dbapi as dbapi
from timing import median_seconds

import saferoom
from tests import pg

SQL = "select order_id, customer_id, amount, region, created_at from {}orders"

POLICY = """\
version: 1
sources: {{prod: {{engine: postgres, url: "{url}", password: env:BENCH_PG_PASSWORD}}}}
secrets: {{token_key: env:BENCH_TOKEN_KEY}}
tags: {{key: {{}}}}
tables:
  prod.orders: {{order_id: public, customer_id: public, amount: public, region: public, created_at: public}}
users: {{ana: {{roles: [analyst]}}}}
roles: {{analyst: {{columns: {{}}}}}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    server = pg.start_with_reader()
    try:
        with dbapi.connect(server.admin_uri("prod"), autocommit=True) as conn, conn.cursor() as cur:
            cur.execute(f"""CREATE TABLE orders AS SELECT i AS order_id, (i * 7919) % 200000 AS customer_id,
                round(((i * 31) % 100000) / 100.0, 2)::numeric(12, 2) AS amount,
                (ARRAY['EU', 'US', 'APAC'])[1 + i % 3] AS region,
                timestamp '2024-01-01' + make_interval(secs => (i * 17) % 31536000) AS created_at
                FROM generate_series(1::bigint, {args.rows}) AS i""")
            cur.execute("GRANT SELECT ON orders TO reader")
        os.environ.update({"BENCH_PG_PASSWORD": pg.READER_PASSWORD, "BENCH_TOKEN_KEY": "bench-key-" * 4})
        folder = Path(tempfile.mkdtemp())
        (folder / "saferoom.yaml").write_text(POLICY.format(url=server.reader_url()))
        reader_uri = server.reader_url().replace("reader@", f"reader:{pg.READER_PASSWORD}@")
        with saferoom.connect(folder / "saferoom.yaml", user="ana") as session, dbapi.connect(reader_uri) as direct:
            session.query(SQL.format("")).to_arrow()

            def adbc() -> None:
                with direct.cursor() as cur:
                    cur.execute(SQL.format("public."))
                    cur.fetch_arrow_table()

            guarded = median_seconds(lambda: session.query(SQL.format("")).to_arrow(), args.repeat)
            plain = median_seconds(adbc, args.repeat)
            psycopg_s = psycopg_pandas(server, args.repeat)
    finally:
        server.stop()
    n = args.rows
    print(f"Fetch {n:,} rows from PostgreSQL over 127.0.0.1, median of {args.repeat}")
    print(f"{'':<36}{'seconds':>9}{'rows/s':>14}")
    for label, seconds in (("saferoom, guarded (ADBC -> Arrow)", guarded), ("direct ADBC -> Arrow", plain),
                           ("direct psycopg -> pandas", psycopg_s)):
        print(f"{label:<36}{seconds:>9.3f}{n / seconds:>14,.0f}")
    print(f"guarded / direct ADBC: {guarded / plain:.2f}x time (target <= 1.10); "
          f"direct ADBC is {psycopg_s / plain:.1f}x faster than psycopg into pandas")


def psycopg_pandas(server: pg.Postgres, repeat: int) -> float:
    try:
        import pandas
        import psycopg
    except ImportError:
        return float("nan")
    dsn = f"host=127.0.0.1 port={server.port} dbname=prod user=reader password={pg.READER_PASSWORD}"
    with psycopg.connect(dsn) as conn:

        def fetch() -> None:
            with conn.cursor() as cur:
                cur.execute(SQL.format("public."))
                pandas.DataFrame(cur.fetchall(), columns=[c.name for c in cur.description])

        return median_seconds(fetch, repeat)


if __name__ == "__main__":
    main()
