"""Random queries never crash the guard with anything but a SaferoomError, and never leak."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import saferoom
from tests.leaks import leaks

WORDS = [
    "select", "from", "where", "with", "as", "union", "all", "join", "on", "using", "group", "by", "order", "limit",
    "lateral", "exists", "not", "and", "or", "case", "when", "then", "else", "end", "cast", "(", ")", ",", "*", ".",
    "=", "<", "+", "||", ";", "--", "/*", "*/", "'", '"', "1", "'x'", "null", "true", "over", "partition",
    "customers", "orders", "cards", "prod", "main", "pan", "ssn", "name", "email", "region", "amount", "customer_id",
    "count(*)", "sum(amount)", "max(pan)", "read_csv('x')", "information_schema.tables", "duckdb_tables()",
    "insert", "into", "delete", "drop", "attach", "pragma", "set", "copy", "__saferoom_token", "$1", "?",
]

fragments = st.lists(st.sampled_from(WORDS), min_size=1, max_size=25).map(" ".join)
shaped = st.builds(
    "select {} from {} {}".format,
    st.sampled_from(["*", "name", "pan", "count(*)", "region, sum(amount)", "c.*", "ssn || name"]),
    st.sampled_from(["customers", "orders", "cards", "customers c", "prod.main.cards", "(select * from orders) o"]),
    st.sampled_from(["", "where region = 'US'", "group by 1", "limit 3", "where pan like '4%'", "order by 1"]),
)


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(fragments, shaped, st.text(max_size=200)))
def test_guard_only_raises_saferoom_errors(alice: saferoom.Session, sql: str) -> None:
    try:
        alice.guard(sql)
    except saferoom.SaferoomError:
        pass


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(shaped, fragments))
def test_random_queries_never_leak(alice: saferoom.Session, secrets_of: set[str], room, sql: str) -> None:
    try:
        table = alice.query(sql).to_arrow()
    except saferoom.SaferoomError:
        return
    assert not leaks(table, secrets_of, room.key)


def test_deep_nesting_is_refused_cleanly(alice: saferoom.Session) -> None:
    """Too deep to check is refused with a reason, not a RecursionError; nesting people write is not refused."""
    with pytest.raises(saferoom.QueryRejected, match="nested too deeply"):
        alice.guard("select " + "(" * 5000 + "1" + ")" * 5000)
    assert "1" in alice.guard("select " + "(" * 50 + "1" + ")" * 50 + " as x").sql
