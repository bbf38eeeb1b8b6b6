"""Stopping a query from another thread, in each engine, and the limits that bound one user's queries."""

from __future__ import annotations

import threading
from pathlib import Path

import duckdb
import pytest

from saferoom.engines.base import Cancel
from saferoom.errors import LimitExceeded, QueryCancelled
from saferoom.identity import Identity
from saferoom.policy.limits import GATEWAY_DEFAULTS, Limits
from saferoom.secrets import Secret
from saferoom.server.gateway import Gateway

RUNAWAY = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r"


def hang_up(cancel: Cancel) -> threading.Thread:
    """Cancel from another thread, at whatever moment it comes: before the query starts or while it runs."""
    thread = threading.Thread(target=cancel, args=("the client hung up",))
    thread.start()
    return thread


def test_cancel_before_the_engine_starts_stops_it_at_once() -> None:
    stops: list[str] = []
    cancel = Cancel()
    cancel("the gateway is shutting down")
    cancel.on_cancel(lambda: stops.append("stopped"))
    cancel("a second reason is ignored")
    assert stops == ["stopped"] and cancel.reason == "the gateway is shutting down" and not cancel.timed_out


def test_duckdb_query_is_interrupted_by_cancel(room) -> None:
    from saferoom.engines.duckdb import DatabaseFile, DuckDBEngine

    engine = DuckDBEngine({"prod": DatabaseFile(room.database)}, None, GATEWAY_DEFAULTS)
    try:
        for _ in range(20):  # whichever comes first, the hang-up or the query, the query stops
            cancel = Cancel()
            helper = hang_up(cancel)
            with pytest.raises(QueryCancelled, match="the client hung up"):
                engine.stream(RUNAWAY, cancel=cancel).read_all()
            helper.join()
        assert engine.stream("select 42").read_all().column(0).to_pylist() == [42]  # the engine goes on
    finally:
        engine.close()


def test_duckdb_limits_are_applied_and_a_query_past_memory_is_a_limit(tmp_path: Path) -> None:
    from saferoom.engines.duckdb import DuckDBEngine

    engine = DuckDBEngine({}, None, Limits(memory_limit="64MB", threads=1, temp_limit="1MB"))
    try:
        settings = engine.stream("select current_setting('memory_limit'), current_setting('threads')").read_all()
        assert settings.to_pylist() == [{"current_setting('memory_limit')": "61.0 MiB", "current_setting('threads')": 1}]
        with pytest.raises(LimitExceeded, match="memory"):
            engine.stream("select count(*) from (select repeat('x', 100) || range as x from range(3000000) order by x)").read_all()
    finally:
        engine.close()


def test_a_role_overrides_the_gateway_defaults_per_user(room, tmp_path: Path) -> None:
    policy = tmp_path / "saferoom.yaml"
    policy.write_text(f"""version: 1
sources: {{prod: {{engine: duckdb, path: {room.database}}}}}
tables: {{prod.orders: {{order_id: public}}}}
users: {{ana: {{roles: [heavy]}}, bo: {{roles: [light]}}}}
roles:
  heavy: {{columns: {{}}, memory_limit: 300MB, threads: 1, max_concurrent: 9, timeout_seconds: 7}}
  light: {{columns: {{}}}}
""")
    gateway = Gateway(policy, tmp_path / "state")
    try:
        heavy = gateway.session(Identity("ana", None, "token"))
        light = gateway.session(Identity("bo", None, "token"))
        assert heavy.limits == Limits(timeout_seconds=7, max_concurrent=9, memory_limit="300MB", threads=1, temp_limit="4GB")
        assert light.limits == GATEWAY_DEFAULTS
        read = "select current_setting('memory_limit') as m, current_setting('threads') as t"
        assert heavy._engine.stream(read).read_all().to_pylist() == [{"m": "286.1 MiB", "t": 1}]
        assert light._engine.stream(read).read_all().to_pylist() == [{"m": "1.8 GiB", "t": 2}]
        assert heavy._engine is not light._engine  # one user's memory and threads are theirs alone
    finally:
        gateway.close()


def test_the_memory_limit_format_is_checked_in_the_policy(tmp_path: Path) -> None:
    from saferoom.errors import PolicyError
    from saferoom.policy import load_policy

    database = tmp_path / "x.duckdb"
    duckdb.connect(str(database)).close()
    policy = tmp_path / "saferoom.yaml"
    policy.write_text(f"""version: 1
sources: {{x: {{engine: duckdb, path: {database}}}}}
tables: {{}}
roles: {{r: {{memory_limit: "lots; SET threads=64"}}}}
""")
    with pytest.raises(PolicyError, match="memory_limit"):
        load_policy(policy)


def test_postgres_query_is_cancelled_on_the_server(pg_room) -> None:
    from saferoom.engines.postgres import PostgresEngine
    from tests import pg

    engine = PostgresEngine("prod", pg_room.server.reader_url(), Secret(pg.READER_PASSWORD))
    try:
        cancel = Cancel()
        helper = hang_up(cancel)
        with pytest.raises(QueryCancelled, match="hung up"):
            engine.stream("select pg_sleep(600) from generate_series(1, 2)", cancel=cancel).read_all()
        helper.join()
        assert engine.stream("select 7 as n").read_all().to_pylist() == [{"n": 7}]  # a fresh connection replaced it
    finally:
        engine.close()


def test_spark_query_is_cancelled_as_a_job_group(spark_alice) -> None:
    engine = spark_alice._engine
    cancel = Cancel()
    helper = hang_up(cancel)
    with pytest.raises(QueryCancelled, match="hung up"):
        engine.stream("select count(*) from range(0, 100000000000) a where a.id % 7 = 3", cancel=cancel)
    helper.join()
    assert engine.stream("select 5 as n").read_all().to_pylist() == [{"n": 5}]
