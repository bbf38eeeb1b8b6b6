"""The DuckDB engine is closed even to SQL the guard never sees."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from saferoom.engines.duckdb import DatabaseFile, DuckDBEngine
from saferoom.engines.parquet import ParquetFolder
from saferoom.errors import EngineError
from saferoom.secrets import Secret
from tests.conftest import token


@pytest.fixture()
def engine(room):
    engine = DuckDBEngine({"prod": DatabaseFile(room.database)}, Secret(room.key))
    yield engine
    engine.close()


@pytest.mark.parametrize("sql, fragment", [
    ("select * from read_csv('/etc/passwd')", "disabled"),
    ("set enable_external_access = true", "locked"),
    ("set lock_configuration = false", "locked"),
    ("set autoload_known_extensions = true", "locked"),
    ("insert into prod.orders select * from prod.orders limit 1", "read-only"),
    ("copy (select 1) to '/tmp/saferoom-should-not-exist.csv'", "disabled"),
    ("attach '/tmp/saferoom-x.duckdb' as x", ""),
    ("install httpfs", ""),
])
def test_engine_refuses_what_the_guard_would(engine: DuckDBEngine, sql: str, fragment: str) -> None:
    with pytest.raises(EngineError) as caught:
        engine.stream(sql).read_all()
    assert fragment.lower() in str(caught.value).lower()
    assert "/tmp/" not in str(caught.value)


def test_token_macro_is_rfc2104_hmac(engine: DuckDBEngine) -> None:
    key = "a-long-key-" * 10  # longer than one block, so it is hashed first
    long_engine = DuckDBEngine({}, Secret(key))
    try:
        got = long_engine.stream("select __saferoom_token('4111111111111111') as t").read_all().column(0).to_pylist()
    finally:
        long_engine.close()
    assert [str(t) for t in got] == [token(key, "4111111111111111")]


def test_null_tokenizes_to_null(engine: DuckDBEngine) -> None:
    assert engine.stream("select __saferoom_token(NULL) as t").read_all().column(0).to_pylist() == [None]


def test_missing_database_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(EngineError, match="does not exist"):
        DuckDBEngine({"prod": DatabaseFile(tmp_path / "absent.duckdb")})


def test_corrupt_database_is_a_clear_error(tmp_path) -> None:
    bad = tmp_path / "bad.duckdb"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(EngineError, match="source `prod` cannot be opened") as caught:
        DuckDBEngine({"prod": DatabaseFile(bad)})
    assert str(tmp_path) not in str(caught.value)


def test_source_file_is_never_modified(room) -> None:
    before = hashlib.sha256(room.database.read_bytes()).hexdigest()
    with room.connect("alice") as session:
        session.query("select count(*) from orders").to_arrow()
    assert hashlib.sha256(room.database.read_bytes()).hexdigest() == before


def test_secret_never_prints() -> None:
    secret = Secret("hunter2hunter2hunter2")
    assert "hunter2" not in repr(secret) + str(secret) + f"{secret}"
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(secret)


def test_a_parquet_folder_is_read_as_views_and_no_other_file(tmp_path: Path) -> None:
    """A table is a file or a folder of part files; once open, the engine reads that folder and nothing else."""
    folder = tmp_path / "analytics"
    (folder / "orders.parquet").mkdir(parents=True)
    pq.write_table(pa.table({"id": [1, 2]}), folder / "cards.parquet")
    for part in range(2):
        pq.write_table(pa.table({"amount": [10 * part + 1]}), folder / "orders.parquet" / f"part-{part}.parquet")
    (folder / "_saferoom_build.json").write_text("{}")
    outside = tmp_path / "outside.csv"
    outside.write_text("secret\n42\n")
    engine = DuckDBEngine({"analytics": ParquetFolder(folder)})
    try:
        assert engine.catalog() == {("analytics", "main", "cards"): {"id": "BIGINT"},
                                    ("analytics", "main", "orders"): {"amount": "BIGINT"}}
        assert engine.stream("select sum(amount) from analytics.orders").read_all().column(0).to_pylist() == [12]
        with pytest.raises(EngineError) as caught:
            engine.stream(f"select * from read_csv('{outside}')").read_all()
        assert "42" not in str(caught.value) and str(tmp_path) not in str(caught.value)
    finally:
        engine.close()


def test_a_missing_parquet_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="source `analytics`: folder gone does not exist"):
        DuckDBEngine({"analytics": ParquetFolder(tmp_path / "gone")})
