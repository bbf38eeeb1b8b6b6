"""Aggregate-only roles on a real DuckDB file with groups of known size: what is shown, suppressed, refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
import sqlglot
from sqlglot import exp

import saferoom
from saferoom.errors import PolicyError, QueryRejected
from saferoom.guard.aggregate_certified import certified
from saferoom.policy import parse_policy

POLICY = """\
version: 1
sources: {prod: {engine: duckdb, path: prod.duckdb}}
secrets: {token_key: file:token.key}
tags: {key: {}, pii: {}, quasi: {}}
tables:
  prod.customers: {customer_id: key, name: pii, zip: quasi, segment: public}
  prod.orders: {order_id: public, customer_id: key, amount: public, region: public}
  prod.stores: {store_id: public, city: public}
  prod.accounts: {account_id: public, customer_id: key, branch: public, balance: public}
users:
  mo: {roles: [marketing]}
  ivan: {roles: [investigator]}
  dana: {roles: [research]}
  fay: {roles: [finance]}
  ann: {roles: [reader]}
roles:
  marketing:
    columns: {key: allow, pii: tokenize, quasi: allow}
    aggregate: {min_group: 10, entity: prod.customers.customer_id}
  investigator:
    columns: {key: allow, pii: allow, quasi: allow}
    disclosure: {tags: [quasi]}
  reader:
    columns: {key: allow, pii: allow, quasi: allow}
    disclosure: {tags: [quasi], max_unique: 1}
  finance:
    columns: {key: allow, pii: tokenize, quasi: allow}
    aggregate: {min_group: 10, entity: prod.customers.customer_id, dominance: {n: 1, k: 0.5}}
  research:
    columns: {key: allow, pii: tokenize, quasi: allow}
    aggregate:
      min_group: 10
      entity: prod.customers.customer_id
      dp: {epsilon_per_query: 1.0, budget: {epsilon: 3, per: 30d}, bounds: {amount: [0, 100]}}
"""

# Customers 1-9 are segment `nine` and order in region R9; 10-19 `ten` in R10; 20-119 `big` in EU;
# customer 120, `solo`, placed ten orders in region SOLO. Everyone else placed one order of 10.00.
# Accounts: branch A is customers 1-10, where customer 1 holds 1000 and the others 1 each; branch B, 11-20, 100 each.
SETUP = """
CREATE TABLE customers AS SELECT i AS customer_id, 'name ' || i AS name, lpad((i % 7)::VARCHAR, 5, '0') AS zip,
  CASE WHEN i < 10 THEN 'nine' WHEN i < 20 THEN 'ten' WHEN i < 120 THEN 'big' ELSE 'solo' END AS segment
  FROM range(1, 121) t(i);
CREATE TABLE orders AS SELECT i AS order_id, i AS customer_id, 10.0 AS amount,
  CASE WHEN i < 10 THEN 'R9' WHEN i < 20 THEN 'R10' ELSE 'EU' END AS region FROM range(1, 120) t(i)
  UNION ALL SELECT 1000 + i, 120, 500.0, 'SOLO' FROM range(10) t(i);
CREATE TABLE stores AS SELECT 1 AS store_id, 'Lyon' AS city;
CREATE TABLE accounts AS SELECT i AS account_id, i AS customer_id, CASE WHEN i <= 10 THEN 'A' ELSE 'B' END AS branch,
  CASE WHEN i = 1 THEN 1000.0 WHEN i <= 10 THEN 1.0 ELSE 100.0 END AS balance FROM range(1, 21) t(i);
"""


def small_groups(folder: Path) -> Path:
    """``folder`` with the policy, its token key and the database of groups of known size."""
    (folder / "token.key").write_text("k" * 64)
    (folder / "saferoom.yaml").write_text(POLICY)
    with duckdb.connect(str(folder / "prod.duckdb")) as con:
        con.execute(SETUP)
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_groups(tmp_path_factory.mktemp("aggregate"))


@pytest.fixture(scope="module")
def mo(folder: Path) -> Iterator[saferoom.Session]:
    with saferoom.connect(folder / "saferoom.yaml", user="mo") as session:
        yield session


def rows(session: saferoom.Session, sql: str) -> list[tuple]:
    return sorted((tuple(r.values()) for r in session.query(sql).to_pylist()), key=repr)


def test_a_group_of_nine_customers_is_suppressed_and_one_of_ten_shown(mo) -> None:
    assert rows(mo, "select segment, count(*) from customers group by segment") == [("big", 100), ("ten", 10)]


def test_ten_orders_of_one_customer_count_as_one_entity(mo) -> None:
    assert rows(mo, "select region, count(*) as n from orders group by region") == [("EU", 100), ("R10", 10)]


def test_entities_follow_joins(mo) -> None:
    sql = ("select c.segment, sum(o.amount) from orders o join customers c on o.customer_id = c.customer_id "
           "group by c.segment")
    assert rows(mo, sql) == [("big", 1000.0), ("ten", 100.0)]


@pytest.mark.parametrize(("sql", "says"), [
    ("select * from orders", "SELECT * returns rows"),
    ("select region from orders", "every row returned must be an aggregate"),
    ("select amount, count(*) from orders group by region", "`amount` is neither an aggregate nor a GROUP BY key"),
    ("select region, count(*) over (partition by region) from orders", "WINDOW is not allowed"),
    ("select row_number() over () from orders", "WINDOW is not allowed"),
    ("select array_agg(customer_id) from orders", "ARRAY_AGG returns one row's value"),
    ("select list(customer_id) from orders", "ARRAY_AGG returns one row's value"),
    ("select string_agg(name, ',') from customers", "GROUP_CONCAT returns one row's value"),
    ("select min(customer_id) from orders", "MIN returns one row's value"),
    ("select max(amount) from orders", "MAX returns one row's value"),
    ("select any_value(customer_id) from orders", "returns one row's value"),
    ("select median(amount) from orders", "MEDIAN returns one row's value"),
    ("select region, count(*) from orders group by rollup(region)", "ROLLUP is not allowed"),
    ("select region, count(*) from orders group by grouping sets ((region), ())", "GROUPINGSETS is not allowed"),
    ("select region, count(*) from orders group by cube(region)", "CUBE is not allowed"),
    ("select region, count(*) from orders group by all", "GROUP BY ALL is not allowed"),
    ("select count(*) from orders union all select count(*) from orders where region = 'EU'", "only one SELECT"),
    ("select count(*) from orders except select count(*) from orders where region = 'EU'", "only one SELECT"),
    ("with t as (select * from orders) select count(*) from t", "WITH (a CTE) is not allowed"),
    ("select count(*) from (select * from orders) t", "subqueries are not allowed"),
    ("select (select count(*) from orders where customer_id = 3), count(*) from orders", "subqueries are not allowed"),
    ("select count(*) from orders o, lateral (select o.amount) t", "LATERAL is not allowed"),
    ("select count(*) filter (where customer_id = 3) from orders", "FILTER (WHERE …)"),
    ("select region, sum(amount) from orders tablesample system (1%) group by region", "sampling"),
    ("select region, sum(amount) from orders using sample 10 rows group by region", "sampling"),
    ("select region, count(*) from orders group by region using sample 50%", "sampling"),
    ("select c.segment, count(*) from orders o join customers c tablesample bernoulli (5%) "
     "on o.customer_id = c.customer_id group by c.segment", "sampling"),
    ("select sum(case when region = 'R9' then amount end) from orders", "takes a column as it is"),
    ("select sum(amount * (customer_id = 3)::int) from orders", "takes a column as it is"),
    ("select count(*) from orders where customer_id = 3", "direct identifier"),
    ("select count(*) from orders where customer_id <> 3", "direct identifier"),
    ("select count(*) from orders where customer_id in (3, 4)", "direct identifier"),
    ("select customer_id, count(*) from orders group by customer_id", "direct identifier"),
    ("select name, count(*) from customers group by name", "direct identifier"),
    ("select count(*) from orders o join customers c on o.customer_id = 3", "may only equate columns"),
    ("select count(*) from orders natural join customers", "NATURAL JOIN"),
    ("select r, count(*) from orders as o(i, k, a, r) group by r", "renamed by position in `o(i, k, a, r)`"),
    ("select c.s, count(*) from orders o join customers c(id, n, z, s) on c.id = o.customer_id group by c.s",
     "rename them in the select list"),
    ("select count(*) from orders qualify true", "QUALIFY is not allowed"),
    ("select region, count(*) from orders group by region order by max(amount)", "MAX returns one row's value"),
    ("select region, count(*) from orders group by region having sum(case when amount > 499 then 1 end) > 0",
     "takes a column as it is"),
    ("select region, count(*) from orders group by region having max(amount) > 499", "MAX returns"),
])
def test_what_an_aggregate_only_role_may_not_ask(mo, sql: str, says: str) -> None:
    with pytest.raises(QueryRejected) as refused:
        mo.query(sql)
    assert says in refused.value.message, refused.value.message
    assert "may only aggregate by segment" in refused.value.message  # and says what is allowed instead


def test_the_hidden_certificate_columns_cannot_be_named(mo) -> None:
    """An output named like the certificate would let its popcount pass a small group: the name is refused."""
    with pytest.raises(QueryRejected, match="reserved for saferoom"):
        mo.query("select region, count(*) * 1023 as __saferoom_b0 from orders group by region")


@pytest.mark.parametrize(("sql", "expected"), [
    # count(distinct) of the identifier is the group's entity count: shown only where that is 10 or more
    ("select region, count(distinct customer_id) from orders group by region", [("EU", 100), ("R10", 10)]),
    ("select segment, count(*) from customers group by segment having count(*) < 10", []),
    ("select region, count(*) from orders group by region having count(*) = 9", []),
    ("select segment, round(avg(customer_id), 0) from customers group by segment", "direct identifier"),
    ("select region = 'SOLO' as solo, sum(amount) from orders group by 1", [(False, 1190.0)]),
    # a join that repeats an entity's rows still counts it once
    ("select c.segment, count(*) from customers c join orders o on o.customer_id = c.customer_id "
     "join orders o2 on o2.customer_id = c.customer_id group by 1", [("big", 100), ("ten", 10)]),
    # a cross join pairs each small segment with every order: the customers' side still counts 9
    ("select c.segment, count(*) from customers c, orders o group by 1", [("big", 12900), ("ten", 1290)]),
    ("select c.segment, count(*) from customers c join stores s on true group by 1", "may only equate columns"),
    ("select sum(\"120\") from orders pivot (sum(amount) for customer_id in (120)) group by region", "pivots"),
])
def test_small_groups_cannot_be_smuggled_out(mo, sql: str, expected: list[tuple] | str) -> None:
    if isinstance(expected, str):
        with pytest.raises(QueryRejected, match=expected):
            mo.query(sql)
    else:
        assert rows(mo, sql) == expected


def test_differencing_with_and_without_one_person_learns_nothing(mo) -> None:
    """Total minus everyone-but-one: the second query leaves too few out, so it answers nothing."""
    total = rows(mo, "select count(*), sum(amount) from orders")
    assert total == [(129, 6190.0)]
    assert rows(mo, "select count(*), sum(amount) from orders where region <> 'SOLO'") == []
    assert rows(mo, "select count(*), sum(amount) from orders where region = 'SOLO'") == []
    # complementary filters: both halves are answered only when each leaves ten or more customers out
    assert rows(mo, "select count(*) from customers where segment = 'big'") == [(100,)]
    assert rows(mo, "select count(*) from customers where segment <> 'big'") == [(20,)]
    assert rows(mo, "select count(*) from customers where segment <> 'nine'") == []


def test_an_uncovered_table_without_entity_key_is_refused(mo) -> None:
    with pytest.raises(QueryRejected, match="no column holding the prod.customers.customer_id"):
        mo.query("select city, count(*) from stores group by city")


def test_other_roles_are_untouched(folder: Path) -> None:
    with saferoom.connect(folder / "saferoom.yaml", user="ivan") as ivan:
        assert len(ivan.query("select * from orders").to_pylist()) == 129


@pytest.mark.parametrize(("aggregate", "says"), [
    ("{min_group: 10, entity: prod.clients.customer_id}", "names table `prod.clients`"),
    ("{min_group: 10, entity: prod.customers.customer_id, keys: {prod.stores: shop}}", "does not list it"),
    ("{min_group: 1, entity: prod.customers.customer_id}", "min_group"),
    ("{min_group: 10, entity: prod.customers.id}", "a column `prod.customers` does not list"),
])
def test_policy_mistakes_are_named(aggregate: str, says: str) -> None:
    text = POLICY.replace("{min_group: 10, entity: prod.customers.customer_id}", aggregate)
    with pytest.raises(PolicyError, match=says):
        parse_policy(text.replace("secrets: {token_key: file:token.key}\n", "").replace("pii: tokenize", "pii: allow"))


def test_an_entity_key_the_role_cannot_count_is_a_policy_error() -> None:
    text = POLICY.replace("columns: {key: allow, pii: tokenize", "columns: {key: mask, pii: allow")
    with pytest.raises(PolicyError, match="must see `prod.customers.customer_id`"):
        parse_policy(text.replace("secrets: {token_key: file:token.key}\n", ""))


DOMINATED = "select branch, sum(balance), count(*) from accounts group by branch"


def test_a_sum_dominated_by_one_customer_is_suppressed(folder: Path, mo) -> None:
    assert rows(mo, DOMINATED) == [("A", 1009.0, 10), ("B", 1000.0, 10)]  # no dominance rule for marketing
    with saferoom.connect(folder / "saferoom.yaml", user="fay") as fay:
        assert rows(fay, DOMINATED) == [("B", 1000.0, 10)]
        assert rows(fay, "select branch, count(*) from accounts group by branch") == [("A", 10), ("B", 10)]
        assert rows(fay, "select sum(balance) from accounts") == [(2009.0,)]  # 1000 of 2009: under 0.5
        assert rows(fay, "select avg(balance) from accounts where branch = 'A'") == []


def test_explain_counts_rows_unique_on_quasi_identifiers(folder: Path) -> None:
    with saferoom.connect(folder / "saferoom.yaml", user="ivan") as ivan:
        decision = ivan.explain("select zip, segment from customers where customer_id < 3")
        assert decision.unique_rows == 2 and "2 result row(s) are unique on zip" in decision.notes[-1]
        assert ivan.explain("select zip from customers where customer_id < 30").unique_rows == 0
        assert ivan.explain("select segment from customers").unique_rows is None  # no quasi-identifier returned
        assert saferoom.Decision.from_dict(decision.to_dict()) == decision


def test_a_role_refuses_results_with_too_many_unique_rows(folder: Path) -> None:
    with saferoom.connect(folder / "saferoom.yaml", user="ann") as ann:
        with pytest.raises(QueryRejected, match="2 result row"):
            ann.query("select zip, segment from customers where customer_id < 3")
        assert len(ann.query("select zip from customers where customer_id < 30").to_pylist()) == 29


def test_explain_of_a_refused_query_says_the_role_s_rules(folder: Path) -> None:
    with saferoom.connect(folder / "saferoom.yaml", user="mo") as mo:
        decision = mo.explain("select * from orders")
    assert not decision.allowed and decision.notes[0].startswith("aggregate-only: every row returned is an aggregate")


MARKETING = """
  marketing:
    columns: {pii: tokenize, quasi: allow, pci: deny, key: tokenize}
    aggregate: {min_group: 10, entity: prod.customers.customer_id}
"""


@pytest.fixture(scope="module")
def demo_mo(room, tmp_path_factory: pytest.TempPathFactory) -> Iterator[saferoom.Session]:
    """The demo's database and policy, with an aggregate-only role for `mo` (keys seen as tokens)."""
    text = room.policy.read_text().split("builds:")[0]
    text = text.replace("path: prod.duckdb", f"path: {room.database}").replace("file:token.key", f"file:{room.folder / 'token.key'}")
    text = text.replace("roles:\n", "roles:\n" + MARKETING.lstrip("\n"), 1).replace("users:\n", "users:\n  mo: {roles: [marketing]}\n", 1)
    path = tmp_path_factory.mktemp("demo-aggregate") / "saferoom.yaml"
    path.write_text(text)
    with saferoom.connect(path, user="mo") as session:
        yield session


def test_on_the_demo_segments_are_shown_and_quasi_identifier_cells_suppressed(room, demo_mo) -> None:
    segments = dict(rows(demo_mo, "select segment, count(*) from customers group by segment"))
    assert segments == dict(room.raw("select segment, count(*) from customers group by segment"))
    cells = ("select date_trunc('month', birth_date) as m, left(zip, 3) as z, count(*) as n from customers "
             "group by 1, 2")
    shown = rows(demo_mo, cells)
    raw = room.raw(f"select count(*) from ({cells}) where n >= 10")
    assert len(shown) == raw[0][0] and all(n >= 10 for _, _, n in shown)
    assert len(shown) < len(room.raw(cells)) / 10  # nearly every birth-month-and-zip cell singles people out


def test_on_the_demo_entities_follow_joins_through_tokens(room, demo_mo) -> None:
    sql = ("select c.segment, o.region, count(*) as n from orders o join customers c on o.customer_id = c.customer_id "
           "group by 1, 2")
    expected = room.raw(sql.replace("count(*) as n", "count(*) as n, count(distinct c.customer_id) as e") +
                        " having count(distinct c.customer_id) >= 10")
    assert rows(demo_mo, sql) == sorted(((s, r, n) for s, r, n, _ in expected), key=repr)
    with pytest.raises(QueryRejected, match="direct identifier"):
        demo_mo.query("select email, count(*) from customers group by email")


def test_saferoom_explain_shows_the_role_s_rules(folder: Path) -> None:
    from typer.testing import CliRunner

    from saferoom.cli import app

    policy = str(folder / "saferoom.yaml")
    refused = CliRunner().invoke(app, ["explain", "select * from orders", "-p", policy, "-u", "mo"], env={"COLUMNS": "300"})
    assert refused.exit_code == QueryRejected.exit_code
    assert "may only aggregate by segment" in refused.output and "groups resting on fewer than 10" in refused.output
    shown = CliRunner().invoke(app, ["explain", "select region, count(*) from orders group by 1", "-p", policy, "-u", "dana"],
                               env={"COLUMNS": "300"})
    assert shown.exit_code == 0 and "differential privacy: counts, sums and means carry noise" in shown.output
    assert "this query spends epsilon 1 of the user's privacy budget" in shown.output


def test_a_dominance_rule_off_duckdb_refuses_rather_than_answers_unchecked(folder: Path) -> None:
    from dataclasses import replace

    from saferoom.engines.duckdb import DUCKDB
    from saferoom.guard import Guard

    policy = saferoom.load_policy(folder / "saferoom.yaml")
    spec = replace(DUCKDB, dialect="postgres")  # the same sources, written for another engine
    catalog = {("prod", "main", "accounts"): {"account_id": "BIGINT", "customer_id": "BIGINT", "branch": "VARCHAR",
                                               "balance": "DOUBLE"}}
    with pytest.raises(QueryRejected, match="checks on DuckDB sources only"):
        Guard(policy, "fay", "finance", spec, catalog).rewrite(DOMINATED)
    assert "HAVING COUNT(DISTINCT" in Guard(policy, "mo", "marketing", spec, catalog).rewrite(DOMINATED).sql


def test_the_certified_minimum_is_exact_at_the_edges() -> None:
    """Ten customers hashed into at most five buckets are recounted and shown; nine customers of many rows
    each plus rows without a customer, and one customer of fifty rows, are suppressed; the groups match the
    exact ``count(DISTINCT …)``."""
    con = duckdb.connect()
    con.execute("""CREATE TABLE orders AS
        SELECT 'collide' AS region, i AS customer_id FROM (SELECT i FROM range(100000) t(i)
          WHERE hash(i) & 63 < 5 LIMIT 10), range(3)
        UNION ALL SELECT 'nine', i FROM range(9) t(i), range(20)
        UNION ALL SELECT 'nine', NULL FROM range(5)
        UNION ALL SELECT 'one', 7 FROM range(50)
        UNION ALL SELECT 'big', i FROM range(100) t(i)""")
    buckets = "bit_count(bit_or(1::UBIGINT << (hash(customer_id) & 63)) FILTER (WHERE customer_id IS NOT NULL))"
    assert con.execute(f"SELECT {buckets} FROM orders WHERE region = 'collide'").fetchone() <= (5,)
    sql = "select region, count(*) as n from orders group by region"
    select = sqlglot.parse_one(sql + " having count(customer_id) >= 10", dialect="duckdb")
    rewritten = certified(select, [exp.column("customer_id")], 10).sql("duckdb")
    exact = con.execute(sql + " having count(distinct customer_id) >= 10 order by 1").fetchall()
    assert sorted(con.execute(rewritten).fetchall()) == exact == [("big", 100), ("collide", 30)]
    assert [d[0] for d in con.execute(rewritten).description] == ["region", "n"]



def test_a_null_group_the_buckets_cannot_certify_is_recounted_and_shown() -> None:
    """A NULL group key is a group: ten customers hashed into at most five buckets under region NULL are
    recounted (matched IS NOT DISTINCT FROM, since ``NULL IN (…)`` finds nothing) and shown; nine are not."""
    con = duckdb.connect()
    con.execute("""CREATE TABLE orders AS
        SELECT NULL::VARCHAR AS region, i AS customer_id FROM (SELECT i FROM range(100000) t(i)
          WHERE hash(i) & 63 < 5 LIMIT 10), range(3)
        UNION ALL SELECT 'nine', i FROM range(9) t(i), range(20)""")
    sql = "select region, count(*) as n from orders group by region"
    select = sqlglot.parse_one(sql + " having count(customer_id) >= 10", dialect="duckdb")
    rewritten = certified(select, [exp.column("customer_id")], 10).sql("duckdb")
    assert con.execute(rewritten).fetchall() == con.execute(sql + " having count(distinct customer_id) >= 10").fetchall()
    assert con.execute(rewritten).fetchall() == [(None, 30)]


@pytest.mark.parametrize("kind", ["BIGINT", "INTEGER", "SMALLINT", "UBIGINT"])
def test_whole_integer_keys_bucketed_by_residue_are_exact_at_the_edges(kind: str) -> None:
    """Integer keys are bucketed by their six low bits, with no hash. Ten customers that are all multiples of 64
    (one bucket) are recounted and shown; ten negative keys (or, unsigned, ten consecutive ones) are certified;
    nine customers plus rows without a customer, one customer of fifty rows, and rows whose keys are all NULL
    are suppressed; the groups match the exact ``count(DISTINCT …)``."""
    con = duckdb.connect()
    spread = "-i - 1" if kind != "UBIGINT" else "i + 1000"
    con.execute(f"""CREATE TABLE orders AS
        SELECT 'collide' AS region, (i * 64)::{kind} AS customer_id FROM range(10) t(i), range(3)
        UNION ALL SELECT 'spread', ({spread})::{kind} FROM range(10) t(i)
        UNION ALL SELECT 'nine', i::{kind} FROM range(9) t(i), range(20)
        UNION ALL SELECT 'nine', NULL FROM range(5)
        UNION ALL SELECT 'nulls', NULL FROM range(20)
        UNION ALL SELECT 'one', 7::{kind} FROM range(50)
        UNION ALL SELECT 'big', i::{kind} FROM range(100) t(i)""")
    sql = "select region, count(*) as n from orders group by region"
    select = sqlglot.parse_one(sql + " having count(customer_id) >= 10", dialect="duckdb")
    rewritten = certified(select, [exp.column("customer_id")], 10, integers=frozenset({0})).sql("duckdb")
    assert "HASH" not in rewritten
    exact = con.execute(sql + " having count(distinct customer_id) >= 10 order by 1").fetchall()
    assert sorted(con.execute(rewritten).fetchall()) == exact == [("big", 100), ("collide", 30), ("spread", 10)]
    buckets = "bit_count(bit_or(9223372036854775808::UBIGINT >> (customer_id & 63)))"
    popcounts = dict(con.execute(f"SELECT region, {buckets} FROM orders GROUP BY region").fetchall())
    assert popcounts["collide"] == 1 and popcounts["spread"] == 10  # one recounted, the other certified
    assert popcounts["nulls"] is None  # NULL keys set no bit, with no FILTER


# Large groups: 3,000 customers of one to three orders in regions A, B, C (1,000 customers each); R9 is nine
# customers of three orders each (27 rows), R10 ten of one order; no customer has more than three orders.
LARGE = """
CREATE TABLE customers AS SELECT i AS customer_id, 'name ' || i AS name, '00000' AS zip, 'big' AS segment
  FROM range(1, 3020) t(i);
CREATE TABLE orders AS SELECT row_number() OVER () AS order_id, customer_id, 10.0 AS amount, region FROM (
  SELECT i AS customer_id, ['A', 'B', 'C'][1 + (i % 3)::INT] AS region FROM range(1, 3001) t(i), range(1 + (i % 3)::INT)
  UNION ALL SELECT 3000 + i, 'R9' FROM range(1, 10) t(i), range(3)
  UNION ALL SELECT 3009 + i, 'R10' FROM range(1, 11) t(i));
CREATE TABLE stores AS SELECT 1 AS store_id, 'Lyon' AS city;
CREATE TABLE accounts AS SELECT 1 AS account_id, 1 AS customer_id, 'A' AS branch, 1.0 AS balance;
"""


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("large")
    (folder / "token.key").write_text("k" * 64)
    (folder / "saferoom.yaml").write_text(POLICY)
    with duckdb.connect(str(folder / "prod.duckdb")) as con:
        con.execute(LARGE)
    return folder


def test_the_guard_counts_rows_of_large_groups_buckets_whole_integer_keys_and_hashes_tokens(large: Path) -> None:
    """mo sees customer_id whole in a read-only file, and groups by region are expected large (6,037 orders
    in at most 6 regions, no customer with more than 3): a query of orders alone is certified by its rows (30
    keys are 10 customers). Joined to customers, or grouped by an expression, it is bucketed by residue; a
    role that sees the key as tokens (text) gets the hashed buckets. All give the same groups."""
    policy = POLICY.replace("  ann: {roles: [reader]}", "  ann: {roles: [reader]}\n  tom: {roles: [tokens]}") + (
        "  tokens:\n    columns: {key: tokenize, pii: tokenize, quasi: allow}\n"
        "    aggregate: {min_group: 10, entity: prod.customers.customer_id}\n")
    (large / "tokens.yaml").write_text(policy)
    sql = "select region, count(*) as n from orders group by region"
    joined = ("select o.region, count(*) as n from orders o join customers c on o.customer_id = c.customer_id "
              "group by o.region")
    expression = "select lower(region) as r, count(*) as n from orders group by 1"
    with saferoom.connect(large / "saferoom.yaml", user="mo") as mo, saferoom.connect(large / "tokens.yaml", user="tom") as tom:
        alone = mo.guard(sql).sql
        assert 'COUNT("orders"."customer_id") AS __saferoom_b0' in alone and "__saferoom_b0 >= 30" in alone
        assert ">> (" not in alone and "HASH(" not in alone
        assert ">> (" in mo.guard(joined).sql and ">> (" in mo.guard(expression).sql
        assert "HASH(" in tom.guard(sql).sql and ">> (" not in tom.guard(sql).sql
        expected = [("A", 1000), ("B", 2000), ("C", 3000), ("R10", 10)]
        assert rows(mo, sql) == rows(mo, joined) == rows(tom, sql) == expected
        assert rows(mo, expression) == [(r.lower(), n) for r, n in expected]
        assert "__saferoom_b0 >= 30" in mo.guard("select count(*) as n from orders where region = 'R9'").sql
        assert rows(mo, "select count(*) as n from orders where region = 'R9'") == []
        assert rows(mo, "select count(*) as n from orders where region = 'R10'") == [(10,)]


def test_small_groups_keep_the_buckets(mo) -> None:
    """129 orders where a customer has up to 10: groups cannot be expected to reach 100 keys, so the rows would
    prove nothing and every group would be recounted; the buckets are kept."""
    assert ">> (" in mo.guard("select region, count(*) as n from orders group by region").sql


def test_groups_certified_by_their_rows_are_exact_at_the_edges() -> None:
    """No customer has more than 3 rows, so 30 non-NULL keys are 10 customers. Ten customers of three rows are
    certified; ten of one row each are recounted and shown; nine of three rows padded with NULL keys past 30
    rows, and one customer's three rows, are suppressed. The groups match the exact ``count(DISTINCT …)``."""
    con = duckdb.connect()
    con.execute("""CREATE TABLE orders AS
        SELECT 'thirty' AS region, i AS customer_id FROM range(10) t(i), range(3)
        UNION ALL SELECT 'ten', 100 + i FROM range(10) t(i)
        UNION ALL SELECT 'padded', 200 + i FROM range(9) t(i), range(3)
        UNION ALL SELECT 'padded', NULL FROM range(20)
        UNION ALL SELECT 'one', 300 FROM range(3)""")
    from saferoom.engines.duckdb import key_rows_sql

    ((most, _, _),) = con.execute(key_rows_sql(("memory", "main", "orders"), "customer_id")).fetchall()
    assert most == 3
    sql = "select region, count(*) as n from orders group by region"
    select = sqlglot.parse_one(sql + " having count(customer_id) >= 10", dialect="duckdb")
    rewritten = certified(select, [exp.column("customer_id")], 10, most=[most]).sql("duckdb")
    assert "__saferoom_b0 >= 30" in rewritten and "BIT_COUNT" not in rewritten
    exact = con.execute(sql + " having count(distinct customer_id) >= 10 order by 1").fetchall()
    assert sorted(con.execute(rewritten).fetchall()) == exact == [("ten", 10), ("thirty", 30)]


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_certified_groups_match_the_exact_count_on_random_data(seed: int) -> None:
    """Skewed random orders (some customers with many rows, some NULL keys), grouped three ways and with no
    GROUP BY: the rows certificate, the residues and the hashed buckets each keep exactly the groups that
    ``count(DISTINCT customer_id) >= 10`` keeps."""
    con = duckdb.connect()
    con.execute(f"""SELECT setseed(0.{seed}); CREATE TABLE orders AS
        SELECT i AS order_id, CASE WHEN random() < 0.05 THEN NULL ELSE (random() * random() * 300)::BIGINT END AS customer_id,
          (random() * 40)::INT AS g FROM range(3000) t(i)""")
    from saferoom.engines.duckdb import key_rows_sql

    ((most, _, _),) = con.execute(key_rows_sql(("memory", "main", "orders"), "customer_id")).fetchall()
    for sql in ("select g, count(*) from orders group by g", "select g % 7, sum(order_id) from orders group by 1",
                "select count(*) from orders where g < 3", "select count(*) from orders"):
        exact = sorted(con.execute(sql + " having count(distinct customer_id) >= 10").fetchall(), key=repr)
        select = sqlglot.parse_one(sql + " having count(customer_id) >= 10", dialect="duckdb")
        for integers, rows_most in ((frozenset(), []), (frozenset({0}), []), (frozenset(), [most])):
            rewritten = certified(select.copy(), [exp.column("customer_id")], 10, integers, rows_most).sql("duckdb")
            assert sorted(con.execute(rewritten).fetchall(), key=repr) == exact, (sql, integers, rows_most)


def test_the_engine_proves_most_rows_only_for_read_only_base_tables(folder: Path) -> None:
    """Orders of a read-only file: customer 120's ten. The gateway's isolated engine (its workers hold the
    files) proves nothing, so its queries keep the buckets, with the same groups."""
    from saferoom.policy import load_policy
    from saferoom.session import Session

    sql = "select region, count(*) as n from orders group by region"
    with saferoom.connect(folder / "saferoom.yaml", user="mo") as mo:
        engine = mo._engine
        assert engine.key_rows(("prod", "main", "orders"), "customer_id").most == 10
        assert engine.key_rows(("prod", "main", "orders"), "CUSTOMER_ID").most == 10  # kept once, by lower-cased name
        assert engine.key_rows(("prod", "main", "customers"), "customer_id").most == 1
        assert engine.key_rows(("prod", "main", "nowhere"), "customer_id") is None
    with Session(load_policy(folder / "saferoom.yaml"), "mo", isolated=True) as isolated:
        assert isolated._engine.key_rows(("prod", "main", "orders"), "customer_id") is None
        assert ">> (" in isolated.guard(sql).sql
        assert rows(isolated, sql) == [("EU", 100), ("R10", 10)]


def test_a_zero_group_query_is_certified_and_exact(mo) -> None:
    """With no GROUP BY the whole result is one group. Read whole, the table's 120 customers are known (no
    condition at all); with a WHERE its rows are counted: the nine of R9 and the ten orders of SOLO (one
    customer's) are suppressed."""
    assert "HAVING" not in mo.guard("select count(*) as n from orders").sql
    assert rows(mo, "select count(*) as n from orders") == [(129,)]
    assert rows(mo, "select count(*) as n from orders where region = 'R9'") == []
    assert rows(mo, "select count(*) as n from orders where region = 'SOLO'") == []
    assert rows(mo, "select count(*) as n from orders where region = 'EU'") == [(100,)]


def test_a_table_read_whole_is_shown_only_with_enough_entities_and_no_row_filter(folder: Path) -> None:
    """120 customers under a minimum of 200: the whole table is suppressed without reading it (HAVING FALSE).
    A role with a row filter on orders never takes the table's own count: its rows are counted."""
    (folder / "large.yaml").write_text(POLICY.replace("aggregate: {min_group: 10, entity: prod.customers.customer_id}\n",
                                                      "aggregate: {min_group: 200, entity: prod.customers.customer_id}\n", 1))
    with saferoom.connect(folder / "large.yaml", user="mo") as large:
        assert "HAVING FALSE" in large.guard("select count(*) as n from orders").sql
        assert rows(large, "select count(*) as n from orders") == []
    filtered = POLICY.replace("    aggregate: {min_group: 10, entity: prod.customers.customer_id}\n",
                              "    aggregate: {min_group: 10, entity: prod.customers.customer_id}\n"
                              "    rows: {prod.orders: \"region = 'R9'\"}\n", 1)
    (folder / "filtered.yaml").write_text(filtered)
    with saferoom.connect(folder / "filtered.yaml", user="mo") as nine:
        assert "__saferoom_b0" in nine.guard("select count(*) as n from orders").sql
        assert rows(nine, "select count(*) as n from orders") == []


def test_dp_bounding_is_left_out_only_where_it_would_drop_no_row(folder: Path) -> None:
    """No customer has more than 10 orders: with ``max_contributions: 10`` the window that bounds them is
    proven to drop nothing and is left out (and the groups are certified); with 9 it stays, and the minimum
    is counted in one HAVING over the window's rows. The noise is scaled to the bound either way."""
    for most, bounded in ((10, False), (9, True)):
        policy = POLICY.replace("bounds: {amount: [0, 100]}}", f"bounds: {{amount: [0, 100]}}, max_contributions: {most}}}")
        assert policy != POLICY
        (folder / f"dp{most}.yaml").write_text(policy)
        with saferoom.connect(folder / f"dp{most}.yaml", user="dana") as dana:
            guarded = dana.guard("select region, count(*) as n from orders group by region")
            assert ("QUALIFY" in guarded.sql) is bounded
            # the window keeps rows of the engine's choice: a recount would choose anew, so one exact HAVING
            assert ("__saferoom_c" not in guarded.sql) if bounded else ("__saferoom_c" in guarded.sql)
            assert guarded.noise is not None and guarded.noise.rows_per_entity == most
            assert {r["region"] for r in dana.query("select region, count(*) as n from orders group by region").to_pylist()} == {"EU", "R10"}
