"""`saferoom compile` attacked from inside PostgreSQL: real logins granted each compiled role, on a real server.

A compiled role may read its views and nothing else: no token of a value it chooses, no key byte, no
filtered-out row, no other role's views, no write. Each test names the attack it stands for.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

import adbc_driver_postgresql.dbapi as dbapi
import psycopg
import pytest
from psycopg import sql

import saferoom
from saferoom import compile as compiler
from saferoom.engines.postgres import PostgresEngine
from saferoom.keyed import fingerprint_key
from saferoom.policy import Policy
from tests.conftest import HIDDEN_AMOUNT, HIDDEN_ORDER_ID, PgRoom

LOGINS = {"alice": "alice-db-pass", "ivan": "ivan-db-pass"}  # policy users: analyst, investigator
ROLES = ["saferoom_analyst", "saferoom_investigator", "saferoom_reporting"]


class Login:
    """A psql-like session of one database login, keeping the server's notices (SQL goes as bytes: psycopg
    types only literal str as a query)."""

    def __init__(self, pg_room: PgRoom, user: str) -> None:
        server = pg_room.server
        self.notices: list[str] = []
        self.conn = psycopg.connect(host="127.0.0.1", port=server.port, user=user, password=LOGINS[user],  # type: ignore[attr-defined]
                                    dbname="prod", autocommit=True)
        self.conn.add_notice_handler(lambda d: self.notices.append(d.message_primary or ""))

    def run(self, statement: str) -> None:
        self.conn.execute(statement.encode())

    def rows(self, query: str) -> list[tuple[object, ...]]:
        return self.conn.execute(query.encode()).fetchall()

    def text(self, query: str) -> str:
        return "\n".join(" ".join(str(v) for v in row) for row in self.rows(query))

    def refused(self, query: str) -> str:
        with pytest.raises(psycopg.Error) as caught:
            self.conn.execute(query.encode())
        return str(caught.value)

    def close(self) -> None:
        self.conn.close()


def admin(pg_room: PgRoom) -> psycopg.Connection[tuple[object, ...]]:
    server = pg_room.server
    return psycopg.connect(host=server.socket, port=server.port, user="postgres", dbname="prod", autocommit=True)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def compiled(pg_room: PgRoom) -> Iterator[Policy]:
    policy = saferoom.load_policy(pg_room.policy)
    with admin(pg_room) as conn:
        for user, password in LOGINS.items():
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(user), sql.Literal(password)))
    compiler.apply(policy, pg_room.server.admin_uri("prod"), None)  # type: ignore[attr-defined]
    yield policy
    compiler.apply(policy, pg_room.server.admin_uri("prod"), None, drop=True)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def guard(pg_room: PgRoom) -> Iterator[saferoom.Session]:
    """alice through saferoom's guard, on connections of this module's own (other modules crash the server)."""
    with pg_room.connect("alice") as session:
        yield session


@pytest.fixture
def alice(pg_room: PgRoom, compiled: Policy) -> Iterator[Login]:
    login = Login(pg_room, "alice")
    yield login
    login.close()


@pytest.fixture
def ivan(pg_room: PgRoom, compiled: Policy) -> Iterator[Login]:
    login = Login(pg_room, "ivan")
    yield login
    login.close()


def pads_hex(policy: Policy) -> list[str]:
    """Every key byte string that must never be readable: the token key's pads and the fingerprint key's."""
    assert policy.token_key is not None
    keys = (policy.token_key, fingerprint_key(policy.token_key))
    return [pad.hex() for key in keys for pad in compiler.key_pads(key)]


def guard_tokens(guard: saferoom.Session, limit: int = 50) -> list[str]:
    rows = guard.query(f"select customer_id from cards order by card_id limit {limit}").to_pylist()
    return [r["customer_id"] for r in rows]


def view_tokens(login: Login, limit: int = 50) -> list[str]:
    return [str(r[0]) for r in login.rows(f"select customer_id from saferoom_analyst.cards order by card_id limit {limit}")]


ORACLES = [
    "select saferoom.token(1)",
    "select saferoom.token('212-45-6789'::text)",
    "select g, saferoom.token(g) from generate_series(1, 3000) g",
    "select c.card_id, g from saferoom_analyst.cards c join generate_series(1, 3000) g on c.customer_id = saferoom.token(g)",
]


@pytest.mark.parametrize("query", ORACLES)
def test_no_role_can_tokenize_a_value_of_its_choosing(alice: Login, query: str) -> None:
    """The token oracle: computing token(1), or joining tokens against generate_series, reverses every token."""
    message = alice.refused(query)
    assert "permission denied for schema saferoom" in message or "does not exist" in message


@pytest.mark.parametrize("role", ROLES)
def test_no_function_a_compiled_role_can_execute_is_keyed(pg_room: PgRoom, compiled: Policy, role: str) -> None:
    """Discovery through pg_proc: nothing outside the built-ins that a role may run mentions tokens, keys or HMACs."""
    with admin(pg_room) as conn:
        keyed = conn.execute(
            "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND (p.proname ~* 'token|hmac|secret|pad' OR p.prosrc ~* 'token|hmac|secret|sha256|_pad') "
            "AND has_schema_privilege(%(role)s, n.oid, 'USAGE') AND has_function_privilege(%(role)s, p.oid, 'EXECUTE')",
            {"role": role}).fetchall()
        in_private = conn.execute("SELECT count(*) FROM pg_proc WHERE pronamespace = 'saferoom'::regnamespace").fetchone()
        usage = conn.execute("SELECT has_schema_privilege(%s, 'saferoom', 'USAGE')", (role,)).fetchone()
    assert keyed == [] and in_private == (0,) and usage == (False,)


PRIVATE = [
    "select * from saferoom.secret",
    "select * from saferoom.user_attributes",
    "select * from public.customers",
    "select pan from public.cards",
    "select * from public.orders",
    "select * from saferoom_investigator.customers",
    "select * from saferoom_reporting.customers",
]


@pytest.mark.parametrize("query", PRIVATE)
def test_private_tables_and_other_roles_views_are_unreadable(alice: Login, query: str) -> None:
    assert "permission denied" in alice.refused(query)


def test_a_leaky_function_sees_no_filtered_out_row(alice: Login, pg_room: PgRoom) -> None:
    """A cheap plpgsql function in pg_temp that prints its argument runs only on rows the filter lets through.
    (The view is a security_barrier, and each column is also guarded by the filter: either alone holds here.)"""
    alice.run("CREATE FUNCTION pg_temp.leak(v anyelement) RETURNS boolean LANGUAGE plpgsql COST 0.0000001 AS "
              "$$ BEGIN RAISE NOTICE 'leak:%', v; RETURN true; END $$")
    counted = alice.rows("select count(*) from saferoom_analyst.orders where pg_temp.leak(amount)")
    seen = [n for n in alice.notices if n.startswith("leak:")]
    visible = pg_room.room.raw("select count(*) from orders where region = 'EU'")[0][0]
    assert counted == [(visible,)] and len(seen) == visible
    assert not [n for n in seen if "US" in n or str(HIDDEN_ORDER_ID) in n or HIDDEN_AMOUNT in n]


def test_planted_lookalikes_in_public_do_not_change_the_views(pg_room: PgRoom, compiled: Policy, alice: Login,
                                                               guard: saferoom.Session) -> None:
    """A public.date_trunc(text, date) beats the built-in for a date under the default search_path; it would
    also run, as the querying role, on every raw birth date. Compiling must bind views to the built-ins."""
    plants = ["date_trunc(text, date) RETURNS date AS $$ SELECT date '1900-01-01' $$",
              "sha256(bytea) RETURNS bytea AS $$ SELECT '\\x00'::bytea $$",
              "byteacat(bytea, bytea) RETURNS bytea AS $$ SELECT '\\x00'::bytea $$"]
    with admin(pg_room) as conn:
        for plant in plants:
            conn.execute(f"CREATE FUNCTION public.{plant} LANGUAGE sql".encode())
        try:
            compiler.apply(compiled, pg_room.server.admin_uri("prod"), None)  # type: ignore[attr-defined]
            births = alice.rows("select birth_date from saferoom_analyst.customers order by customer_id limit 50")
            tokens = view_tokens(alice)
        finally:  # CASCADE: views that did bind to a plant go too, and are remade
            for plant in plants:
                conn.execute(f"DROP FUNCTION public.{plant.split(' RETURNS')[0]} CASCADE".encode())
            compiler.apply(compiled, pg_room.server.admin_uri("prod"), None)  # type: ignore[attr-defined]
    expected = guard.query("select birth_date from customers order by customer_id limit 50").to_pylist()
    assert [r[0] for r in births] == [r["birth_date"] for r in expected] and date(1900, 1, 1) not in {r[0] for r in births}
    assert tokens == guard_tokens(guard)


def test_a_hostile_compile_session_does_not_change_the_views(pg_room: PgRoom, compiled: Policy, alice: Login,
                                                             guard: saferoom.Session) -> None:
    """The session that compiles has public first in its search_path, a public.left look-alike, and pg_temp types
    named uuid and date: the views still compute what the guard computes, and outlive that session."""
    from saferoom.session import open_engine

    engine = open_engine(compiled)
    try:
        statements = compiler.compile_sql(compiled, engine.catalog()) + list(compiler.role_grants(compiled))
    finally:
        engine.close()
    with admin(pg_room) as conn:
        conn.execute("CREATE FUNCTION public.left(text, integer) RETURNS text LANGUAGE sql AS $$ SELECT 'planted' $$")
        try:
            with dbapi.connect(pg_room.server.admin_uri("prod")) as hostile, hostile.cursor() as cur:  # type: ignore[attr-defined]
                for setup in ("SET search_path = public, pg_catalog", "CREATE DOMAIN pg_temp.uuid AS text",
                              "CREATE DOMAIN pg_temp.date AS text"):
                    cur.execute(setup)
                compiler.run(cur, statements, compiled.token_key)
                hostile.commit()
        finally:
            conn.execute("DROP FUNCTION public.left(text, integer)")
    zips = alice.rows("select zip, birth_date from saferoom_analyst.customers order by customer_id limit 50")
    expected = guard.query("select zip, birth_date from customers order by customer_id limit 50").to_pylist()
    assert zips == [(r["zip"], r["birth_date"]) for r in expected]
    assert view_tokens(alice) == guard_tokens(guard)


def test_the_roles_own_search_path_and_pg_temp_change_nothing(alice: Login, guard: saferoom.Session) -> None:
    """pg_temp is searched first for types unless listed: a role's own pg_temp domain named uuid must neither
    change a token nor run its CHECK with anyone else's rights (it did, as the owner of a SECURITY DEFINER token)."""
    alice.run("CREATE FUNCTION pg_temp.evil(t text) RETURNS boolean LANGUAGE plpgsql AS "
               "$$ BEGIN RAISE NOTICE 'evil as %', current_user; RETURN true; END $$")
    alice.run("CREATE DOMAIN pg_temp.uuid AS text CHECK (pg_temp.evil(VALUE))")
    alice.run("CREATE DOMAIN pg_temp.text AS varchar CHECK (pg_temp.evil(VALUE))")
    alice.run("SET search_path = pg_temp, public")
    assert view_tokens(alice) == guard_tokens(guard)
    assert not [n for n in alice.notices if n.startswith("evil")]


def test_a_role_cannot_become_a_role_it_was_not_granted(alice: Login) -> None:
    alice.run("SET ROLE saferoom_analyst")  # its own role: allowed, and no wider
    assert "permission denied" in alice.refused("select * from saferoom.secret")
    alice.run("RESET ROLE")
    for other in ("saferoom_investigator", "saferoom_reporting", "postgres", "reader"):
        assert "permission denied" in alice.refused(f"SET ROLE {other}")
    assert "permission denied" in alice.refused("SET SESSION AUTHORIZATION ivan")


EXPLAINED = [
    "select customer_id from saferoom_analyst.cards",
    "select o.customer_id, count(*) from saferoom_analyst.orders o join saferoom_analyst.cards c "
    "on o.customer_id = c.customer_id group by 1",
]


@pytest.mark.parametrize("query", EXPLAINED)
def test_plans_and_view_definitions_show_no_key_bytes(alice: Login, compiled: Policy, query: str) -> None:
    shown = "\n".join([alice.text(f"EXPLAIN (VERBOSE, COSTS OFF) {query}"),
                       alice.text(f"EXPLAIN (ANALYZE, VERBOSE, COSTS OFF, TIMING OFF) {query}"),
                       alice.text("select definition from pg_views where schemaname like 'saferoom%'")])
    assert "InitPlan" in shown  # the pads are read once per query, by the view's owner
    assert not [p for p in pads_hex(compiled) if p in shown]


WRITES = [
    "insert into saferoom_{}.orders (order_id, region) values (1, 'EU')",
    "update saferoom_{}.orders set region = 'US'",
    "delete from saferoom_{}.orders",
]


@pytest.mark.parametrize("query", WRITES)
def test_views_are_read_only_for_the_role(pg_room: PgRoom, alice: Login, ivan: Login, query: str) -> None:
    """The investigator's views are plain column lists, so PostgreSQL could write through them: only the
    missing privilege stops it. (The analyst's filtered views have no updatable column at all.)"""
    with admin(pg_room) as conn:
        before = conn.execute("SELECT count(*), sum(hashtext(orders::text)) FROM public.orders").fetchone()
        assert "permission denied" in ivan.refused(query.format("investigator"))
        alice.refused(query.format("analyst"))
        assert conn.execute("SELECT count(*), sum(hashtext(orders::text)) FROM public.orders").fetchone() == before


def test_no_login_can_read_a_connected_sessions_keys(pg_room: PgRoom, compiled: Policy, alice: Login,
                                                     guard: saferoom.Session) -> None:
    """saferoom's own connections hold the token and fingerprint keys; another login, even a superuser, reads
    neither from the catalog (function bodies, view definitions), the activity view, nor their temporary table."""
    policy = compiled
    source = next(iter(policy.model.sources))
    assert policy.token_key is not None
    engine = PostgresEngine(source, policy.model.sources[source].url, policy.source_password(source), policy.token_key,
                            fingerprint_key(policy.token_key))
    try:
        assert guard_tokens(guard, 5) == view_tokens(alice, 5)
        seen = "\n".join([alice.text("select coalesce(string_agg(prosrc, ' '), '') from pg_proc"),
                          alice.text("select coalesce(string_agg(definition, ' '), '') from pg_views"),
                          alice.text("select coalesce(string_agg(query, ' '), '') from pg_stat_activity")])
        assert not [p for p in pads_hex(policy) if p in seen]
        with admin(pg_room) as conn:
            held = conn.execute("SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                                "WHERE c.relname = 'saferoom_key'").fetchall()
            assert held
            for (schema,) in held:
                with pytest.raises(psycopg.Error, match="temporary tables of other sessions"):
                    conn.execute(sql.SQL("SELECT * FROM {}.saferoom_key").format(sql.Identifier(schema)))
    finally:
        engine.close()


@pytest.mark.parametrize("query", ["select * from pg_temp.saferoom_key", "select inner_pad from saferoom_key",
                                   "select (select outer_pad from pg_temp.saferoom_key) as k from orders"])
def test_the_guard_refuses_the_sessions_key_table(guard: saferoom.Session, query: str) -> None:
    with pytest.raises(saferoom.QueryRejected):
        guard.query(query).to_arrow()


OLD_VERSION = [  # what earlier versions of `saferoom compile` left in the database, plus a view built on it
    "CREATE OR REPLACE FUNCTION saferoom.token(v anyelement) RETURNS text LANGUAGE sql STABLE SECURITY DEFINER "
    "SET search_path = '' AS $$ SELECT 'old'::text $$",
    "GRANT USAGE ON SCHEMA saferoom TO saferoom_analyst",
    "GRANT EXECUTE ON FUNCTION saferoom.token(anyelement) TO saferoom_analyst",
    "DROP VIEW saferoom_analyst.cards",
    "CREATE VIEW saferoom_analyst.cards AS SELECT card_id, saferoom.token(customer_id) AS customer_id FROM public.cards",
    "GRANT SELECT ON saferoom_analyst.cards TO saferoom_analyst",
    "CREATE SCHEMA saferoom_retired",
    "CREATE VIEW saferoom_retired.cards AS SELECT saferoom.token(customer_id) AS customer_id FROM public.cards",
]


def test_applying_over_the_old_version_converges_and_drop_removes_everything(
        pg_room: PgRoom, compiled: Policy, alice: Login, guard: saferoom.Session) -> None:
    url = pg_room.server.admin_uri("prod")  # type: ignore[attr-defined]
    with admin(pg_room) as conn:
        for statement in OLD_VERSION:
            conn.execute(statement.encode())
        assert alice.rows("select saferoom.token(1)") == [("old",)]
        compiler.apply(compiled, url, None)
        left = conn.execute("SELECT to_regprocedure('saferoom.token(anyelement)'), to_regclass('saferoom_retired.cards'), "
                            "has_schema_privilege('saferoom_analyst', 'saferoom', 'USAGE')").fetchone()
        assert left == (None, None, False)
        assert view_tokens(alice) == guard_tokens(guard)
        conn.execute("DROP SCHEMA saferoom_retired")
        compiler.apply(compiled, url, None, drop=True)
        remaining = conn.execute("SELECT (SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'saferoom%'), "
                                 "(SELECT count(*) FROM pg_roles WHERE rolname LIKE 'saferoom%')").fetchone()
        assert remaining == (0, 0)
    compiler.apply(compiled, url, None)  # as the other tests found it
