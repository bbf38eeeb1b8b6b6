"""Row filters that read other tables: checked at load, enforced on DuckDB and PostgreSQL, unreachable by queries.

A bank keeps its entitlements in mapping tables: orders of customers in my region, accounts my team owns.
The filter reads the raw mapping table with the policy's access; the user's query can neither read what
the filter reads (a denied column stays denied) nor reach into the filter (a CTE, an alias or a correlated
column of the query never binds inside it), nor learn its text from errors, explain output or column names.
"""

from __future__ import annotations

import doctest
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

import saferoom
from saferoom.engines.duckdb import DUCKDB
from saferoom.engines.postgres import POSTGRES
from saferoom.errors import PolicyError, QueryRejected, SaferoomError
from saferoom.guard.check_nodes import check_filters
from saferoom.guard.views import build_view
from saferoom.policy import Policy, filter_reads, load_policy, parse_policy

FIXTURES = Path(__file__).parent / "fixtures" / "guard"
ROWS = {
    "customers": ("customer_id INTEGER, name VARCHAR, region VARCHAR",
                  [(1, "Ann", "EU"), (2, "Bob", "US"), (3, "Cy", "EU"), (4, "Di", "APAC")]),
    "orders": ("order_id INTEGER, customer_id INTEGER, amount INTEGER",
               [(10, 1, 100), (11, 2, 200), (12, 3, 300), (13, 4, 400), (14, 1, 500), (15, 2, 600)]),
    "accounts": ("account_id INTEGER, owner VARCHAR, balance INTEGER",
                 [(100, "Ann", 10), (101, "Bob", 20), (102, "Cy", 30), (103, "Di", 40)]),
    "team_accounts": ("team VARCHAR, account_id INTEGER, note VARCHAR",
                      [("fx", 100, "watch-list"), ("fx", 102, "vip"), ("rates", 101, "plain"), ("rates", 103, "plain")]),
    "limits": ("team VARCHAR, max_balance INTEGER", [("fx", 25), ("rates", 100)]),
}
SECRET_NOTES = ("watch-list", "vip")

POLICY = """\
version: 1
sources: {prod: {engine: duckdb, path: prod.duckdb}}
tags: {pii: {}, internal: {}}
tables:
  prod.customers: {customer_id: public, name: pii, region: internal}
  prod.orders: {order_id: public, customer_id: public, amount: public}
  prod.accounts: {account_id: public, owner: pii, balance: public}
  prod.team_accounts: {team: internal, account_id: public, note: internal}
  prod.limits: {team: internal, max_balance: internal}
users:
  alice: {roles: [analyst], attributes: {region: EU}}
  tom: {roles: [teller], attributes: {team: fx}}
  rae: {roles: [teller], attributes: {team: rates}}
  nobody: {roles: [analyst]}
  eve: {roles: [teller], attributes: {team: "fx' OR 'x' = 'x"}}
roles:
  analyst:
    columns: {pii: deny, internal: deny}
    rows:
      prod.orders: "customer_id IN (SELECT customer_id FROM prod.customers WHERE region = {user.region})"
  teller:
    columns: {pii: allow, internal: deny}
    rows:
      prod.accounts: >-
        EXISTS (SELECT 1 FROM prod.team_accounts AS m WHERE m.account_id = accounts.account_id AND m.team = {user.team})
        AND balance <= (SELECT max_balance FROM prod.limits WHERE team = {user.team})
"""

# what each user may see, worked out by hand from ROWS
EXPECTED = {
    ("alice", "select order_id, amount from orders order by order_id"): [(10, 100), (12, 300), (14, 500)],
    ("nobody", "select order_id from orders"): [],
    ("tom", "select account_id, owner, balance from accounts order by account_id"): [(100, "Ann", 10)],
    ("rae", "select account_id, owner, balance from accounts order by account_id"): [(101, "Bob", 20), (103, "Di", 40)],
    ("alice", "select count(*) from orders o join customers c using (customer_id)"): [(3,)],
    ("tom", "select sum(balance) from accounts"): [(10,)],
    ("eve", "select account_id from accounts"): [],  # her attribute is one quoted value, never SQL
}


def write_duckdb(path: Path) -> None:
    with duckdb.connect(str(path)) as con:
        for table, (columns, rows) in ROWS.items():
            con.execute(f"CREATE TABLE {table} ({columns})")
            con.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(rows[0]))})", rows)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("filter-reads")
    write_duckdb(folder / "prod.duckdb")
    (folder / "saferoom.yaml").write_text(POLICY)
    return folder


@pytest.fixture(scope="module")
def policy(folder: Path) -> Policy:
    return load_policy(folder / "saferoom.yaml")


@pytest.fixture(scope="module")
def sessions(folder: Path) -> Iterator[dict[str, saferoom.Session]]:
    opened = {user: saferoom.connect(folder / "saferoom.yaml", user=user) for user in ("alice", "tom", "rae", "nobody", "eve")}
    try:
        yield opened
    finally:
        for session in opened.values():
            session.close()


def rows(session: saferoom.Session, sql: str) -> list[tuple[object, ...]]:
    table = session.query(sql).to_arrow()
    return list(zip(*(c.to_pylist() for c in table.columns), strict=True)) if table.num_columns else []


# ---- the policy: what loads, and what is refused with a message naming the line


def broken(change: tuple[str, str]) -> str:
    assert change[0] in POLICY
    return POLICY.replace(*change)


ORDERS_FILTER = "customer_id IN (SELECT customer_id FROM prod.customers WHERE region = {user.region})"
REFUSED = [
    (("FROM prod.customers WHERE", "FROM prod.customer WHERE"), "reads table `prod.customer`, which is not under `tables:`"),
    (("SELECT customer_id FROM prod.customers", "SELECT customer_id FROM customers"), "reads table `customers`"),
    (("WHERE region = {user.region}", "WHERE regoin = {user.region}"), "regoin"),
    (("SELECT customer_id FROM prod.customers", "SELECT birthday FROM prod.customers"), "birthday"),
    ((ORDERS_FILTER, "customer_id IN (WITH c AS (SELECT customer_id FROM prod.customers) SELECT * FROM c)"), "may not use WITH"),
    ((ORDERS_FILTER, "customer_id IN (SELECT customer_id FROM read_csv('/etc/passwd'))"), "table functions"),
    ((ORDERS_FILTER, "customer_id IN (SELECT customer_id FROM prod.orders)"), "give each its own alias"),
]


@pytest.mark.parametrize("change, message", REFUSED)
def test_a_filter_reading_an_unknown_table_or_column_is_refused_at_load(change: tuple[str, str], message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(broken(change))
    assert message in str(caught.value)
    assert caught.value.line == POLICY.splitlines().index("    rows:") + 2  # the analyst's filter line


def test_filters_reading_each_other_in_a_loop_are_refused_naming_the_loop() -> None:
    loop = POLICY.replace(
        "      prod.orders:",
        '      prod.customers: "customer_id IN (SELECT customer_id FROM prod.orders AS o WHERE o.amount > 0)"\n'
        "      prod.orders:")
    with pytest.raises(PolicyError) as caught:
        parse_policy(loop)
    assert "read each other in a loop: prod.customers → prod.orders → prod.customers" in str(caught.value)


def test_a_filter_that_reads_its_own_raw_table_is_no_loop() -> None:
    own = POLICY.replace(ORDERS_FILTER, "amount < (SELECT max(o.amount) FROM prod.orders AS o)")
    assert parse_policy(own).filter_reads("analyst", "prod.orders") == ("prod.orders",)


def test_a_filter_reading_another_source_is_refused() -> None:
    other = POLICY.replace("sources: {prod: {engine: duckdb, path: prod.duckdb}}",
                           "sources: {prod: {engine: duckdb, path: prod.duckdb}, hr: {engine: duckdb, path: hr.duckdb}}")
    other = other.replace("  prod.limits:", "  hr.regions: {region: internal}\n  prod.limits:")
    other = other.replace("FROM prod.customers WHERE region = {user.region})",
                          "FROM prod.customers WHERE region IN (SELECT region FROM hr.regions))")
    with pytest.raises(PolicyError) as caught:
        parse_policy(other)
    assert "reads `hr.regions` of source `hr`; a filter may read only tables of its own table's source (`prod`)" in str(caught.value)


def test_a_filter_calling_a_function_off_the_allowlist_is_refused_when_the_engine_opens() -> None:
    policy = parse_policy(broken(("WHERE region = {user.region}", "WHERE region = getenv('HOME')")))
    with pytest.raises(PolicyError) as caught:
        check_filters(policy, DUCKDB)
    assert "getenv" in str(caught.value) and caught.value.line is not None


def test_the_modules_examples_run() -> None:
    failed, attempted = doctest.testmod(filter_reads)
    assert attempted >= 3 and not failed


# ---- golden SQL out, per engine


def golden() -> list[tuple[str, str, str, str]]:
    text = "\n".join(line for line in (FIXTURES / "filter_reads.sql").read_text().splitlines() if not line.startswith("--"))
    return [tuple(block.strip().split("\n")[0].split()) + (block.strip().split("\n")[1],)  # type: ignore[misc]
            for block in text.strip().split("\n\n")]


TYPES = {table: {c.split()[0]: c.split()[1] for c in columns.split(", ")} for table, (columns, _) in ROWS.items()}


@pytest.mark.parametrize("engine, user, table, expected", golden())
def test_the_view_of_a_table_filtered_via_another_is_golden(policy: Policy, engine: str, user: str, table: str, expected: str) -> None:
    spec = {"duckdb": DUCKDB, "postgres": POSTGRES}[engine]
    role = policy.user(user).roles[0]
    view = build_view(policy, role, policy.user(user).attributes, policy.tables[table], TYPES[table.split(".")[1]], spec)
    assert view.sql(spec.dialect) == expected


# ---- answers


@pytest.mark.parametrize(("user", "sql"), list(EXPECTED))
def test_filtered_answers_are_the_rows_the_mapping_tables_grant(sessions: dict[str, saferoom.Session], user: str, sql: str) -> None:
    assert rows(sessions[user], sql) == EXPECTED[(user, sql)]


def test_the_decision_says_which_tables_the_filter_reads_without_its_text_or_values(sessions: dict[str, saferoom.Session]) -> None:
    decision = sessions["tom"].explain("select * from accounts")
    table = decision.tables[0]
    assert table.row_filter == "a condition that reads prod.team_accounts, prod.limits"
    said = json.dumps(decision.to_dict()) + str(decision)
    assert "fx" not in said and "max_balance" not in said and "EXISTS" not in said.upper()
    notices = sessions["tom"].query("select * from accounts").notices
    assert notices == ("rows of prod.accounts are filtered for role teller by a condition that reads prod.team_accounts, prod.limits",)


# ---- the red team: can the user's query see, shadow or steer what the filter reads?

ATTACKS = {
    # the mapping table's denied columns stay denied, in every way of asking
    "select team, note from team_accounts": "REFUSED",
    "select account_id from accounts where account_id in (select account_id from team_accounts where team = 'fx')": "REFUSED",
    "select * from team_accounts": [(100,), (101,), (102,), (103,)],
    "select max_balance from limits": "REFUSED",
    # a CTE or alias named like the filter's tables reads the query's own rows, never the filter's
    "with team_accounts as (select 'fx' as team, account_id from accounts) select account_id from accounts order by 1": [(100,)],
    "with limits as (select 'fx' as team, 1000 as max_balance) select account_id from accounts order by 1": [(100,)],
    "with m as (select 1 as account_id, 'fx' as team) select a.account_id from accounts a, m order by 1": [(100,)],
    "select m.account_id from accounts as m order by 1": [(100,)],
    # the reserved aliases cannot be written
    "select __saferoom_f0.account_id from accounts": "REFUSED",
    "select * from accounts as __saferoom_f0": "REFUSED",
    "select __saferoom_ok from accounts": "REFUSED",
    # correlated references from the query never bind inside the filter
    "select (select count(*) from accounts where accounts.account_id = t.account_id) from team_accounts t order by 1": [(0,), (0,), (0,), (1,)],
    "select count(*) from accounts where exists (select 1 from team_accounts m where m.account_id = accounts.account_id)": [(1,)],
    "select a.account_id from team_accounts m join accounts a on a.account_id = m.account_id": [(100,)],
    "select a.account_id from team_accounts t, lateral (select account_id from accounts where accounts.account_id = t.account_id) a": [(100,)],
    # no row the filter removes reaches an early-evaluated predicate
    "select count(*) from accounts where 100 / (balance - 20) <> 7": [(1,)],
}


@pytest.mark.parametrize("sql", list(ATTACKS))
def test_the_users_query_cannot_reach_into_the_filter(sessions: dict[str, saferoom.Session], sql: str) -> None:
    tom = sessions["tom"]
    expected = ATTACKS[sql]
    if expected == "REFUSED":
        with pytest.raises(QueryRejected) as caught:
            tom.query(sql)
        assert_silent(str(caught.value))
        return
    if "order by 1" not in sql and "order by" not in sql and len(expected) > 1:
        assert sorted(rows(tom, sql)) == sorted(expected)  # type: ignore[type-var]
    else:
        assert rows(tom, sql) == expected


def assert_silent(said: str) -> None:
    """Nothing of a filter's text, its tables' raw names, its aliases or the user's bound values."""
    for word in ("__saferoom_", "balance <=", "'fx'", '"team_accounts"', '"limits"', *SECRET_NOTES):
        assert word not in said, f"{word!r} in {said!r}"


ERRORS = [
    "select cast(owner as integer) from accounts",
    "select 1 / 0 from accounts",
    "select account_id::date from accounts",
    "select * from accounts where owner = 1",
]


@pytest.mark.parametrize("sql", ERRORS)
def test_errors_do_not_show_the_filter(sessions: dict[str, saferoom.Session], sql: str) -> None:
    try:
        rows(sessions["tom"], sql)
    except SaferoomError as exc:
        assert_silent(str(exc))
        assert not {"Bob", "Cy", "Di"} & set(re.findall(r"\w+", str(exc)))  # owners of the accounts tom may not see


@pytest.mark.parametrize("sql", [
    "select (select count(*) from accounts)",
    "select account_id + 0, balance * 1, exists (select 1 from team_accounts) from accounts",
    "select * from (select * from accounts) t",
])
def test_result_column_names_and_explain_do_not_show_the_filter(sessions: dict[str, saferoom.Session], sql: str) -> None:
    result = sessions["tom"].query(sql)
    assert_silent(" ".join(result.to_arrow().column_names))
    assert_silent(json.dumps(sessions["tom"].explain(sql).to_dict()))


# ---- PostgreSQL: the same policy and answers on a server


@pytest.fixture(scope="module")
def pg_policy(pg_room: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The tables on the suite's server, beside the demo's; dropped again, so other tests see the server they expect."""
    import psycopg

    server = pg_room.server  # type: ignore[attr-defined]
    try:
        yield _pg_tables(server, tmp_path_factory)
    finally:
        with psycopg.connect(server.admin_uri("prod"), autocommit=True) as admin:
            for table in ROWS:
                admin.execute(f"DROP TABLE IF EXISTS fr_{table}")


def _pg_tables(server: object, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import psycopg

    with psycopg.connect(server.admin_uri("prod"), autocommit=True) as admin:  # type: ignore[attr-defined]
        for table, (columns, data) in ROWS.items():
            name = f"fr_{table}"
            admin.execute(f"DROP TABLE IF EXISTS {name}")
            admin.execute(f"CREATE TABLE {name} ({columns})".replace("VARCHAR", "TEXT"))
            with admin.cursor().copy(f"COPY {name} FROM STDIN") as copy:
                for row in data:
                    copy.write_row(row)
            admin.execute(f"GRANT SELECT ON {name} TO reader")
    text = POLICY.replace("{prod: {engine: duckdb, path: prod.duckdb}}",
                          f"{{prod: {{engine: postgres, url: '{server.reader_url()}', password: env:SAFEROOM_TEST_PG_PASSWORD}}}}")  # type: ignore[attr-defined]
    for table in ROWS:
        text = text.replace(f"prod.{table}:", f"prod.fr_{table}:").replace(f"prod.{table} ", f"prod.fr_{table} ")
        text = text.replace(f"prod.{table})", f"prod.fr_{table})")
    text = text.replace("accounts.account_id", "fr_accounts.account_id")
    path = tmp_path_factory.mktemp("pg-filter-reads") / "saferoom.yaml"
    path.write_text(text)
    assert os.environ.get("SAFEROOM_TEST_PG_PASSWORD")
    return path


@pytest.mark.parametrize(("user", "sql"), list(EXPECTED))
def test_postgres_answers_are_the_same(pg_policy: Path, user: str, sql: str) -> None:
    for table in ("team_accounts", "accounts", "orders", "customers"):
        sql = sql.replace(f" {table}", f" fr_{table}")
    with saferoom.connect(pg_policy, user=user) as session:
        assert [tuple(r) for r in rows(session, sql)] == EXPECTED[(user, sql.replace("fr_", ""))]


@pytest.mark.parametrize("sql", [
    "with fr_team_accounts as (select 'fx' as team, account_id from fr_accounts) select account_id from fr_accounts order by 1",
    "select m.account_id from fr_accounts as m order by 1",
    "select count(*) from fr_accounts where 100 / (balance - 20) <> 7",  # Bob's hidden balance is 20
])
def test_postgres_queries_cannot_reach_into_the_filter(pg_policy: Path, sql: str) -> None:
    with saferoom.connect(pg_policy, user="tom") as session:
        assert len(rows(session, sql)) == 1


# ---- the worked example in docs/policy.md shows the SQL the guard makes


def test_the_docs_show_the_view_the_guard_builds() -> None:
    docs = (Path(__file__).parent.parent / "docs" / "policy.md").read_text()
    section = docs[docs.index("### Filters that read other tables"):]
    example = section[section.index("```yaml\n") + 8:section.index("```\n")]
    shown = section[section.index("<!-- filter-reads-view -->\n```sql\n") + 34:].split("\n```")[0]
    header = ("version: 1\nsources: {bank: {engine: duckdb, path: bank.duckdb}}\nsecrets: {token_key: env:SAFEROOM_DOCS_KEY}\n"
              "tags: {pii: {}, internal: {}, pci: {}, key: {}}\n")
    os.environ.setdefault("SAFEROOM_DOCS_KEY", "a key only this test uses, long enough")
    policy = parse_policy(header + example)
    assert policy.filter_reads("teller", "bank.cards") == ("bank.team_customers",)
    types = {"order_id": "BIGINT", "customer_id": "BIGINT", "amount": "DOUBLE", "region": "VARCHAR", "created_at": "TIMESTAMP"}
    view = build_view(policy, "analyst", {"region": "EU"}, policy.tables["bank.orders"], types, DUCKDB,
                      keep=frozenset({"order_id", "amount"}))
    assert view.sql("duckdb") == shown


# ---- Spark: the same kind of filter over the demo's lake


def test_spark_answers_a_filter_that_reads_another_table(spark_room: Path, room: object, tmp_path: Path) -> None:
    from tests import policies

    policy = policies.load(spark_room)
    policy["roles"]["analyst"]["rows"]["lake.orders"] = (
        "region = {user.region} AND customer_id IN (SELECT customer_id FROM lake.customers WHERE segment = 'retail')")
    path = policies.write(policy, tmp_path / "saferoom.yaml", "spark")
    expected = room.raw("select count(*), count(distinct customer_id) from orders where region = 'EU' and customer_id in "  # type: ignore[attr-defined]
                        "(select customer_id from customers where segment = 'retail')")[0]
    with saferoom.connect(path, user="alice") as spark:
        found = spark.query("select count(*) as n, count(distinct customer_id) as c from orders").to_pylist()
        assert found == [{"n": expected[0], "c": expected[1]}]
        with pytest.raises(QueryRejected):
            spark.query("with customers as (select 1 as customer_id, 'retail' as segment) select pan from cards")


def test_compiled_postgres_views_filter_through_the_mapping_table(pg_room: object, pg_policy: Path) -> None:
    import psycopg

    from saferoom import compile as compiler
    from tests.test_postgres import psql

    server = pg_room.server  # type: ignore[attr-defined]
    policy = load_policy(pg_policy)
    with psycopg.connect(server.admin_uri(), autocommit=True) as admin:
        admin.execute("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tom') THEN "
                      "CREATE ROLE tom LOGIN PASSWORD 'tom-db-pass'; END IF; END $$")
    compiler.apply(policy, server.admin_uri("prod"), None)
    try:
        shown = psql(pg_room, "tom", "tom-db-pass", "select account_id, balance from saferoom_teller.fr_accounts order by 1")
        assert (shown.returncode, shown.stdout.split()) == (0, ["100|10"]), shown.stderr
        for forbidden in ("select * from public.fr_team_accounts", "select team from saferoom_teller.fr_team_accounts"):
            assert psql(pg_room, "tom", "tom-db-pass", forbidden).returncode != 0, forbidden
    finally:
        compiler.apply(policy, server.admin_uri("prod"), None, drop=True)
