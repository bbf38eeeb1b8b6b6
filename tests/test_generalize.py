"""Generalizing numbers is exact on every numeric type and width, and lists are not cut as text.

Each edge value is stored in a real DuckDB file in a column of its own type, read through the guard as a
role that generalizes it (buckets of 10, and of 1000), and compared with the bucket worked out in Python's
exact integers and decimals: the floor of value / bucket, times bucket, clamped to the type's smallest value
when that floor is below it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

import saferoom

TYPES = {  # column type -> edge values
    "TINYINT": [-128, -127, -121, -120, -1, 0, 9, 127],
    "SMALLINT": [-32768, -32761, -5, 32767],
    "INTEGER": [-(2**31), -7, 2**31 - 1],
    "BIGINT": [-(2**63), -(2**63) + 9, 123456789012345678, 2**63 - 1],
    "HUGEINT": [-(2**127) + 10_000, -1, 2**127 - 1],
    "UTINYINT": [0, 255],
    "UBIGINT": [0, 2**64 - 1],
    "UHUGEINT": [0, 2**127 - 1],  # above 2**127 DuckDB's Arrow export (decimal128) wraps, guard or not
    "DECIMAL(4,2)": [Decimal("-99.99"), Decimal("-0.01"), Decimal("99.99")],
    "DECIMAL(18,3)": [Decimal("-999999999999999.999"), Decimal("123456789012345.678"), Decimal("999999999999999.999")],
    "DECIMAL(38,0)": [Decimal(-(10**37)), Decimal(10**38 - 1)],
}
SMALLEST = {"TINYINT": -128, "SMALLINT": -32768, "INTEGER": -(2**31), "BIGINT": -(2**63),
            "DECIMAL(4,2)": Decimal("-99.99"), "DECIMAL(18,3)": Decimal("-999999999999999.999")}


def _name(kind: str) -> str:
    return "c_" + "".join(ch for ch in kind.lower() if ch.isalnum())


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("generalize")
    with duckdb.connect(str(folder / "edge.duckdb")) as con:
        for kind, values in TYPES.items():
            con.execute(f"CREATE TABLE {_name(kind)} (id INTEGER, v {kind})")
            con.executemany(f"INSERT INTO {_name(kind)} VALUES (?, ?::{kind})", [[i, str(v)] for i, v in enumerate(values)])
        con.execute("CREATE TABLE lists (id INTEGER, tags VARCHAR[], born DATE)")
        con.execute("INSERT INTO lists VALUES (1, ['alpha', 'beta'], DATE '5000-06-30'), (2, NULL, DATE 'infinity'),"
                    " (3, [], DATE '-infinity'), (4, ['x'], DATE '0001-01-01')")
    (folder / "token.key").write_text("generalize-test-key-" * 3)
    tables = {f"edge.{_name(k)}": {"id": "public", "v": "quasi"} for k in TYPES}
    tables["edge.lists"] = {"id": "public", "tags": "quasi", "born": "quasi"}
    document = {
        "version": 1, "sources": {"edge": {"engine": "duckdb", "path": str(folder / "edge.duckdb")}},
        "secrets": {"token_key": f"file:{folder / 'token.key'}"}, "threats": {"reid": "re-identification"},
        "tags": {"quasi": {"threats": ["reid"]}}, "tables": tables,
        "users": {"gus": {"roles": ["tens"]}, "kay": {"roles": ["thousands"]}},
        "roles": {"tens": {"columns": {"quasi": "generalize"}},
                  "thousands": {"columns": {"quasi": {"action": "generalize", "bucket": 1000, "date_unit": "year"}}}},
    }
    (folder / "saferoom.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    return folder / "saferoom.yaml"


@pytest.fixture(scope="module")
def sessions(policy: Path) -> Iterator[dict[str, saferoom.Session]]:
    opened = {user: saferoom.connect(policy, user=user) for user in ("gus", "kay")}
    try:
        yield opened
    finally:
        for session in opened.values():
            session.close()


def bucket(value: Any, width: int, kind: str) -> Any:
    """The exact bucket, in Python's integers or 80-digit decimals."""
    with localcontext(prec=80):
        floor = (value // width) * width if isinstance(value, int) else Decimal(math.floor(value / width) * width)
        smallest = SMALLEST.get(kind)
        result = max(floor, smallest) if smallest is not None else floor
        return result if isinstance(value, int) else Decimal(result).quantize(value)


@pytest.mark.parametrize("user, width", [("gus", 10), ("kay", 1000)])
@pytest.mark.parametrize("kind", list(TYPES))
def test_numeric_buckets_are_exact(sessions: dict[str, saferoom.Session], kind: str, user: str, width: int) -> None:
    table = sessions[user].query(f"select v, typeof(v) as t from {_name(kind)} order by id").to_arrow()
    got = table.column("v").to_pylist()
    assert got == [bucket(v, width, kind) for v in TYPES[kind]]
    assert set(table.column("t").to_pylist()) == {kind}  # the column keeps its type


def test_a_list_of_text_is_not_cut_as_text(sessions: dict[str, saferoom.Session]) -> None:
    rows = sessions["gus"].query("select tags, typeof(tags) as t from lists order by id").to_pylist()
    assert [r["tags"] for r in rows] == [None] * 4 and rows[0]["t"] == "VARCHAR[]"


def test_dates_at_the_ends_of_the_range_generalize(sessions: dict[str, saferoom.Session]) -> None:
    got = sessions["kay"].query("select cast(born as varchar) as born from lists order by id").to_pylist()
    assert [r["born"] for r in got] == ["5000-01-01", "infinity", "-infinity", "0001-01-01"]
