"""PostgreSQL as a source: the same guard, the same tokens, the same red team, on a real server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import saferoom
from saferoom.errors import EngineError
from tests.leaks import assert_refused_or_harmless
from tests.pg import READER_PASSWORD
from tests.test_redteam import ATTACKS

PG_ATTACKS = [
    "select pg_read_file('/etc/passwd')",
    "select * from pg_read_file('postgresql.conf')",
    "copy (select * from customers) to program 'cat > /tmp/x'",
    "copy customers to '/tmp/x.csv'",
    "select set_config('default_transaction_read_only', 'off', false)",
    "select current_setting('data_directory')",
    "select * from dblink('dbname=prod', 'select pan from cards') as t(pan text)",
    "select lo_import('/etc/passwd')",
    "select lo_export(1, '/tmp/x')",
    "select ctid, xmin, * from orders",
    "select xmin from cards",
    "select * from orders for update",
    "select * from orders for share",
    "select pg_sleep(10)",
    "select pg_terminate_backend(1)",
    "select nextval('seq')",
    "select * from pg_catalog.pg_shadow",
    "select * from pg_stat_activity",
    "select usename, passwd from pg_user",
    "select * from public.cards",
    "select * from prod.public.cards where pan like '4%'",
    "select version()",
    "select current_user, session_user",
    "select inet_server_addr()",
    "select txid_current()",
    "select query_to_xml('select pan from cards', true, true, '')",
    "do $$ begin perform 1; end $$",
    "select * from orders; set role postgres",
]


@pytest.mark.parametrize("sql", ATTACKS + PG_ATTACKS)
def test_attack_on_postgres_is_refused_or_harmless(pg_alice, secrets_of, room, sql: str) -> None:
    assert_refused_or_harmless(pg_alice, sql, secrets_of, room.key, unseen=(READER_PASSWORD,))


def test_denied_column_is_explained_on_postgres(pg_alice) -> None:
    with pytest.raises(saferoom.QueryRejected) as caught:
        pg_alice.query("select pan from cards").to_arrow()
    assert caught.value.column == "prod.cards.pan" and "card-theft" in str(caught.value)


def test_numbers_match_the_source(pg_alice, room) -> None:
    got = pg_alice.query("select region, count(*) as n, sum(amount) as s from orders group by 1 order by 1").to_pylist()
    expected = room.raw("select region, count(*), sum(amount) from orders where region = 'EU' group by 1 order by 1")
    assert [(r["region"], r["n"], r["s"]) for r in got] == expected


def test_tokens_equal_duckdbs(pg_alice, alice) -> None:
    sql = "select card_id, customer_id from cards order by card_id"
    assert pg_alice.query(sql).to_pylist() == alice.query(sql).to_pylist()
    sql = "select name, email, ssn from customers order by customer_id limit 200"
    assert pg_alice.query(sql).to_pylist() == alice.query(sql).to_pylist()


def test_generalize_and_mask_match_duckdbs(pg_room, ivan) -> None:
    with pg_room.connect("ivan") as pg_ivan:
        sql = "select card_id, pan from cards order by card_id limit 100"
        assert pg_ivan.query(sql).to_pylist() == ivan.query(sql).to_pylist()
    with pg_room.connect("alice") as pg_alice2:
        rows = pg_alice2.query("select birth_date, zip from customers order by customer_id limit 100").to_pylist()
    assert {r["birth_date"].day for r in rows} == {1} and {len(r["zip"]) for r in rows} == {3}


def test_filtered_rows_never_raise_on_postgres(pg_alice, room) -> None:
    sql = "select count(*) as n from orders where cast(case when region = 'US' then 'x' else '1' end as integer) = 1"
    assert pg_alice.query(sql).to_pylist() == [{"n": room.raw("select count(*) from orders where region = 'EU'")[0][0]}]


def test_postgres_session_is_read_only_underneath(pg_alice) -> None:
    engine = pg_alice._engine
    for sql in ("insert into public.orders (order_id) values (1)", "create table public.x (a int)",
                "select set_config('default_transaction_read_only', 'off', false); insert into public.orders (order_id) values (1)"):
        with pytest.raises(EngineError):
            engine.stream(sql).read_all()


def test_wrong_password_is_a_clear_error_without_the_password(pg_room, monkeypatch) -> None:
    monkeypatch.setenv("SAFEROOM_TEST_PG_PASSWORD", "not-the-password-9f2")
    with pytest.raises(EngineError) as caught:
        pg_room.connect("alice")
    assert "not-the-password-9f2" not in str(caught.value) and "authentication" in str(caught.value).lower()


def test_lint_compares_with_the_live_catalog(pg_room) -> None:
    from saferoom.lint import lint
    from saferoom.session import open_engine

    policy = saferoom.load_policy(pg_room.policy)
    engine = open_engine(policy)
    try:
        findings = lint(policy, engine.catalog(), engine.spec.default_schema)
    finally:
        engine.close()
    assert [(f.level, f.table, f.column) for f in findings] == [("warning", "prod.customers", "internal_score")]


def psql(pg_room, user: str, password: str, sql: str) -> subprocess.CompletedProcess[str]:
    server = pg_room.server
    env = {**os.environ, "PGPASSWORD": password}
    client = server.bin / "psql" if (server.bin / "psql").exists() else Path(shutil.which("psql") or "psql")
    return subprocess.run([str(client), "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(server.port), "-U", user,
                           "-d", "prod", "-v", "ON_ERROR_STOP=1", "-c", sql], capture_output=True, text=True, env=env, check=False)


def test_compiled_views_show_what_the_guard_shows(pg_room, pg_alice, room) -> None:
    import adbc_driver_postgresql.dbapi as dbapi

    from saferoom import compile as compiler

    policy = saferoom.load_policy(pg_room.policy)
    admin = pg_room.server.admin_uri("prod")
    with dbapi.connect(pg_room.server.admin_uri(), autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'alice') THEN "
                    "CREATE ROLE alice LOGIN PASSWORD 'alice-db-pass'; END IF; END $$")
    for _ in range(2):  # idempotent
        compiler.apply(policy, admin, None)
    sql = "select region, count(*) from {}orders group by 1 order by 1"
    shown = psql(pg_room, "alice", "alice-db-pass", sql.format("saferoom_analyst."))
    assert shown.returncode == 0, shown.stderr
    guard = pg_alice.query(sql.format("")).to_pylist()
    assert shown.stdout.split() == [f"{r['region']}|{r['count_star()'] if 'count_star()' in r else r['count']}" for r in guard]
    tokens = psql(pg_room, "alice", "alice-db-pass", "select customer_id from saferoom_analyst.cards order by card_id limit 5")
    assert tokens.stdout.split() == [r["customer_id"] for r in pg_alice.query("select customer_id from cards order by card_id limit 5").to_pylist()]
    for forbidden in ("select * from public.orders", "select * from saferoom.secret", "select pan from saferoom_analyst.cards",
                      "select * from saferoom.user_attributes"):
        refused = psql(pg_room, "alice", "alice-db-pass", forbidden)
        assert refused.returncode != 0, forbidden
    printed = subprocess.run([sys.executable, "-c", "from saferoom.cli import main; main()", "compile", "-p", str(pg_room.policy)],
                             capture_output=True, text=True, check=False)
    assert printed.returncode == 0, printed.stderr
    assert "CREATE VIEW" in printed.stdout and room.key not in printed.stdout
    from saferoom.compile import key_pads

    assert all(p.hex() not in printed.stdout for p in key_pads(policy.token_key))
    compiler.apply(policy, admin, None, drop=True)
    gone = psql(pg_room, "alice", "alice-db-pass", "select 1 from saferoom_analyst.orders")
    assert gone.returncode != 0 and "does not exist" in gone.stderr


def test_cli_lint_on_postgres(pg_room) -> None:
    env = {**os.environ, "SAFEROOM_TEST_PG_PASSWORD": os.environ["SAFEROOM_TEST_PG_PASSWORD"]}
    done = subprocess.run([sys.executable, "-c", "from saferoom.cli import main; main()", "lint", "-p", str(pg_room.policy)],
                          capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "internal_score" in done.stdout and READER_PASSWORD not in done.stdout + done.stderr


def test_build_from_postgres_matches_the_duckdb_build(pg_room, room, tmp_path: Path) -> None:
    import duckdb

    from saferoom.keyed import fingerprint_key
    from saferoom.split import build, fingerprints
    from tests.conftest import CANARY_NAME, CANARY_PAN

    text = pg_room.policy.read_text() + (
        "builds:\n  analytics:\n    role: reporting\n"
        f"    target: {{engine: duckdb, path: {tmp_path / 'analytics.duckdb'}}}\n"
        "    k_anonymity: {columns: [birth_date, zip], k: 5, on_violation: suppress}\n"
    )
    (tmp_path / "saferoom.yaml").write_text(text)
    policy = saferoom.load_policy(tmp_path / "saferoom.yaml")
    manifest = build(policy, "analytics")
    tables = {t.table: t for t in manifest.tables}
    assert tables["prod.orders"].rows_out == room.raw("select count(*) from orders")[0][0]
    assert tables["prod.customers"].k_anonymity["rows_suppressed"] > 0
    data = (tmp_path / "analytics.duckdb").read_bytes()
    assert CANARY_NAME.encode() not in data and CANARY_PAN.encode() not in data
    with duckdb.connect(str(tmp_path / "analytics.duckdb"), read_only=True) as con:
        built = {str(t) for (t,) in con.execute("select customer_id from cards").fetchall()}
    assert built == {room.token(c) for (c,) in room.raw("select customer_id from cards")}
    _, sections = fingerprints.read(tmp_path / "analytics.duckdb.fingerprints")
    probes = fingerprints.fingerprint(fingerprint_key(policy.token_key), [CANARY_NAME, CANARY_PAN, "Nobody Atall"])
    assert fingerprints.contains(sections, probes).tolist() == [True, True, False]
    again = build(policy, "analytics")
    assert all(t.carried_over for t in again.tables)


def test_gateway_serves_a_postgres_source(pg_room, pg_alice, tmp_path: Path) -> None:
    from saferoom.client import RemoteSession
    from tests.gateway_helpers import Server, free_port

    server = Server(pg_room.policy, tmp_path / "state", free_port(), tmp_path / "server.log").start()
    try:
        with RemoteSession(server.url, server.token("alice")) as remote:
            sql = "select region, count(*) as n, sum(amount) as total from orders group by 1 order by 1"
            assert remote.query(sql).to_pylist() == pg_alice.query(sql).to_pylist()
            with pytest.raises(saferoom.QueryRejected):
                remote.query("select pg_read_file('/etc/passwd')")
    finally:
        server.stop()
    assert READER_PASSWORD not in server.log.read_text()


def test_a_dead_database_is_a_clear_error_and_the_session_recovers(pg_room) -> None:
    from tests import pg

    sql = "select count(*) as n from orders"
    with saferoom.connect(pg_room.policy, user="alice") as session:
        before = session.query(sql).to_arrow().to_pylist()
        session.query("select 1 as x").to_arrow()  # a second pooled connection
        pg_room.server.crash()
        try:
            for _ in range(2):
                with pytest.raises(saferoom.EngineError) as caught:
                    session.query(sql).to_arrow()
                assert pg.READER_PASSWORD not in str(caught.value) and "postgresql://" not in str(caught.value)
        finally:
            pg_room.server.resume()
        assert session.query(sql).to_arrow().to_pylist() == before  # no dead pooled connection is reused


def test_a_build_from_a_dead_database_fails_clearly_and_keeps_the_last_good_one(pg_room, tmp_path: Path) -> None:
    from saferoom.split import build
    from tests import pg

    text = pg_room.policy.read_text() + (
        f"builds:\n  analytics:\n    role: analyst\n    target: {{engine: duckdb, path: {tmp_path / 'analytics.duckdb'}}}\n")
    (tmp_path / "saferoom.yaml").write_text(text)
    policy = saferoom.load_policy(tmp_path / "saferoom.yaml")
    good = build(policy, "analytics")
    before = (tmp_path / "analytics.duckdb").read_bytes()
    pg_room.server.crash()
    try:
        with pytest.raises(saferoom.SaferoomError) as caught:
            build(policy, "analytics", full=True)
    finally:
        pg_room.server.resume()
    assert isinstance(caught.value, EngineError) and "cannot connect to PostgreSQL" in str(caught.value)
    assert pg.READER_PASSWORD not in str(caught.value)
    assert (tmp_path / "analytics.duckdb").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if ".building-" in p.name]
    assert json.loads((tmp_path / "analytics.duckdb.manifest.json").read_text())["build_id"] == good.build_id
