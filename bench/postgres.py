"""Fetching 1M rows from PostgreSQL: guarded through saferoom against direct fetches, same server, same run.

Starts its own PostgreSQL (initdb/pg_ctl in a temp folder, as the tests do) and prints rows per second for:
saferoom (ADBC into Arrow, through the guard), a direct ADBC fetch into Arrow, and psycopg into pandas.

Then the compiled views (`saferoom compile`): a scan of the rows with a tokenized key, and a join on that key
to a 200,000-row table, run by a login granted the compiled role, against (a) the same SQL run by the owner on
the base tables with the same inline token, and (b) the SECURITY DEFINER token function of earlier versions,
recreated here for comparison only. All over the same Unix socket.

Usage: python bench/postgres.py [--rows 1000000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))

import adbc_driver_postgresql.dbapi as dbapi
from sqlglot import exp
from timing import median_seconds, paired_medians

import saferoom
from saferoom import compile as compiler
from saferoom.engines.postgres import KeyTable, token_sql
from tests import pg

SQL = "select order_id, customer_id, amount, region, created_at from {}orders"
CUSTOMERS = 200_000

POLICY = """\
version: 1
sources: {{prod: {{engine: postgres, url: "{url}", password: env:BENCH_PG_PASSWORD}}}}
secrets: {{token_key: env:BENCH_TOKEN_KEY}}
tags: {{key: {{}}}}
tables:
  prod.orders: {{order_id: public, customer_id: key, amount: public, region: public, created_at: public}}
  prod.customers: {{customer_id: key, segment: public}}
users: {{ana: {{roles: [analyst]}}, bi: {{roles: [tokens]}}}}
roles: {{analyst: {{columns: {{key: allow}}}}, tokens: {{columns: {{key: tokenize}}}}}}
"""

COMPILED = {  # one query as the role writes it ({0}: its schema) and as the owner does ({0}: public; {1}, {2}: tokens)
    "scan, tokenized key": "select order_id, {1} as customer_id from {0}.orders as o",
    "join to 200,000 customers on the tokenized key":
        "select count(*) from (select {1} as k from {0}.orders as o) as a join (select {2} as k from {0}.customers as c) as b "
        "on a.k = b.k",
}

OLD_DESIGN = [  # what `saferoom compile` made before views computed tokens inline (a token oracle: bench only)
    "CREATE SCHEMA old", "CREATE SCHEMA old_tokens",
    "CREATE FUNCTION old.token(v anyelement) RETURNS text LANGUAGE sql STABLE SECURITY DEFINER SET search_path = '' AS "
    "$$ SELECT CAST(CAST(left(encode(sha256(s.outer_pad || sha256(s.inner_pad || convert_to(CAST(v AS text), 'UTF8'))), "
    "'hex'), 32) AS uuid) AS text) FROM saferoom.secret AS s WHERE s.id = 1 $$",
    "CREATE VIEW old_tokens.orders WITH (security_barrier) AS "
    "SELECT order_id, old.token(customer_id) AS customer_id FROM public.orders",
    "CREATE VIEW old_tokens.customers WITH (security_barrier) AS "
    "SELECT old.token(customer_id) AS customer_id FROM public.customers",
    "GRANT USAGE ON SCHEMA old, old_tokens TO bi", "GRANT EXECUTE ON FUNCTION old.token(anyelement) TO bi",
    "GRANT SELECT ON ALL TABLES IN SCHEMA old_tokens TO bi",
]


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
            cur.execute(f"CREATE TABLE customers AS SELECT i AS customer_id, (ARRAY['a', 'b', 'c'])[1 + i % 3] AS segment "
                        f"FROM generate_series(0::bigint, {CUSTOMERS - 1}) AS i")
            cur.execute("ANALYZE orders, customers")
            cur.execute("GRANT SELECT ON orders, customers TO reader")
            cur.execute("CREATE ROLE bi LOGIN")
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
        compiled = compiled_views(server, folder / "saferoom.yaml", args.repeat)
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
    print(f"\nCompiled views over {n:,} rows, as a login granted the role; medians of {args.repeat} runs, view and owner "
          f"timed in alternating pairs (view/owner: the median of the pairs' ratios); old design: median of {min(args.repeat, 3)}")
    print(f"{'':<48}{'owner, inline':>14}{'view':>9}{'view/owner':>12}{'old design':>12}{'old/view':>10}")
    for label, (view, direct, ratio, old) in compiled.items():
        print(f"{label:<48}{direct:>13.3f}s{view:>8.3f}s{ratio:>11.2f}x{old:>11.3f}s{old / view:>9.1f}x")
    print("target: view / owner <= 1.20")


def compiled_views(server: pg.Postgres, policy_path: Path, repeat: int) -> dict[str, tuple[float, float, float, float]]:
    """For each COMPILED query: seconds through the role's views, by the owner inline, their ratio, and seconds
    through the old function."""
    policy = saferoom.load_policy(policy_path)
    admin = server.admin_uri("prod")
    compiler.apply(policy, admin, None)
    with dbapi.connect(admin, autocommit=True) as conn, conn.cursor() as cur:
        for statement in OLD_DESIGN:
            cur.execute(statement)
    key = KeyTable("saferoom", "secret")
    inline = [token_sql(exp.column("customer_id", table=t), key).sql("postgres") for t in ("o", "c")]
    role_uri = f"postgresql://bi@127.0.0.1:{server.port}/prod?host={server.socket}"
    figures = {}
    with dbapi.connect(role_uri) as role, dbapi.connect(admin) as owner:
        for label, sql in COMPILED.items():
            view = fetcher(role, sql.format("saferoom_tokens", "o.customer_id", "c.customer_id"))
            old = fetcher(role, sql.format("old_tokens", "o.customer_id", "c.customer_id"))
            figures[label] = (*paired_medians(view, fetcher(owner, sql.format("public", *inline)), repeat),
                              median_seconds(old, min(repeat, 3)))
    return figures


def fetcher(conn: dbapi.Connection, sql: str) -> Callable[[], None]:
    def fetch() -> None:
        with conn.cursor() as cur:
            cur.execute(sql)
            cur.fetch_arrow_table()

    fetch()  # warm the cache
    return fetch


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
