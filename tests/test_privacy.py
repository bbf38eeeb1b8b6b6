"""Differential privacy for aggregate-only roles: noise from OpenDP, and a budget spent exactly as configured,
kept by a real gateway across a restart."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
import sqlglot
from sqlglot import exp

import saferoom
from saferoom.client import RemoteSession
from saferoom.errors import LimitExceeded, QueryRejected, SaferoomError, UsageError
from saferoom.guard.aggregate_dp import bound_contributions
from saferoom.guard.resolve_tables import POLICY_TABLE
from saferoom.privacy import BUDGETS, StoreLedger
from saferoom.store import FileStore
from tests.gateway_helpers import Server, free_port
from tests.test_aggregate import small_groups

SUMS = "select region, sum(amount) as total from orders group by region"
EXACT = {"EU": 1000.0, "R10": 100.0}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_groups(tmp_path_factory.mktemp("privacy"))


@pytest.fixture
def dana(folder: Path) -> Iterator[saferoom.Session]:
    with saferoom.connect(folder / "saferoom.yaml", user="dana") as session:
        yield session


def answer(session: object, sql: str) -> dict[object, object]:
    return {tuple(r.values())[0]: tuple(r.values())[1] for r in session.query(sql).to_pylist()}  # type: ignore[attr-defined]


def test_sums_carry_noise_and_only_groups_of_ten_appear(dana) -> None:
    first, second = answer(dana, SUMS), answer(dana, SUMS)
    assert set(first) == set(second) == set(EXACT)  # R9 (nine customers) and SOLO (one) stay suppressed
    assert first != second and first != EXACT  # fresh noise each time: never reproducible
    result = dana.query("select segment, count(*) as n from customers group by segment")
    assert result.schema.field("n").type == "int64"
    assert any("differential privacy" in n for n in result.notices)


def test_the_budget_is_spent_exactly_as_configured(dana) -> None:
    for _ in range(3):  # epsilon 1 a query, 3 in the budget
        dana.explain(SUMS)  # explaining spends nothing
        answer(dana, SUMS)
    with pytest.raises(LimitExceeded, match="privacy budget of `dana` is spent: 3 of 3 used"):
        dana.query(SUMS)


def test_what_one_entity_adds_is_bounded(dana) -> None:
    sql = dana.guard("select region, count(*), avg(amount) from orders group by region").sql
    assert "QUALIFY ROW_NUMBER() OVER (PARTITION BY \"customer_id\") <= 1" in sql
    assert "LEAST(GREATEST(" in sql
    means = answer(dana, "select region, avg(amount) from orders group by region")
    assert set(means) == set(EXACT) and all(isinstance(v, float) for v in means.values())


def test_the_bounded_rows_carry_only_the_columns_the_query_uses(dana) -> None:
    """The window that bounds each customer's orders carries the key and the columns named, not the whole row;
    a join through it still finds its columns. Columns renamed by position are refused (the count of entities
    names the key), with what to write instead."""
    sql = dana.guard("select region, sum(amount) from orders group by region").sql
    assert 'SELECT "customer_id", "amount", "region" FROM' in sql and "order_id" not in sql
    joined = ("select c.segment, count(*) as n from orders o join customers c on o.customer_id = c.customer_id "
              "group by c.segment")
    assert set(answer(dana, joined)) == {"big", "ten"}
    with pytest.raises(QueryRejected, match="rename them in the select list"):
        dana.guard("select r, count(*) from orders as o(i, k, a, r) group by r")


@pytest.mark.parametrize("most", [1, 2, 3])
def test_each_entity_and_the_null_key_bring_at_most_m_rows(most: int) -> None:
    """Four orders of customer 1, one of customer 2, three without a customer: the NULL key is one partition."""
    con = duckdb.connect()
    con.execute("create table orders as select * from (values (1, 1), (1, 2), (1, 3), (1, 4), (2, 5), "
                "(NULL, 6), (NULL, 7), (NULL, 8)) t(customer_id, order_id)")
    tree = sqlglot.parse_one("select count(*), count(distinct order_id) from orders o")
    table = tree.find(exp.Table)
    assert table is not None
    table.meta[POLICY_TABLE] = "prod.orders"
    bound_contributions([(table, "customer_id")], most)
    expected = min(4, most) + 1 + min(3, most)
    assert con.execute(tree.sql("duckdb")).fetchone() == (expected, expected)


@pytest.mark.parametrize(("sql", "says"), [
    ("select region, sum(order_id) from orders group by region", "`order_id` has no bounds"),
    ("select region, count(distinct customer_id) from orders group by region", "with differential privacy"),
    ("select region, sum(amount) / count(*) from orders group by region", "with differential privacy"),
])
def test_what_cannot_be_noised_is_refused(dana, sql: str, says: str) -> None:
    with pytest.raises(QueryRejected, match=says):
        dana.query(sql)


def test_without_opendp_a_clear_error_and_nothing_spent(dana, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opendp.prelude", None)  # as if the extra were not installed
    with pytest.raises(UsageError, match=r"pip install 'saferoom\[dp\]'"):
        dana.query(SUMS)
    monkeypatch.undo()
    for _ in range(3):
        answer(dana, SUMS)  # the whole budget was still there


def test_the_budget_is_kept_in_the_store_and_an_unreadable_one_is_not_a_fresh_budget(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    try:
        StoreLedger(store).spend("dana", 1.0, budget=3, period_seconds=86400)
        assert StoreLedger(store).spend("dana", 2.0, budget=3, period_seconds=86400) == 0
        with pytest.raises(LimitExceeded):
            StoreLedger(store).spend("dana", 0.5, budget=3, period_seconds=86400)
        record = store.get(BUDGETS, "dana")
        assert record is not None
        store.put(BUDGETS, "dana", {"spends": "not a list of spends"}, record.version)
        with pytest.raises(SaferoomError, match="cannot be read"):
            StoreLedger(store).spend("dana", 0.5, budget=3, period_seconds=86400)
    finally:
        store.close()


def test_the_gateway_keeps_the_budget_across_a_restart(folder: Path, tmp_path: Path) -> None:
    server = Server(folder / "saferoom.yaml", tmp_path / "state", free_port(), tmp_path / "server.log").start()
    try:
        token = server.token("dana")
        for _ in range(2):
            with RemoteSession(server.url, token) as remote:
                assert set(answer(remote, SUMS)) == set(EXACT)
        server.stop()
        server.start()
        with RemoteSession(server.url, token) as remote:
            assert "this query spends epsilon 1 of the user's privacy budget" in remote.explain(SUMS).notes
            answer(remote, SUMS)
            with pytest.raises(LimitExceeded, match="privacy budget of `dana` is spent"):
                remote.query(SUMS)
    finally:
        server.stop()
    store = FileStore(tmp_path / "state")
    try:
        record = store.get(BUDGETS, "dana")
        assert record is not None and [e for _, e in record.value["spends"]] == [1.0, 1.0, 1.0]
    finally:
        store.close()
    audit = (tmp_path / "state" / "audit.log").read_text()
    assert "this query spends epsilon 1 of the user's privacy budget" in audit
    assert "privacy budget of `dana` is spent" in audit
