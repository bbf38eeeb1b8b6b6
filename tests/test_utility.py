"""Legitimate analyst work returns exactly the right numbers."""

from __future__ import annotations

from decimal import Decimal

import pyarrow as pa
import pytest

import saferoom


def one(session: saferoom.Session, sql: str) -> list[tuple]:
    table = session.query(sql).to_arrow()
    return [tuple(row.values()) for row in table.to_pylist()]


def test_revenue_by_region_sees_only_own_region(alice: saferoom.Session, room) -> None:
    got = one(alice, "select region, count(*), sum(amount) from orders group by 1 order by 1")
    assert got == room.raw("select region, count(*), sum(amount) from orders where region = 'EU' group by 1 order by 1")


def test_investigator_sees_every_region(ivan: saferoom.Session, room) -> None:
    got = one(ivan, "select region, count(*), sum(amount) from orders group by 1 order by 1")
    assert got == room.raw("select region, count(*), sum(amount) from orders group by 1 order by 1")


def test_joins_on_tokens_match_joins_on_raw_keys(alice: saferoom.Session, room) -> None:
    sql = "select c.segment, count(distinct o.customer_id), sum(o.amount) from orders o join customers c using (customer_id) {} group by 1 order by 1"
    assert one(alice, sql.format("")) == room.raw(sql.format("where o.region = 'EU'"))


def test_count_distinct_survives_tokenizing(alice: saferoom.Session, room) -> None:
    got = one(alice, "select count(distinct name), count(distinct email), count(distinct ssn) from customers")
    assert got == room.raw("select count(distinct name), count(distinct email), count(distinct ssn) from customers")


def test_tokens_are_hmac_sha256_of_the_text(alice: saferoom.Session, room) -> None:
    (token,) = one(alice, "select email from customers where segment = 'premium' and customer_id is not null order by 1 limit 1")[0]
    emails = [e for (e,) in room.raw("select email from customers where segment = 'premium'")]
    assert token == min(room.token(e) for e in emails)
    (key_token,) = one(alice, "select customer_id from cards where card_id = 1")[0]
    assert key_token == room.token(room.raw("select customer_id from cards where card_id = 1")[0][0])


def test_generalize_coarsens_dates_and_prefixes(alice: saferoom.Session, room) -> None:
    rows = alice.query("select birth_date, zip from customers").to_arrow()
    assert {d.day for d in rows.column("birth_date").to_pylist()} == {1}
    assert {len(z) for z in rows.column("zip").to_pylist()} == {3}
    expected = room.raw("select count(distinct date_trunc('month', birth_date)) from customers")[0][0]
    assert len(set(rows.column("birth_date").to_pylist())) == expected


def test_mask_keeps_last_four(ivan: saferoom.Session, room) -> None:
    got = dict(one(ivan, "select card_id, pan from cards where card_id <= 50"))
    for card_id, pan in room.raw("select card_id, pan from cards where card_id <= 50"):
        assert got[card_id] == "*" * 12 + pan[-4:]


def test_investigator_sees_raw_identifiers(ivan: saferoom.Session, room) -> None:
    assert one(ivan, "select name, ssn from customers where customer_id = 999001") == [("Zebediah Canaryfield", "212-45-6789")]


def test_star_leaves_out_denied_and_unlisted_columns(alice: saferoom.Session) -> None:
    assert alice.query("select * from cards limit 1").to_arrow().column_names == ["card_id", "customer_id"]
    assert "internal_score" not in alice.query("select * from customers limit 1").to_arrow().column_names


def test_ctes_windows_and_set_operations_work(alice: saferoom.Session, room) -> None:
    sql = """
        with monthly as (select date_trunc('month', created_at) as m, sum(amount) as revenue from orders group by 1)
        select m, revenue, sum(revenue) over (order by m) as running from monthly order by m
    """
    got = one(alice, sql)
    expected = room.raw(sql.replace("from orders", "from orders where region = 'EU'"))
    assert got == expected
    assert one(alice, "select 1 as x union all select 2 order by 1") == [(1,), (2,)]


def test_results_convert_to_pandas_and_polars(alice: saferoom.Session) -> None:
    result = alice.query("select region, amount from orders limit 10")
    assert len(result.to_pandas()) == 10
    assert result.to_polars().shape == (10, 2)
    assert isinstance(result.to_arrow(), pa.Table)
    assert not result.truncated


def test_max_rows_cuts_and_says_so(room) -> None:
    with room.connect("alice") as session:
        session.max_rows = 1000
        result = session.query("select order_id from orders")
        assert result.num_rows == 1000
        assert result.truncated
        exact = session.query("select order_id from orders limit 1000")
        assert exact.num_rows == 1000 and not exact.truncated


def test_amounts_are_exact_decimals(alice: saferoom.Session) -> None:
    (total,) = one(alice, "select sum(amount) from orders where order_id <= 10")[0]
    assert isinstance(total, Decimal)


@pytest.mark.parametrize("sql", [
    "select segment, count(*) from customers group by all",
    "select * from orders o where o.amount > (select avg(amount) from orders) limit 5",
    "select year(created_at) as y, quarter(created_at) as q, round(avg(amount), 2) from orders group by 1, 2",
    "select customer_id, amount, lag(amount) over (partition by customer_id order by created_at) from orders limit 20",
    "select region, percentile_cont(0.5) within group (order by amount) from orders group by 1",
    "select count(*) filter (where amount > 100) from orders",
    "select * from (values (1, 'a'), (2, 'b')) v(x, y)",
    "select left(zip, 2), count(*) from customers group by 1 having count(*) > 1",
])
def test_common_analysis_queries_run(alice: saferoom.Session, sql: str) -> None:
    assert alice.query(sql).to_arrow().num_rows > 0


def test_unqualified_names_resolve_and_ambiguity_is_refused(room, tmp_path) -> None:
    text = room.policy.read_text().replace("path: prod.duckdb", f"path: {room.database}").replace("file:token.key", f"file:{room.folder / 'token.key'}")
    text = text.replace("sources:", f"sources:\n  copy: {{engine: duckdb, path: {room.database}}}")
    text = text.replace("tables:", "tables:\n  copy.orders: {order_id: public}")
    policy = tmp_path / "saferoom.yaml"
    policy.write_text(text)
    with saferoom.connect(policy, user="alice") as session:
        with pytest.raises(saferoom.QueryRejected, match="ambiguous"):
            session.query("select count(*) from orders")
        assert session.query("select count(*) from copy.orders").to_arrow().column(0).to_pylist() == [room.raw("select count(*) from orders")[0][0]]


@pytest.mark.parametrize("sql", [
    "select b, a from orders t(a, b) order by a",
    "select customer, id from orders t(id, customer) order by id",
    "select t.c, t.a from orders t(a, b, c) order by t.a",
    "select x.a, y.b from orders x(a) join orders y(a, b) on x.a = y.a order by 1",
])
def test_positional_column_aliases_keep_their_columns(ivan: saferoom.Session, room, sql: str) -> None:
    """Columns renamed by position name the same columns as in the table the role sees (all of orders here)."""
    assert one(ivan, sql) == room.raw(sql)
