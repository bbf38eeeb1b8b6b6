"""Shared fixtures: a real DuckDB file of synthetic customers with planted canaries."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest

import saferoom
from saferoom.demo import DemoSize, write_demo
from tests import policies

# Values planted in the source that must never reach an analyst.
CANARY_NAME = "Zebediah Canaryfield"
CANARY_EMAIL = "zebediah.canaryfield@canary.example"
CANARY_SSN = "212-45-6789"
CANARY_PAN = "4929111122223333"
CANARY_BIRTH = "1977-07-13"
CANARY_ZIP = "90210"
# An order in a region alice's row filter removes.
HIDDEN_ORDER_ID = 990000001
HIDDEN_AMOUNT = "31337.77"


@dataclass
class Room:
    folder: Path
    policy: Path
    database: Path
    key: str

    def connect(self, user: str, role: str | None = None) -> saferoom.Session:
        return saferoom.connect(self.policy, user=user, role=role)

    def raw(self, sql: str) -> list[tuple]:
        with duckdb.connect(str(self.database), read_only=True) as con:
            return con.execute(sql).fetchall()

    def token(self, value: object) -> str:
        return token(self.key, value)


def token(key: str, value: object) -> str:
    """A token as saferoom defines it: the first 128 bits of HMAC-SHA256 of the text, in UUID form."""
    return str(uuid.UUID(hmac.new(key.encode(), str(value).encode(), hashlib.sha256).hexdigest()[:32]))


def plant_canaries(database: Path) -> None:
    with duckdb.connect(str(database)) as con:
        con.execute(
            "INSERT INTO customers VALUES (999001, ?, ?, ?, DATE '1977-07-13', ?, 'premium')",
            [CANARY_NAME, CANARY_EMAIL, CANARY_SSN, CANARY_ZIP],
        )
        con.execute("INSERT INTO cards VALUES (999001, 999001, ?)", [CANARY_PAN])
        con.execute(
            "INSERT INTO orders VALUES (?, 999001, ?, 'US', TIMESTAMP '2024-02-29 12:00:00')",
            [HIDDEN_ORDER_ID, HIDDEN_AMOUNT],
        )
        con.execute("ALTER TABLE customers ADD COLUMN internal_score DOUBLE DEFAULT 0.731")


@pytest.fixture(scope="session")
def room(tmp_path_factory: pytest.TempPathFactory) -> Room:
    folder = tmp_path_factory.mktemp("room")
    policy = write_demo(folder, DemoSize(customers=3000), seed=11)
    plant_canaries(folder / "prod.duckdb")
    return Room(folder, policy, folder / "prod.duckdb", (folder / "token.key").read_text())


@pytest.fixture(scope="session")
def alice(room: Room) -> Iterator[saferoom.Session]:
    with room.connect("alice") as session:
        yield session


@pytest.fixture(scope="session")
def ivan(room: Room) -> Iterator[saferoom.Session]:
    with room.connect("ivan") as session:
        yield session


@pytest.fixture(scope="session")
def secrets_of(room: Room) -> set[str]:
    """Every raw sensitive value an analyst must never receive, plus the key."""
    values: set[str] = {room.key, CANARY_NAME, CANARY_EMAIL, CANARY_SSN, CANARY_PAN}
    for (name, email, ssn) in room.raw("SELECT name, email, ssn FROM customers"):
        values |= {name, email, ssn}
    values |= {pan for (pan,) in room.raw("SELECT pan FROM cards")}
    return values


@dataclass
class PgRoom:
    server: object
    policy: Path
    room: Room

    def connect(self, user: str, role: str | None = None) -> saferoom.Session:
        return saferoom.connect(self.policy, user=user, role=role)


@pytest.fixture(scope="session")
def pg_room(room: Room, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgRoom]:
    import os

    import adbc_driver_postgresql.dbapi as dbapi

    from tests import pg

    server = pg.start_with_reader()
    try:
        with dbapi.connect(server.admin_uri("prod"), autocommit=True) as admin, admin.cursor() as cur:
            with duckdb.connect(str(room.database), read_only=True) as source:
                for table in ("customers", "cards", "orders"):
                    cur.adbc_ingest(table, source.sql(f"select * from {table}").to_arrow_table(), mode="create")
            cur.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO reader")
        os.environ["SAFEROOM_TEST_PG_PASSWORD"] = pg.READER_PASSWORD
        policy = policies.demo(room)
        policy["sources"] = {"prod": {"engine": "postgres", "url": server.reader_url(), "password": "env:SAFEROOM_TEST_PG_PASSWORD"}}
        path = policies.write(policy, tmp_path_factory.mktemp("pg-policy") / "saferoom.yaml", "postgres")
        yield PgRoom(server, path, room)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_alice(pg_room: PgRoom) -> Iterator[saferoom.Session]:
    with pg_room.connect("alice") as session:
        yield session


@pytest.fixture(scope="session")
def spark_room(room: Room, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same data as the DuckDB room, as Parquet files a local Spark reads."""
    pytest.importorskip("pyspark")
    folder = tmp_path_factory.mktemp("lake")
    with duckdb.connect(str(room.database), read_only=True) as con:
        for table in ("customers", "cards", "orders"):
            con.execute(f"COPY {table} TO '{folder / table}.parquet' (FORMAT parquet)")
    policy = policies.demo(room)
    tables = {t: {"format": "parquet", "path": f"{folder / t}.parquet"} for t in ("customers", "cards", "orders")}
    policy["sources"] = {"lake": {"engine": "spark", "master": "local[2]", "tables": tables}}
    policies.move_tables(policy, "prod", "lake")
    return policies.write(policy, folder / "saferoom.yaml", "spark")


@pytest.fixture(scope="session")
def spark_alice(spark_room: Path) -> Iterator[saferoom.Session]:
    with saferoom.connect(spark_room, user="alice") as session:
        yield session


@pytest.fixture(scope="session")
def state_server() -> Iterator[object]:
    """A PostgreSQL server for gateway state (``--state postgresql://…``); each test takes a fresh database."""
    from tests import pg

    server = pg.start_with_reader()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def state_url(state_server: object) -> str:
    """A URL to an empty database of its own on the state server."""
    from tests import pg

    return pg.fresh_database(state_server)  # type: ignore[arg-type]


# SQLAlchemy's dialect suite runs in a pytest run of its own (its plugin takes over the run): `make test`
collect_ignore = ["sqlalchemy_suite"]
