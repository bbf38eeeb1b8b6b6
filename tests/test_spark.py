"""Spark as a source (local[2]): the same guard, tokens and red team as DuckDB and PostgreSQL."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import saferoom
from tests import policies
from tests.leaks import assert_refused_or_harmless
from tests.test_redteam import ATTACKS

DOCS_BUILD = Path(__file__).parent.parent / "docs" / "build.md"

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
    "select __saferoom_spark_hmac(pan) from cards",
    "select * from global_temp.anything",
    "select input_file_name() from orders",
    "select current_user()",
]


@pytest.mark.parametrize("sql", ATTACKS + SPARK_ATTACKS)
def test_attack_on_spark_is_refused_or_harmless(spark_alice, secrets_of, room, sql: str) -> None:
    assert_refused_or_harmless(spark_alice, sql, secrets_of, room.key)


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
    policy = policies.load(spark_room)
    policy["sources"]["lake"]["tables"]["orders"]["path"] = str(spark_room.parent / "gone.parquet")
    policies.write(policy, tmp_path / "saferoom.yaml", "spark")
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


@pytest.mark.parametrize("engine", ["parquet", "duckdb"])
def test_build_from_spark(spark_room, room, tmp_path, engine: str) -> None:
    import duckdb

    from saferoom.keyed import fingerprint_key
    from saferoom.split import build, fingerprints
    from tests.conftest import CANARY_NAME

    target = tmp_path / ("analytics" if engine == "parquet" else "analytics.duckdb")
    text = spark_room.read_text() + (f"builds:\n  analytics:\n    role: reporting\n    target: {{engine: {engine}, path: {target}}}\n"
                                     "    k_anonymity: {columns: [birth_date, zip], k: 5, on_violation: suppress}\n")
    (tmp_path / "saferoom.yaml").write_text(text)
    policy = saferoom.load_policy(tmp_path / "saferoom.yaml")
    manifest = build(policy, "analytics")
    tables = {t.table: t for t in manifest.tables}
    assert tables["lake.orders"].rows_out == room.raw("select count(*) from orders")[0][0]
    assert tables["lake.customers"].k_anonymity["rows_suppressed"] > 0
    source = f"read_parquet('{target}/cards.parquet/*.parquet')" if engine == "parquet" else "cards"
    if engine == "parquet":  # Spark writes a folder of part files per table, and docs/build.md says so
        assert (target / "cards.parquet").is_dir()
        row = next(line for line in DOCS_BUILD.read_text().splitlines() if line.startswith("| `analytics/`"))
        assert "a folder of part files" in row and "when the source is Spark" in row
    with duckdb.connect(str(target) if engine == "duckdb" else ":memory:", read_only=engine == "duckdb") as con:
        built = {str(t) for (t,) in con.execute(f"select customer_id from {source}").fetchall()}
    assert built == {room.token(c) for (c,) in room.raw("select customer_id from cards")}
    _, sections = fingerprints.read(target.with_name(f"{target.name}.fingerprints"))
    probes = fingerprints.fingerprint(fingerprint_key(policy.token_key), [CANARY_NAME, "Nobody Atall"])
    assert fingerprints.contains(sections, probes).tolist() == [True, False]
    assert all(t.carried_over for t in build(policy, "analytics").tables)


def test_compile_for_spark_makes_views_that_mask_and_filter(spark_room, alice, tmp_path) -> None:
    from saferoom.compile import compile_spark
    from saferoom.engines.spark import SparkEngine

    policy = policies.load(spark_room)
    for role in policy["roles"].values():
        columns = role["columns"]
        columns |= {tag: changed for tag, changed in (("pii", "redact"), ("key", "null")) if columns.get(tag) == "tokenize"}
        if "lake.orders" in role.get("rows", {}):
            role["rows"]["lake.orders"] = "region = 'EU'"
    policies.write(policy, tmp_path / "saferoom.yaml", "spark")
    policy = saferoom.load_policy(tmp_path / "saferoom.yaml")
    engine = SparkEngine("lake", policy.model.sources["lake"], policy.base)
    statements = compile_spark(policy, engine.catalog())
    for statement in statements:
        if not statement.startswith("--"):
            engine.session.sql(statement)
    rows = engine.session.sql("select region, count(*) as n from saferoom_analyst.orders group by region").toArrow().to_pylist()
    assert rows == alice.query("select region, count(*) as n from orders group by region").to_pylist()
    cards = engine.session.sql("select * from saferoom_analyst.cards").toArrow()
    assert cards.column_names == ["card_id", "customer_id"] and cards.column("customer_id").null_count == cards.num_rows
    names = engine.session.sql("select distinct name from saferoom_analyst.customers").toArrow().column(0).to_pylist()
    assert names == ["REDACTED"]
    assert "CREATE DATABASE IF NOT EXISTS `saferoom_investigator`" in statements


def _connect_policy(spark_room: Path, folder: Path, url: str, timeout: float) -> Path:
    policy = policies.load(spark_room)
    del policy["sources"]["lake"]["master"]
    policy["sources"]["lake"] |= {"connect": url, "connect_timeout": timeout}
    return policies.write(policy, folder / "saferoom.yaml", "spark")


def test_unreachable_spark_connect_is_a_clear_error(spark_room, tmp_path) -> None:
    pytest.importorskip("grpc")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connections are refused
        path = _connect_policy(spark_room, tmp_path, f"sc://127.0.0.1:{port}", 5)
        with pytest.raises(saferoom.EngineError) as caught:
            saferoom.connect(path, user="alice")
    assert f"Spark Connect endpoint 127.0.0.1:{port}" in str(caught.value)
    assert "check that the Spark Connect server runs there" in str(caught.value) and "connect_timeout" in str(caught.value)


def test_a_silent_spark_connect_endpoint_fails_within_connect_timeout(spark_room, tmp_path) -> None:
    pytest.importorskip("grpc")
    import pyspark.sql.connect.session  # noqa: F401  (imported before the clock starts: the bound is the wait's)

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # accepts TCP connections and never says a word
        path = _connect_policy(spark_room, tmp_path, f"sc://127.0.0.1:{silent.getsockname()[1]}", 1)
        started = time.monotonic()
        with pytest.raises(saferoom.EngineError, match=r"no answer in time.*waited at most 1 s"):
            saferoom.connect(path, user="alice")
        assert time.monotonic() - started < 1 + 3


def test_spark_connect_without_its_client_libraries_names_the_extra(spark_room, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "grpc", None)  # as installed without `saferoom[spark-connect]`
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(8)
        path = _connect_policy(spark_room, tmp_path, f"sc://127.0.0.1:{listening.getsockname()[1]}", 5)
        with pytest.raises(saferoom.UsageError, match=r"pip install 'saferoom\[spark-connect\]'"):
            saferoom.connect(path, user="alice")


def test_gateway_serves_a_spark_source(spark_room, spark_alice, tmp_path) -> None:
    from saferoom.client import RemoteSession
    from tests.gateway_helpers import Server, free_port

    server = Server(spark_room, tmp_path / "state", free_port(), tmp_path / "server.log").start()
    try:
        with RemoteSession(server.url, server.token("alice")) as remote:
            sql = "select region, count(*) as n from orders group by region order by region"
            assert remote.query(sql).to_pylist() == spark_alice.query(sql).to_pylist()
    finally:
        server.stop()


def test_schema_drift_is_reported(spark_room, tmp_path) -> None:
    from saferoom.lint import lint
    from saferoom.session import open_engine

    policy = policies.load(spark_room)
    policy["tables"]["lake.customers"]["loyalty_tier"] = "public"
    policies.write(policy, tmp_path / "saferoom.yaml", "spark")
    policy = saferoom.load_policy(tmp_path / "saferoom.yaml")
    engine = open_engine(policy, "spark")
    findings = lint(policy, engine.catalog(), engine.spec.default_schema, "spark")
    errors = [(f.level, f.column) for f in findings if f.level == "error"]
    assert errors == [("error", "loyalty_tier")]
    warnings = {f.column for f in findings if f.level == "warning"}
    assert "internal_score" in warnings


def test_file_identity_changes_with_any_byte_and_skips_remote_files(tmp_path) -> None:
    from saferoom.split.spark import _files_identity, _local_files

    part = tmp_path / "part-0.parquet"
    part.write_bytes(b"PAR1" + bytes(1000) + b"PAR1")
    first = _files_identity([part])
    assert _files_identity([part]) == first
    part.write_bytes(b"PAR1" + bytes(999) + b"\x01PAR1")  # same size, one byte different
    assert _files_identity([part]) != first
    assert _local_files([f"file://{tmp_path}/a%20b.parquet"]) == [tmp_path / "a b.parquet"]
    assert _local_files([f"file://{part}", "s3a://bucket/part-1.parquet"]) is None  # read on the cluster instead
    assert _local_files([]) is None


def test_spark_build_rebuilds_a_table_whose_files_changed(spark_room, room, tmp_path) -> None:
    import duckdb

    from saferoom.split import build

    pond = tmp_path / "orders.parquet"
    with duckdb.connect(str(room.database), read_only=True) as con:
        con.execute(f"COPY (SELECT * FROM orders) TO '{pond}' (FORMAT parquet)")
        changed = f"COPY (SELECT * REPLACE (amount + 1 AS amount) FROM orders) TO '{pond}' (FORMAT parquet)"
    policy = policies.load(spark_room)
    policy["sources"] = {"pond": policy["sources"]["lake"]}
    policies.move_tables(policy, "lake", "pond")
    policy["sources"]["pond"]["tables"]["orders"]["path"] = str(pond)
    policy["builds"] = {"analytics": {"role": "analyst", "target": {"engine": "parquet", "path": str(tmp_path / "out")}}}
    policies.write(policy, tmp_path / "saferoom.yaml", "spark")
    policy = saferoom.load_policy(tmp_path / "saferoom.yaml")
    first = {t.table: t for t in build(policy, "analytics").tables}
    assert first["pond.orders"].source_identity.startswith("files:")
    assert first["pond.orders"].rows_in == room.raw("select count(*) from orders")[0][0]
    assert all(t.carried_over for t in build(policy, "analytics").tables)
    with duckdb.connect(str(room.database), read_only=True) as con:
        con.execute(changed)
    again = {t.table: t.carried_over for t in build(saferoom.load_policy(tmp_path / "saferoom.yaml"), "analytics").tables}
    assert again == {"pond.customers": True, "pond.cards": True, "pond.orders": False}


def test_tokens_come_from_the_compiled_kernel_in_local_workers(spark_alice, alice) -> None:
    from saferoom import keyed

    if not keyed.available():
        pytest.skip("saferoom was installed without its C kernel")
    assert spark_alice._engine.native_tokens  # the probe token matched Python's hmac
    sql = "select customer_id, count(*) as n from cards group by 1 order by 1"
    assert spark_alice.query(sql).to_arrow().to_pylist() == [
        {"customer_id": str(r["customer_id"]), "n": r["n"]} for r in alice.query(sql).to_arrow().to_pylist()]


def test_without_the_kernel_spark_computes_the_same_tokens_in_sql(spark_room, alice, monkeypatch) -> None:
    from saferoom import keyed
    from saferoom.engines.spark import SparkEngine

    policy = saferoom.load_policy(spark_room)
    native = SparkEngine("lake", policy.model.sources["lake"], policy.base, policy.token_key)
    sql = "select saferoom_token(customer_id) as t from __saferoom_lake_cards order by customer_id"
    expected = native.stream(sql).read_all().column("t").to_pylist()
    monkeypatch.setattr(keyed, "_hmac", None)  # as installed without a C compiler
    fallback = SparkEngine("lake", policy.model.sources["lake"], policy.base, policy.token_key)
    assert not fallback.native_tokens
    assert fallback.stream(sql).read_all().column("t").to_pylist() == expected
    assert all(t is None or len(t) == 36 for t in expected)


def test_a_second_token_key_on_the_same_spark_session_is_refused(spark_room, room, tmp_path) -> None:
    from saferoom.engines.spark import SparkEngine

    policy = saferoom.load_policy(spark_room)
    (tmp_path / "other.key").write_text("another-key-" * 4)
    changed = policies.load(spark_room)
    assert changed["secrets"]["token_key"] == f"file:{room.folder / 'token.key'}"
    changed["secrets"]["token_key"] = f"file:{tmp_path / 'other.key'}"
    policies.write(changed, tmp_path / "saferoom.yaml", "spark")
    rotated = saferoom.load_policy(tmp_path / "saferoom.yaml")
    assert rotated.token_key != policy.token_key
    with pytest.raises(saferoom.EngineError, match="another token key"):
        SparkEngine("lake", rotated.model.sources["lake"], rotated.base, rotated.token_key)
    SparkEngine("lake", policy.model.sources["lake"], policy.base, policy.token_key)  # the same key is fine


def test_a_catalog_table_is_served_like_a_file_table(spark_room, alice, tmp_path) -> None:
    from saferoom.engines.spark import SparkEngine

    policy = saferoom.load_policy(spark_room)
    engine = SparkEngine("lake", policy.model.sources["lake"], policy.base)
    cards = spark_room.parent / "cards.parquet"
    engine.session.sql(f"CREATE TABLE IF NOT EXISTS saferoom_test_cards USING parquet LOCATION '{cards}'")
    declared = policies.load(spark_room)
    assert declared["sources"]["lake"]["tables"]["cards"] == {"format": "parquet", "path": str(cards)}

    def cards_as(table: dict[str, str]) -> Path:
        declared["sources"]["lake"]["tables"]["cards"] = table
        return policies.write(declared, tmp_path / "saferoom.yaml")

    cards_as({"table": "saferoom_test_cards"})
    sql = "select count(*) as n, count(distinct customer_id) as customers from cards"
    with saferoom.connect(tmp_path / "saferoom.yaml", user="alice") as session:
        assert session.query(sql).to_arrow().to_pylist() == alice.query(sql).to_arrow().to_pylist()
        with pytest.raises(saferoom.QueryRejected):
            session.query("select * from saferoom_test_cards")  # the catalog name is not a policy table
    cards_as({"table": "sales.nowhere"})
    with pytest.raises(saferoom.EngineError, match="catalog has no table sales.nowhere"):
        saferoom.connect(tmp_path / "saferoom.yaml", user="alice")
    cards_as({"path": str(cards), "table": "saferoom_test_cards"})
    with pytest.raises(saferoom.PolicyError, match="either `path`"):
        saferoom.load_policy(tmp_path / "saferoom.yaml")


def test_a_cli_command_on_a_spark_policy_prints_no_spark_logs(spark_room) -> None:
    saferoom_cli = Path(sys.executable).with_name("saferoom")
    sql = "select customer_id, count(*) as n from cards group by 1 order by 2 desc limit 3"  # tokens: Python workers
    done = subprocess.run([str(saferoom_cli), "query", "-p", str(spark_room), "-u", "alice", "-f", "csv", sql],
                          check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.splitlines()[0] == "\"customer_id\",\"n\"" and len(done.stdout.splitlines()) == 4, done.stdout


@pytest.mark.parametrize("engine", ["duckdb", "spark"])
def test_errors_on_a_table_with_no_visible_column_name_no_internal_alias(request, room, tmp_path, engine: str) -> None:
    """A role that sees no column of cards gets a placeholder view; an engine's "did you mean" names only it."""
    policy = policies.load(request.getfixturevalue("spark_room")) if engine == "spark" else policies.demo(room)
    source = next(iter(policy["sources"]))
    if engine == "duckdb":
        policy["sources"][source]["path"] = str(room.database)
    policy["tables"][f"{source}.cards"]["card_id"] = "key"
    policy["roles"]["nocards"] = {"columns": {"pci": "deny", "key": "deny"}}
    policy["users"]["nora"] = {"roles": ["nocards"]}
    path = policies.write(policy, tmp_path / "saferoom.yaml", engine)
    with saferoom.connect(path, user="nora") as nora:
        for sql in ("select nosuch from cards", "select count(c.nosuch) as n from cards as c"):
            with pytest.raises((saferoom.EngineError, saferoom.QueryRejected)) as caught:
                nora.query(sql).to_arrow()
            assert "__saferoom" not in str(caught.value).lower() and "nosuch" in str(caught.value), str(caught.value)


def _untyped_roles(spark_room: Path, folder: Path) -> dict:
    """The demo policy with actions that need no column type (no generalize, no typed null)."""
    policy = policies.load(spark_room)
    policy["roles"]["analyst"]["columns"] = {"pii": "redact", "quasi": "mask", "pci": "deny", "key": "deny"}
    policy["roles"]["analyst"]["rows"] = {"lake.orders": "region = 'EU'"}
    return policy


def test_compile_for_spark_reads_the_policy_not_spark_and_splits_at_each_semicolon(spark_room, tmp_path, monkeypatch) -> None:
    from saferoom import session as sessions
    from saferoom.compile import script
    from saferoom.engines.spark import SparkEngine

    path = policies.write(_untyped_roles(spark_room, tmp_path), tmp_path / "saferoom.yaml", "spark")
    policy = saferoom.load_policy(path)

    def no_spark(*args: object, **kwargs: object) -> None:
        raise AssertionError("compile opened Spark for views that need no column type")

    monkeypatch.setattr(sessions, "open_engine", no_spark)
    text = script(policy, "spark")
    monkeypatch.undo()
    comments = [line for line in text.splitlines() if line.startswith("--")]
    assert comments and all(";" not in line for line in comments)  # reporting tokenizes: left out, with the reason
    chunks = [chunk for chunk in text.split(";") if chunk.strip()]
    assert len(chunks) == text.count(";\n") == len([line for line in text.splitlines() if not line.startswith("--")])
    engine = SparkEngine("lake", policy.model.sources["lake"], policy.base)
    for chunk in chunks:  # as a notebook runs it: one statement at a time
        engine.session.sql(chunk)
    rows = engine.session.sql("select distinct region from saferoom_analyst.orders").toArrow().column(0).to_pylist()
    assert rows == ["EU"]
    assert engine.session.sql("select * from saferoom_analyst.cards").toArrow().column_names == ["card_id"]


def test_compile_for_spark_refuses_a_semicolon_inside_a_statement(spark_room, tmp_path) -> None:
    from saferoom.compile import script

    policy = _untyped_roles(spark_room, tmp_path)
    policy["roles"]["analyst"]["rows"] = {"lake.orders": "region <> 'a;b'"}
    path = policies.write(policy, tmp_path / "saferoom.yaml", "spark")
    with pytest.raises(saferoom.UsageError, match="would split the compiled statement"):
        script(saferoom.load_policy(path), "spark")
