"""The SQLAlchemy dialect, pandas.read_sql and JupySQL over it, embedded and through a real gateway."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pandas as pd
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

import saferoom
from saferoom.dialect import connect_args
from tests.gateway_helpers import serving

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
def shell():
    from IPython.core.interactiveshell import InteractiveShell

    ipython = InteractiveShell.instance()
    assert ipython.run_cell("%load_ext sql").success
    ipython.run_line_magic("config", "SqlMagic.displaylimit = None")
    yield ipython
    from sql.connection import ConnectionManager

    ConnectionManager.close_all()


def test_jupysql_cells_return_rows(shell, room, alice: saferoom.Session) -> None:
    shell.run_line_magic("sql", f"saferoom:///{room.policy}?user=alice")
    result = shell.run_cell(f"%%sql\n{SUMMARY}")
    assert result.success, result.error_in_exec
    expected = [tuple(r.values()) for r in alice.query(SUMMARY).to_pylist()]
    assert [tuple(r) for r in result.result] == expected
    line = shell.run_cell("%sql select count(*) as n from customers")
    expected_n = alice.query("select count(*) as n from customers").to_pylist()[0]["n"]
    assert line.success and [tuple(r) for r in line.result] == [(expected_n,)]


def test_jupysql_shows_a_refusal_as_its_explanation(shell, room) -> None:
    shell.run_line_magic("sql", f"saferoom:///{room.policy}?user=alice")
    result = shell.run_cell("%%sql\nselect pan from cards")
    assert not result.success
    assert "card-theft" in str(result.error_in_exec) and "Roles that may see it: investigator" in str(result.error_in_exec)
