"""Spark as a source (local[2]): the same guard, tokens and red team as DuckDB and PostgreSQL."""

from __future__ import annotations

import pytest

import saferoom
from tests.leaks import leaks, message_leaks
from tests.test_redteam import ATTACKS

SPARK_ATTACKS = [
    "select * from parquet.`/etc/passwd`",
    "select * from csv.`/etc/passwd`",
    "select * from delta.`/lake/x`",
    "select * from read_files('/etc')",
    "select reflect('java.lang.Runtime', 'getRuntime')",
    "select java_method('java.lang.System', 'getenv', 'HOME')",
    "add jar /lake/evil.jar",
    "set spark.sql.ansi.enabled=false",
    "set spark.sql.warehouse.dir=/lake",
    "create temporary view customers as select 1 as pan",
    "create temporary function f as 'Evil'",
    "refresh table lake.orders",
    "cache table lake.cards",
    "show tables",
    "describe lake.cards",
    "select transform(order_id) using 'cat' as (x) from orders",
    "select * from __saferoom_lake_cards",
    "select saferoom_token(pan) from cards",
    "select * from global_temp.anything",
    "select input_file_name() from orders",
    "select current_user()",
]


@pytest.mark.parametrize("sql", ATTACKS + SPARK_ATTACKS)
def test_attack_on_spark_is_refused_or_harmless(spark_alice, secrets_of, room, sql: str) -> None:
    try:
        table = spark_alice.query(sql).to_arrow()
    except saferoom.SaferoomError as exc:
        assert not message_leaks(str(exc), secrets_of, room.key), str(exc)
        return
    assert not leaks(table, secrets_of, room.key), sql


def test_tokens_and_numbers_match_duckdb(spark_alice, alice) -> None:
    for sql in ("select card_id, customer_id from cards order by card_id",
                "select name, email, ssn, birth_date, zip from customers order by customer_id limit 300",
                "select region, count(*) as n, sum(amount) as total from orders group by region order by region"):
        assert spark_alice.query(sql).to_pylist() == alice.query(sql).to_pylist(), sql


def test_masking_matches_duckdb(spark_room, ivan) -> None:
    with saferoom.connect(spark_room, user="ivan") as spark_ivan:
        sql = "select card_id, pan from cards order by card_id limit 100"
        assert spark_ivan.query(sql).to_pylist() == ivan.query(sql).to_pylist()


def test_denied_column_is_explained_on_spark(spark_alice) -> None:
    with pytest.raises(saferoom.QueryRejected) as caught:
        spark_alice.query("select pan from cards").to_arrow()
    assert caught.value.column == "lake.cards.pan"


def test_filtered_rows_never_raise_on_spark(spark_alice, room) -> None:
    sql = "select count(*) as n from orders where cast(case when region = 'US' then 'x' else '1' end as int) = 1"
    assert spark_alice.query(sql).to_pylist() == [{"n": room.raw("select count(*) from orders where region = 'EU'")[0][0]}]


def test_missing_path_is_a_clear_error(spark_room, tmp_path) -> None:
    text = spark_room.read_text().replace("orders.parquet", "gone.parquet")
    (tmp_path / "saferoom.yaml").write_text(text)
    with pytest.raises(saferoom.EngineError, match="has no files"):
        saferoom.connect(tmp_path / "saferoom.yaml", user="alice")


def test_nothing_secret_reaches_the_logs(spark_alice, room, capfd) -> None:
    from saferoom.engines.spark import token_function
    from saferoom.secrets import Secret

    for sql in ("select pan from cards", "select cast(name as int) from customers", "select 1/0 from orders"):
        try:
            spark_alice.query(sql).to_arrow()
        except saferoom.SaferoomError:
            pass
    captured = capfd.readouterr()
    pads = token_function(Secret(room.key)).split("unhex('")[1][:64]
    assert pads not in captured.out + captured.err and room.key not in captured.out + captured.err
