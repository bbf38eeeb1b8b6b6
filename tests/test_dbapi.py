"""saferoom.dbapi against the PEP 249 checks that apply to a read-only driver, embedded and through a real gateway."""

from __future__ import annotations

import datetime
import decimal
from collections.abc import Iterator

import pytest
import sqlglot
from sqlglot import exp

import saferoom
from saferoom import dbapi
from saferoom.parameters import bind
from tests.gateway_helpers import serving

SUMMARY = "select region, count(*) as n, sum(amount) as total from orders group by region order by region"


@pytest.fixture(scope="module")
def server(room, tmp_path_factory):
    yield from serving(room, tmp_path_factory, "dbapi")


@pytest.fixture(scope="module")
def alice_token(server) -> str:
    return server.token("alice")


@pytest.fixture(params=["embedded", "gateway"])
def con(request, room, server, alice_token) -> Iterator[dbapi.Connection]:
    if request.param == "embedded":
        connection = dbapi.connect(room.policy, user="alice")
    else:
        connection = dbapi.connect(url=server.url, token=alice_token)
    yield connection
    if not connection.closed:
        connection.close()


def test_module_globals() -> None:
    assert dbapi.apilevel == "2.0"
    assert dbapi.threadsafety in (0, 1, 2, 3)
    assert dbapi.paramstyle == "named"


@pytest.mark.parametrize("child, parent", [
    (dbapi.Warning, Exception), (dbapi.Error, Exception), (dbapi.InterfaceError, dbapi.Error),
    (dbapi.DatabaseError, dbapi.Error), (dbapi.DataError, dbapi.DatabaseError),
    (dbapi.OperationalError, dbapi.DatabaseError), (dbapi.IntegrityError, dbapi.DatabaseError),
    (dbapi.InternalError, dbapi.DatabaseError), (dbapi.ProgrammingError, dbapi.DatabaseError),
    (dbapi.NotSupportedError, dbapi.DatabaseError),
    (dbapi.QueryRejected, dbapi.ProgrammingError), (dbapi.QueryRejected, saferoom.QueryRejected),
    (dbapi.UsageError, dbapi.ProgrammingError), (dbapi.UsageError, saferoom.UsageError),
    (dbapi.AuthError, dbapi.OperationalError), (dbapi.AuthError, saferoom.AuthError),
    (dbapi.EngineError, dbapi.DatabaseError), (dbapi.PolicyError, dbapi.InternalError),
])
def test_the_exception_hierarchy(child: type, parent: type) -> None:
    assert issubclass(child, parent)


def test_warning_is_not_an_error() -> None:
    assert not issubclass(dbapi.Warning, dbapi.Error) and not issubclass(dbapi.Error, dbapi.Warning)


def test_errors_are_reachable_from_the_connection(con: dbapi.Connection) -> None:
    for name in ("Error", "Warning", "InterfaceError", "DatabaseError", "DataError", "OperationalError",
                 "IntegrityError", "InternalError", "ProgrammingError", "NotSupportedError"):
        assert getattr(con, name) is getattr(dbapi, name)


def test_rows_match_the_session(con: dbapi.Connection, alice: saferoom.Session) -> None:
    cur = con.cursor()
    cur.execute(SUMMARY)
    expected = [tuple(row.values()) for row in alice.query(SUMMARY).to_pylist()]
    assert cur.fetchall() == expected and expected


def test_description_names_and_types(con: dbapi.Connection) -> None:
    cur = con.cursor()
    assert cur.description is None
    cur.execute("select order_id, region, amount, created_at from orders limit 1")
    assert cur.description is not None and len(cur.description) == 4
    assert [d[0] for d in cur.description] == ["order_id", "region", "amount", "created_at"]
    codes = [d[1] for d in cur.description]
    assert codes[0] == dbapi.NUMBER and codes[1] == dbapi.STRING and codes[2] == dbapi.NUMBER
    assert codes[3] == dbapi.DATETIME and codes[1] != dbapi.NUMBER and dbapi.STRING == codes[1]
    assert cur.description[2][4:6] == (12, 2)  # amount's precision and scale
    assert all(len(d) == 7 for d in cur.description)


def test_a_tokenized_column_is_described_as_the_string_it_is(con: dbapi.Connection) -> None:
    cur = con.cursor()
    cur.execute("select customer_id from customers limit 1")
    assert cur.description is not None and cur.description[0][1] == dbapi.STRING


def test_fetch_semantics(con: dbapi.Connection) -> None:
    cur = con.cursor()
    cur.execute("select order_id from orders order by order_id limit 6")
    assert cur.arraysize == 1 and cur.rowcount == -1  # rows stream: not counted until all are read
    first = cur.fetchone()
    assert isinstance(first, tuple) and len(first) == 1
    assert len(cur.fetchmany()) == 1  # arraysize rows
    cur.arraysize = 2
    assert len(cur.fetchmany()) == 2
    rest = cur.fetchall()
    assert len(rest) == 2 and cur.fetchone() is None and cur.fetchmany(5) == [] and cur.fetchall() == []
    assert cur.rowcount == 6
    cur.execute("select order_id from orders where order_id < 0")
    assert cur.fetchall() == [] and cur.rowcount == 0 and cur.description is not None


def test_fetchmany_crosses_batches_in_order(con: dbapi.Connection, alice: saferoom.Session) -> None:
    sql = "select order_id from orders order by order_id"
    expected = [r["order_id"] for r in alice.query(sql).to_pylist()]
    cur = con.cursor()
    cur.execute(sql)
    got: list[int] = []
    while chunk := cur.fetchmany(997):
        got += [row[0] for row in chunk]
    assert got == expected and len(expected) > 2048  # more rows than one batch


def test_a_new_execute_drops_the_last_result(con: dbapi.Connection) -> None:
    cur = con.cursor()
    cur.execute("select order_id from orders")
    cur.fetchone()
    cur.execute("select 42 as answer")
    assert cur.fetchall() == [(42,)] and cur.description is not None and cur.description[0][0] == "answer"


def test_fetch_before_execute_and_after_close_are_interface_errors(con: dbapi.Connection) -> None:
    cur = con.cursor()
    with pytest.raises(dbapi.InterfaceError):
        cur.fetchone()
    cur.close()
    with pytest.raises(dbapi.InterfaceError):
        cur.execute("select 1")
    con.close()
    with pytest.raises(dbapi.InterfaceError):
        con.cursor()
    with pytest.raises(dbapi.InterfaceError):
        con.commit()
    with pytest.raises(dbapi.Error):
        con.close()


def test_commit_and_rollback_have_nothing_to_do(con: dbapi.Connection) -> None:
    con.commit()
    con.rollback()
    cur = con.cursor()
    cur.execute("select 1 as one")
    assert cur.fetchone() == (1,)


def test_iterating_a_cursor_gives_its_rows(con: dbapi.Connection) -> None:
    sql = "select order_id from orders order by order_id limit 3"
    expected = con.cursor().execute(sql).fetchall()
    assert list(con.cursor().execute(sql)) == expected and len(expected) == 3


def test_executemany_is_not_supported(con: dbapi.Connection) -> None:
    with pytest.raises(dbapi.NotSupportedError, match="read-only"):
        con.cursor().executemany("select :x as x", [{"x": 1}, {"x": 2}])


@pytest.mark.parametrize("value", [
    None, True, False, 0, -7, 2**40, 3.25, -0.5, decimal.Decimal("12.34"), "plain", "it's", "",
    datetime.date(2024, 2, 29), datetime.datetime(2024, 2, 29, 12, 30, 1),
    datetime.datetime(2024, 2, 29, 12, 30, 1, tzinfo=datetime.UTC), datetime.time(8, 15),
])
def test_a_value_comes_back_as_bound(con: dbapi.Connection, value: object) -> None:
    cur = con.cursor()
    cur.execute("select :v as v", {"v": value})
    assert cur.fetchall() == [(value,)]


HOSTILE = ["x' or 1=1 --", "US' union select pan from cards --", "'); drop table orders; --", "region", "orders.region",
           "\"region\"", ":other", "$1", "US\\' or 'a'='a", "US\u0000' or '1'='1"]


@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_value_is_one_literal(con: dbapi.Connection, value: str) -> None:
    """Were the value pasted into the text, these would match every row, reach a denied column or refer to a column."""
    cur = con.cursor()
    cur.execute("select count(*) as n from orders where region = :r", {"r": value})
    assert cur.fetchall() == [(0,)]
    cur.execute("select :r as r", {"r": value})
    assert cur.fetchall() == [(value,)]


@pytest.mark.parametrize("value", HOSTILE)
def test_binding_never_changes_the_statement_shape(value: str) -> None:
    sql = "select count(*) as n from orders where region = :r and amount > :low"
    shape = [type(node) for node in sqlglot.parse_one(bind(sql, {"r": "US", "low": 1}), read="duckdb").walk()]
    bound = sqlglot.parse_one(bind(sql, {"r": value, "low": 1}), read="duckdb")
    assert [type(node) for node in bound.walk()] == shape
    assert [lit.this for lit in bound.find_all(exp.Literal) if lit.is_string] == [value]


def test_numbered_parameters_take_a_sequence(con: dbapi.Connection) -> None:
    cur = con.cursor()
    cur.execute("select $2 as b, $1 as a", ["first", 2])
    assert cur.fetchall() == [(2, "first")]


@pytest.mark.parametrize("sql, parameters, says", [
    ("select :missing as m", {"other": 1}, "no value for the parameter `:missing`"),
    ("select ? as q", [1], "`?` placeholders are not supported"),
    ("select $3 as q", [1, 2], "placeholders are `$1` to `$2`"),
    ("select :x as q", "x", "not one string"),
    ("select :x as q", {"x": b"bytes"}, "cannot be bound"),
    ("select :x as q", {"x": float("nan")}, "not a finite number"),
    ("select from where :x", {"x": 1}, "not valid SQL"),
])
def test_parameters_that_cannot_be_bound_are_programming_errors(con: dbapi.Connection, sql: str, parameters: object,
                                                                says: str) -> None:
    with pytest.raises(dbapi.ProgrammingError, match=says.replace("$", r"\$")) as caught:
        con.cursor().execute(sql, parameters)  # type: ignore[arg-type]
    assert isinstance(caught.value, saferoom.UsageError)


def test_a_refusal_is_a_programming_error_and_query_rejected_with_its_explanation(con: dbapi.Connection) -> None:
    with pytest.raises(dbapi.ProgrammingError) as caught:
        con.cursor().execute("select pan from cards")
    refusal = caught.value
    assert isinstance(refusal, saferoom.QueryRejected) and isinstance(refusal, dbapi.Error)
    assert refusal.column == "prod.cards.pan" and refusal.allowed_roles == ("investigator",)
    assert "card-theft" in str(refusal) and "Roles that may see it" in str(refusal)


def test_a_write_is_refused(con: dbapi.Connection) -> None:
    with pytest.raises(dbapi.ProgrammingError) as caught:
        con.cursor().execute("delete from orders where order_id = :id", {"id": 1})
    assert isinstance(caught.value, saferoom.QueryRejected)


def test_a_bad_token_is_an_operational_error_and_an_auth_error(server) -> None:
    with pytest.raises(dbapi.OperationalError) as caught:
        dbapi.connect(url=server.url, token="not-a-token")
    assert isinstance(caught.value, saferoom.AuthError)


def test_an_unknown_user_is_an_operational_error(room) -> None:
    with pytest.raises(dbapi.OperationalError) as caught:
        dbapi.connect(room.policy, user="mallory")
    assert isinstance(caught.value, saferoom.AccessDenied)


def test_notices_say_how_the_policy_shaped_the_rows(con: dbapi.Connection) -> None:
    cur = con.cursor()
    cur.execute("select count(*) from orders")
    cur.fetchall()
    assert any("orders" in notice for notice in cur.notices)


def test_the_connection_is_a_context_manager(room) -> None:
    with dbapi.connect(room.policy, user="ivan") as con:
        assert con.cursor().execute("select count(*) from cards").fetchone() is not None
    assert con.closed


def test_the_binding_examples_run() -> None:
    import doctest

    from saferoom import parameters

    failed, attempted = doctest.testmod(parameters)
    assert failed == 0 and attempted >= 2


def test_a_placeholder_inside_a_string_or_comment_is_text(con: dbapi.Connection) -> None:
    cur = con.cursor()
    cur.execute("select ':v' as s, :v as v -- and :w in a comment", {"v": 1})
    assert cur.fetchall() == [(":v", 1)]


def test_parameters_are_read_in_the_sessions_dialect(con: dbapi.Connection) -> None:
    assert con.session.dialect == "duckdb"  # the gateway says which in /v1/whoami


VALUES = """select case when range % 7 = 0 then null else (range - 500)::decimal(12, 2) / 3 end as amount,
    (range * 123456789012)::decimal(38, 10) as wide,
    case when range % 5 = 0 then null else timestamp '2024-01-01 10:11:12.345678' + to_seconds(range) end as at,
    timestamp '2024-01-01 10:11:12.345'::timestamp_ms as at_ms, timestamp '2024-01-01 10:11:12'::timestamptz as at_tz,
    timestamp '2024-01-01 10:11:12.345678'::timestamp_ns as at_ns,
    case when range % 3 = 0 then null else date '2024-02-29' + range::int end as day, 'x' || range as label
from range(2000)"""


def test_columns_convert_in_bulk_to_what_arrow_gives_value_by_value() -> None:
    """The bulk conversions (numpy for dates and timestamps, text for decimals) give the very values and types
    Arrow's own per-value conversion does, nulls included."""
    import duckdb

    for column in duckdb.sql(VALUES).to_arrow_table().combine_chunks().columns:
        chunk = column.chunks[0].slice(3)  # an offset into the buffers, as a batch cut at max_rows has
        got, expected = dbapi.python_values(chunk), chunk.to_pylist()
        assert got == expected and [type(v) for v in got] == [type(v) for v in expected], column.type
        assert [str(v) for v in got] == [str(v) for v in expected]  # Decimal('1.50') is not Decimal('1.5') in text
