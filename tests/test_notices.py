"""A result says how the policy shaped it: a row filter, a cut at max_rows; never a value the role may not see."""

from __future__ import annotations

from pathlib import Path

import pytest

import saferoom
from tests import policies

EU_FILTER = "rows of prod.orders are filtered for role analyst: region = 'EU'"


def test_a_filtered_table_says_so_when_a_query_finds_nothing(alice) -> None:
    result = alice.query("select count(*) as n from prod.orders where region = 'US'")
    assert result.to_pylist() == [{"n": 0}]
    assert result.notices == (EU_FILTER,)


def test_a_table_without_a_filter_has_no_notice(alice, ivan) -> None:
    assert alice.query("select segment from prod.customers limit 1").notices == ()
    assert ivan.query("select region from prod.orders limit 1").notices == ()


def test_each_filtered_table_is_named_once(alice) -> None:
    sql = "select count(*) from prod.orders a join prod.orders b using (order_id) join prod.customers c on c.customer_id = a.customer_id"
    assert alice.query(sql).notices == (EU_FILTER,)


@pytest.fixture(scope="module")
def shaped(room, tmp_path_factory) -> Path:
    """A policy with a row limit, a filter on a column its role sees only tokenized and one needing an attribute."""
    policy = policies.demo(room)
    policy["sources"]["prod"]["path"] = str(room.database)
    policy["users"]["alice"]["attributes"]["customer"] = 4242
    policy["users"]["bob"] = {"roles": ["analyst"]}
    policy["roles"]["analyst"]["max_rows"] = 3
    policy["roles"]["analyst"]["rows"]["prod.cards"] = "customer_id <> {user.customer}"
    return policies.write(policy, tmp_path_factory.mktemp("notices") / "saferoom.yaml", "duckdb")


def test_a_cut_at_max_rows_is_a_notice(shaped) -> None:
    with saferoom.connect(shaped, user="alice") as session:
        cut = session.query("select order_id from prod.orders")
        assert cut.num_rows == 3 and cut.notices == (EU_FILTER, "cut at max_rows=3 (the limit of role analyst): "
                                                                   "the query had more rows")
        assert session.query("select order_id from prod.orders limit 3").notices == (EU_FILTER,)


def test_a_filter_on_a_column_the_role_sees_tokenized_shows_no_value(shaped) -> None:
    with saferoom.connect(shaped, user="alice") as session:
        notices = session.query("select card_id from prod.cards limit 1").notices
    assert notices == ("rows of prod.cards are filtered for role analyst by a rule on columns this role does not see",)
    assert "4242" not in " ".join(notices)


def test_a_missing_attribute_is_named_not_guessed(shaped) -> None:
    with saferoom.connect(shaped, user="bob") as session:
        result = session.query("select count(*) as n from prod.orders")
        assert result.to_pylist() == [{"n": 0}]
        assert result.notices == ("no rows of prod.orders are visible to you: its filter for role analyst needs the "
                                  "user attribute region, which you do not have",)


def test_notices_hold_no_secret(alice, secrets_of) -> None:
    text = " ".join(alice.query("select * from prod.orders join prod.customers using (customer_id)").notices)
    assert text and not any(secret in text for secret in secrets_of)
