"""Bypass attempts: each is refused, or returns nothing protected and no hidden row."""

from __future__ import annotations

import re

import pytest

import saferoom
from tests.conftest import HIDDEN_AMOUNT
from tests.leaks import assert_refused_or_harmless

ATTACKS = [
    # naming a denied column, in every spelling
    "select pan from cards",
    'select "PAN" from cards',
    'select "Pan" from "Cards"',
    "select cards.pan from cards",
    "select c.pan from prod.cards c",
    "select prod.main.cards.pan from prod.main.cards",
    "select pan/**/from cards",
    "select list(pan) from cards",
    "select count(*) from cards where pan like '4929%'",
    "select * from cards where pan = '4929111122223333'",
    "select card_id from cards order by pan",
    "select max(length(pan)) from cards",
    # stars and whole-row references only see the policy view
    "select * from cards",
    "select * from prod.main.cards",
    "select cards from cards",
    "select * from cards natural join customers",
    "select * exclude (card_id) from cards",
    "select columns('.*') from cards",
    # CTEs and subqueries
    "with cards as (select * from prod.cards) select * from cards",
    "with x as (select pan from cards) select * from x",
    "with customers as (select 1 as pan) select * from customers, prod.cards",
    "with recursive r(n) as (select 1 union all select n + 1 from r where n < 3) select * from r, cards",
    "select (select max(pan) from cards)",
    "select pan from (select * from cards) t",
    "select * from (select * from (select * from prod.main.cards) a) b",
    "select name from customers where exists (select 1 from cards where cards.pan like '4%')",
    # set operations
    "select name from customers union select pan from cards",
    "select ssn from customers union all select email from customers",
    "select order_id from orders union all select order_id from orders where region = 'US'",
    "select order_id from orders except select order_id from orders where region = 'EU'",
    # lateral, windows, grouping on masked columns
    "select * from customers c, lateral (select * from orders o where o.customer_id = c.customer_id) x",
    "select row_number() over (order by ssn) as n, name from customers",
    "select name, count(*) from customers group by name order by 2 desc limit 5",
    "select min(birth_date), max(birth_date), min(zip), max(zip) from customers",
    "select first(name order by ssn) from customers",
    "select string_agg(email, ',') from customers",
    # casts and functions over masked values
    "select cast(ssn as varchar), substr(name, 1, 3), upper(email) from customers",
    "select * from customers where name = 'Zebediah Canaryfield'",
    "select * from customers where ssn = '212-45-6789'",
    "select birth_date from customers where customer_id = 999001",
    # filtered-out rows
    "select * from orders",
    "select * from orders where region = 'US'",
    "select * from orders where region <> 'EU' or 1 = 1",
    "select count(*), sum(amount) from orders where region = 'US'",
    "select * from prod.orders o where o.order_id = 990000001",
    'select * from "ORDERS" where "REGION" = \'US\'',
    "select * from PROD.MAIN.ORDERS where region = 'US'",
    "select * from orders o1 join prod.main.orders o2 using (order_id) where o2.region = 'US'",
    "select * from (values (1)) v(x) join orders on true where orders.region = 'US'",
    "select count(*) from customers c where exists (select 1 from orders o where o.region = 'US' and o.customer_id = c.customer_id)",
    "select * from orders where cast(case when region = 'US' then 'x' else '1' end as integer) = 1",
    "select * from orders where case when region = 'US' then amount * 99999999999999999999 else 0 end = 0",
    "select max(order_id) from orders",
    # unclassified columns do not exist
    "select internal_score from customers",
    "select * from customers",
    # multiple statements and comments
    "select 1; select pan from cards",
    "select 1 -- ; select pan from cards",
    "select /* */ 1; drop table prod.cards",
    # files, table functions, catalogs
    "select * from read_csv('/etc/passwd')",
    "select * from read_parquet('prod.duckdb')",
    "select * from 'prod.duckdb'",
    "select * from '/etc/passwd'",
    "select * from glob('*')",
    "select * from duckdb_tables()",
    "select * from duckdb_functions()",
    "select * from information_schema.tables",
    "select * from information_schema.columns",
    "select * from sqlite_master",
    "select * from pg_catalog.pg_class",
    "select * from memory.main.__saferoom_token",
    "select * from query('select * from prod.cards')",
    "select * from query_table('prod.main.cards')",
    "select * from prod.main.duckdb_settings()",
    "select * from cards tablesample 10 percent",
    # sampling samples the view's rows
    "select * from orders using sample 100 percent (bernoulli)",
    "select * from prod.orders tablesample 100 percent where region = 'US'",
    "select * from customers using sample 10 rows",
    "select pan from cards using sample 1 rows",
    "select * from cards tablesample reservoir(5 rows) repeatable (1)",
    "select * from orders using sample (select count(*) from prod.orders) rows",
    "select * from read_csv('/etc/passwd') using sample 10 rows",
    # PIVOT and UNPIVOT read the views; a PIVOT's columns are the values it lists
    "select * from (pivot orders on region in ('US', 'EU') using sum(amount))",
    "select * from (pivot orders on order_id in (990000001) using max(amount))",
    "select * from (pivot cards on card_id in (999001) using first(pan))",
    "select * from (pivot customers on ssn in ('212-45-6789') using count(*))",
    "select * from (pivot customers on ssn using count(*))",
    "select * from (pivot orders on region in (select region from prod.orders) using sum(amount))",
    "select * from (unpivot customers on name, email, ssn into name k value v)",
    "select * from (unpivot cards on pan, card_id into name k value v)",
    "select * from (unpivot (select * from prod.orders) on amount into name k value v) where region = 'US'",
    # generators take literal arguments and read nothing
    "select * from range(990000000, 990000002) r(x) join orders o on o.order_id = x",
    "select * from generate_series(1, (select max(order_id) from prod.orders)) s(x)",
    "select * from range((select count(*) from cards)) r(x)",
    "select * from orders, range(1, order_id) r(x)",
    "select * from unnest((select list(pan) from cards)) t(x)",
    "select * from unnest((select list(ssn) from customers)) t(x)",
    "select * from generate_series(1, 3) as cards",
    "select columns('pan|ssn|name|internal_score') from customers",
    # settings, variables, side effects
    "select current_setting('threads')",
    "select getvariable('x')",
    "select getenv('HOME')",
    "select error('boom')",
    "select $1",
    "select __saferoom_token(ssn) from customers",
    "select __saferoom_hmac_token(ssn) from customers",
    "select system.main.__saferoom_hmac_token(ssn) from customers",
    "select * from prod.main.customers as __saferoom_t",
    "set enable_external_access = true",
    "reset lock_configuration",
    "pragma database_list",
    "attach 'x.db' as y",
    "detach prod",
    "install httpfs",
    "load httpfs",
    "copy (select * from customers) to '/tmp/x.csv'",
    "export database '/tmp/export'",
    "call pragma_table_info('customers')",
    "begin transaction",
    "insert into prod.orders values (1, 1, 1, 'EU', now())",
    "update prod.orders set region = 'EU'",
    "delete from prod.cards",
    "create table t as select * from prod.cards",
    "create macro m(x) as x",
    "with x as (delete from prod.orders returning *) select * from x",
    "select * into stolen from customers",
    "select * from customers for update",
    "describe customers",
    "show tables",
    "summarize cards",
    "checkpoint",
    "vacuum",
]


def test_there_are_enough_attacks() -> None:
    assert len(ATTACKS) >= 80


@pytest.mark.parametrize("sql", ATTACKS)
def test_attack_is_refused_or_harmless(alice: saferoom.Session, secrets_of: set[str], room, sql: str) -> None:
    assert_refused_or_harmless(alice, sql, secrets_of, room.key)


NAMING_PAN = [a for a in ATTACKS if re.search(r"\bpan\b", a, re.IGNORECASE) and not re.search(r";|--|as pan|union|columns\(", a)]


@pytest.mark.parametrize("sql", NAMING_PAN)
def test_denied_column_refusal_explains_the_rule(alice: saferoom.Session, sql: str) -> None:
    """Decided by the guard from the policy, before the engine sees the query."""
    with pytest.raises(saferoom.QueryRejected) as caught:
        alice.guard(sql)
    assert caught.value.column == "prod.cards.pan"
    assert caught.value.tag == "pci"
    assert "card-theft" in caught.value.threats
    assert caught.value.allowed_roles == ("investigator",)
    assert "investigator" in str(caught.value)


@pytest.mark.parametrize("sql", ["select {} from customers", "select c.{} from prod.customers c"])
def test_an_unclassified_column_fails_exactly_as_one_that_does_not_exist(alice: saferoom.Session, sql: str) -> None:
    """Unclassified means absent: not even the error may tell that such a column exists."""
    errors = []
    for name in ("internal_score", "no_such_column"):
        with pytest.raises(saferoom.SaferoomError) as caught:
            alice.query(sql.format(name))
        errors.append((type(caught.value), str(caught.value).replace(name, "<name>")))
    assert errors[0] == errors[1] and "0.731" not in errors[0][1]


def test_filtered_row_never_raises_through_a_failing_cast(alice: saferoom.Session, room) -> None:
    sql = "select count(*) from orders where cast(case when region = 'US' then 'x' else '1' end as integer) = 1"
    (count,) = alice.query(sql).to_arrow().column(0).to_pylist()
    assert count == room.raw("select count(*) from orders where region = 'EU'")[0][0]


def test_filtered_row_never_overflows(alice: saferoom.Session, room) -> None:
    sql = "select count(*) from orders where (case when region <> 'EU' then 9223372036854775807 + order_id else 0 end) = 0"
    (count,) = alice.query(sql).to_arrow().column(0).to_pylist()
    assert count == room.raw("select count(*) from orders where region = 'EU'")[0][0]


def test_generated_sql_never_carries_the_key(alice: saferoom.Session, room) -> None:
    sql = alice.guard("select name, email from customers").sql
    assert room.key not in sql
    assert not re.search(r"'[0-9a-fA-F]{64,}'", sql)


def test_explain_never_carries_the_key(alice: saferoom.Session, room) -> None:
    text = repr(alice.explain("select name, ssn from customers")) + repr(alice.tables())
    assert room.key not in text
    assert "Zebediah" not in text


def test_attribute_injection_is_a_literal(room, tmp_path) -> None:
    text = room.policy.read_text().replace("attributes: {region: EU}", "attributes: {region: \"EU' OR '1'='1\"}")
    policy = tmp_path / "saferoom.yaml"
    policy.write_text(text.replace("path: prod.duckdb", f"path: {room.database}").replace("file:token.key", f"file:{room.folder / 'token.key'}"))
    with saferoom.connect(policy, user="alice") as session:
        assert session.query("select count(*) from orders").to_arrow().column(0).to_pylist() == [0]


VALUE_ERRORS = [
    "select cast(coalesce(region, 'x') as date) from orders",  # DuckDB quotes this value in double quotes
    "select region::decimal(3,1) from orders",
    "select cast(segment as json) from customers",
    "select strptime(region, '%Y') from orders",  # and repeats it on the next line, under a caret
    "select cast(order_id * 1000000000 as integer) from orders",  # a number, unquoted
    "select count(*) from orders where cast(cast(amount as varchar) || 'x' as int) = 1",
    "select cast(amount * 100000000 as integer) from orders",
]


@pytest.mark.parametrize("sql", VALUE_ERRORS)
def test_engine_errors_never_quote_a_value(alice: saferoom.Session, room, sql: str) -> None:
    """A value in an error could be a row the role's filter removes, however the engine quoted it."""
    with pytest.raises(saferoom.SaferoomError) as caught:
        alice.query(sql).to_arrow()
    message = str(caught.value)
    values = {v for (v,) in room.raw("select distinct region from orders union all select distinct segment from customers")}
    amounts = {str(a) for (a,) in room.raw("select amount from orders")} | {HIDDEN_AMOUNT}
    assert not any(v in message for v in values | amounts), message
    assert not re.search(r"\d{4,}", message), message


@pytest.mark.parametrize("sql", [
    "select (select max(amount) from orders)",
    "select exists(select 1 from orders where amount > 5)",
    "select (select count(distinct email) from customers)",
    "select amount in (select amount from orders) from orders limit 1",
    "select (select max(amount) from orders) union all select 1",
])
def test_column_names_show_nothing_of_the_rewrite(alice: saferoom.Session, sql: str) -> None:
    """An unnamed subquery column was named by the engine from the rewritten text: physical names, the
    row filter's bound value, the tokenizing function."""
    for name in alice.query(sql).schema.names:
        assert "__saferoom" not in name and "'EU'" not in name and ".main." not in name, name
