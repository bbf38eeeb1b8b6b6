"""The SQLAlchemy dialect, pandas.read_sql and JupySQL over it, embedded and through a real gateway."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

import saferoom
from saferoom.dialect import connect_args
from tests.gateway_helpers import serving
from tests.kernels import Kernel

SUMMARY = "select region, count(*) as n, sum(amount) as total from orders group by region order by region"


@pytest.fixture(scope="module")
def server(room, tmp_path_factory):
    yield from serving(room, tmp_path_factory, "sqlalchemy")


@pytest.fixture(scope="module")
def alice_token(server) -> str:
    return server.token("alice")


@pytest.fixture(scope="module", params=["embedded", "gateway"])
def engine(request, room, server, alice_token) -> Iterator[sa.Engine]:
    if request.param == "embedded":
        url = f"saferoom:///{room.policy}?user=alice"
    else:
        url = f"saferoom+http://:{alice_token}@127.0.0.1:{server.port}"
    made = sa.create_engine(url)
    yield made
    made.dispose()


@pytest.mark.parametrize("url, expected", [
    ("saferoom:///saferoom.yaml?user=alice", {"policy": "saferoom.yaml", "user": "alice", "role": None, "backend": None}),
    ("saferoom:////srv/room/saferoom.yaml?user=ivan&role=investigator",
     {"policy": "/srv/room/saferoom.yaml", "user": "ivan", "role": "investigator", "backend": None}),
    ("saferoom+https://gateway.example:8470", {"url": "https://gateway.example:8470", "token": None, "role": None}),
    ("saferoom+http://:s3cret@127.0.0.1:8470?role=analyst", {"url": "http://127.0.0.1:8470", "token": "s3cret", "role": "analyst"}),
    ("saferoom://gateway.example?token=t0k", {"url": "https://gateway.example", "token": "t0k", "role": None}),
    ("saferoom://", {"policy": None, "user": None, "role": None, "backend": None}),
])
def test_urls_become_connect_arguments(url: str, expected: dict[str, object]) -> None:
    assert connect_args(make_url(url)) == expected


def test_an_unknown_url_option_is_refused() -> None:
    with pytest.raises(saferoom.UsageError, match="passwd"):
        connect_args(make_url("saferoom:///saferoom.yaml?user=alice&passwd=x"))


def test_reflection_shows_only_what_the_role_may_see(engine: sa.Engine) -> None:
    inspector = sa.inspect(engine)
    assert inspector.get_schema_names() == ["prod"]
    assert inspector.get_table_names() == ["cards", "customers", "orders"]
    assert inspector.get_table_names(schema="prod") == ["cards", "customers", "orders"]
    cards = {c["name"]: c["type"] for c in inspector.get_columns("cards")}
    assert list(cards) == ["card_id", "customer_id"]  # pan is denied: not there
    customers = [c["name"] for c in inspector.get_columns("customers", schema="prod")]
    assert "internal_score" not in customers and "segment" in customers
    assert isinstance(cards["card_id"], sa.BigInteger)
    assert isinstance(cards["customer_id"], sa.String)  # a token, whatever the source's type
    orders = {c["name"]: c["type"] for c in inspector.get_columns("orders")}
    assert isinstance(orders["amount"], sa.Numeric) and orders["amount"].scale == 2
    assert isinstance(orders["created_at"], sa.DateTime)
    assert inspector.has_table("orders") and not inspector.has_table("secrets")


def test_a_table_the_role_cannot_see_is_not_found(engine: sa.Engine) -> None:
    with pytest.raises(sa.exc.NoSuchTableError):
        sa.Table("secrets", sa.MetaData(), autoload_with=engine)


def test_core_select_runs_through_the_guard(engine: sa.Engine, alice: saferoom.Session) -> None:
    orders = sa.Table("orders", sa.MetaData(), autoload_with=engine, schema="prod")
    query = (sa.select(orders.c.region, sa.func.count().label("n"))
             .where(orders.c.amount > 100).group_by(orders.c.region).order_by(orders.c.region).limit(10))
    with engine.connect() as con:
        rows = [tuple(r) for r in con.execute(query)]
    expected = alice.query("select region, count(*) as n from orders where amount > 100 group by region order by region")
    assert rows == [tuple(r.values()) for r in expected.to_pylist()] and rows


def test_division_keeps_pythons_meaning_on_duckdb(engine: sa.Engine) -> None:
    """DuckDB's `/` divides integers exactly: `/` is true division and `//` is floored (SQLAlchemy's default
    assumes `/` floors integers, as PostgreSQL's does, and would give 1.5 for 15 // 10)."""
    fifteen, ten = sa.literal(15, sa.Integer), sa.literal(10, sa.Integer)
    with engine.connect() as connection:
        assert connection.dialect.div_is_floordiv is False
        assert connection.scalar(sa.select(fifteen / ten)) == 1.5
        assert connection.scalar(sa.select(fifteen // ten)) == 1
        assert connection.scalar(sa.select(-fifteen // ten)) == -2


def test_a_hostile_value_through_core_is_a_literal(engine: sa.Engine) -> None:
    orders = sa.Table("orders", sa.MetaData(), autoload_with=engine)
    with engine.connect() as con:
        count = con.execute(sa.select(sa.func.count()).where(orders.c.region == "x' or 1=1 --")).scalar()
        echoed = con.execute(sa.select(sa.literal("region", sa.String).label("v"))).scalar()
    assert (count, echoed) == (0, "region")


def test_read_sql_equals_to_pandas(engine: sa.Engine, alice: saferoom.Session) -> None:
    sql = "select order_id, customer_id, amount, region, created_at from orders order by order_id"
    frame = pd.read_sql(sql, engine)
    expected = alice.query(sql).to_pandas()
    assert len(frame) == len(expected) > 0
    pd.testing.assert_frame_equal(pd.read_sql(sql, engine, coerce_float=False), expected, check_dtype=False)
    expected["amount"] = expected["amount"].astype(float)  # read_sql's default: decimals become floats
    pd.testing.assert_frame_equal(frame, expected, check_dtype=False)


def test_read_sql_with_parameters(engine: sa.Engine, alice: saferoom.Session) -> None:
    frame = pd.read_sql(sa.text("select count(*) as n from orders where amount > :low"), engine, params={"low": 100})
    expected = alice.query("select count(*) as n from orders where amount > 100").to_pylist()[0]["n"]
    assert frame["n"].tolist() == [expected]


def test_a_refusal_surfaces_with_its_explanation(engine: sa.Engine) -> None:
    with pytest.raises(pd.errors.DatabaseError) as caught:
        pd.read_sql("select pan from cards", engine)
    wrapped = caught.value.__cause__
    assert isinstance(wrapped, sa.exc.ProgrammingError) and isinstance(wrapped.orig, saferoom.QueryRejected)
    assert "card-theft" in str(caught.value) and wrapped.orig.column == "prod.cards.pan"


def test_a_missing_sqlalchemy_says_which_extra_to_install() -> None:
    code = ("import sys; sys.modules['sqlalchemy'] = None\n"
            "from saferoom.errors import UsageError\n"
            "try:\n    import saferoom.dialect\nexcept UsageError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'saferoom[sqlalchemy]'" in done.stdout, done.stdout + done.stderr


@pytest.fixture(scope="module")
def kernel(room) -> Iterator[Kernel]:
    started = Kernel(room.folder)
    try:
        _, error = started.run("%load_ext sql")
        assert error is None, error
        yield started
    finally:
        started.stop()


def test_a_session_opens_in_a_notebook_kernel(kernel: Kernel, room) -> None:
    """DuckDB in a kernel without ipywidgets refuses any change to its progress bar, even to off."""
    shown, error = kernel.run(f"import saferoom\nprint(saferoom.connect({str(room.policy)!r}, user='alice')"
                              ".query('select 41 + 1 as answer').to_pylist())")
    assert error is None and "[{'answer': 42}]" in shown, (shown, error)


@pytest.mark.parametrize("where", ["embedded", "gateway"])
def test_jupysql_cells_in_a_kernel(kernel: Kernel, room, server, alice_token, alice: saferoom.Session,
                                   where: str) -> None:
    url = f"saferoom:///{room.policy}?user=alice" if where == "embedded" else \
        f"saferoom+http://:{alice_token}@127.0.0.1:{server.port}"
    _, error = kernel.run(f"%sql {url}")
    assert error is None, error
    shown, error = kernel.run(f"rows = %sql {SUMMARY}\nprint(repr([tuple(r) for r in rows]))")
    expected = [tuple(r.values()) for r in alice.query(SUMMARY).to_pylist()]
    assert error is None and repr(expected) in shown and expected, (shown, error)
    shown, error = kernel.run("%%sql\nselect segment, count(*) as n from customers group by segment order by segment")
    segments = alice.query("select segment from customers group by segment order by segment").to_pylist()
    assert error is None and all(s["segment"] in shown for s in segments) and "| n " in shown.replace("  ", " "), shown
    shown, error = kernel.run("%%sql\nselect pan from cards")
    said = shown + (error or "")  # JupySQL shows a failed query as text, not as the cell's exception
    assert "QueryRejected" in said and "card-theft" in said and "Roles that may see it: investigator" in said, said
    assert "Traceback" not in said and alice_token not in said


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory) -> Path:
    """Two DuckDB sources that both have a table `t`, and one table only the first has."""
    import duckdb

    folder = tmp_path_factory.mktemp("two_sources")
    for source, tables in (("a", {"t": "x int, y varchar", "only_a": "z int"}), ("b", {"t": "w double"})):
        with duckdb.connect(str(folder / f"{source}.duckdb")) as con:
            for table, columns in tables.items():
                con.execute(f"create table {table} ({columns})")
    (folder / "saferoom.yaml").write_text("""version: 1
sources: {a: {engine: duckdb, path: a.duckdb}, b: {engine: duckdb, path: b.duckdb}}
tables: {a.t: {x: public, y: public}, a.only_a: {z: public}, b.t: {w: public}}
tags: {}
users: {u: {roles: [analyst]}}
roles: {analyst: {}}
""")
    return folder / "saferoom.yaml"


def test_without_a_schema_reflection_lists_the_tables_a_query_may_name_unqualified(two_sources: Path) -> None:
    engine = sa.create_engine(f"saferoom:///{two_sources}?user=u")
    inspector = sa.inspect(engine)
    assert inspector.get_schema_names() == ["a", "b"]
    assert inspector.get_table_names() == ["only_a"]  # `t` is in both: a query must say which
    assert inspector.get_table_names(schema="b") == ["t"]
    assert not inspector.has_table("t") and inspector.has_table("t", schema="a")
    assert [c["name"] for c in inspector.get_columns("t", schema="b")] == ["w"]
    only_a = sa.Table("only_a", sa.MetaData(), autoload_with=engine)
    with engine.connect() as con:
        assert con.execute(sa.select(sa.func.count()).select_from(only_a)).scalar() == 0
    engine.dispose()
