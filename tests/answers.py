"""Comparing what the guard returns with what DuckDB returns directly, over the data a role may see."""

from __future__ import annotations

import math
from decimal import Decimal
from pathlib import Path

import duckdb

import saferoom

Answer = tuple[list[str], list[tuple]]


def direct(database: Path, sql: str, views: dict[str, str]) -> Answer:
    """``sql`` on an in-memory database where each name in ``views`` is a view over the raw file (attached as
    ``raw``): the policy applied by hand. Both sides go through Arrow, so values compare as the same types."""
    with duckdb.connect() as con:
        con.execute(f"ATTACH '{database}' AS raw (READ_ONLY)")
        for name, select in views.items():
            con.execute(f"CREATE VIEW {name} AS {select}")
        table = con.sql(sql).to_arrow_table()
        return table.column_names, [tuple(row.values()) for row in table.to_pylist()]


def guarded(session: saferoom.Session, sql: str) -> Answer:
    table = session.query(sql).to_arrow()
    return table.column_names, [tuple(row.values()) for row in table.to_pylist()]


def same(got: Answer, want: Answer) -> None:
    """Same names, same rows: in the same order, up to float rounding (a parallel sum of doubles may add in
    another order) and ties an ORDER BY leaves unordered."""
    assert got[0] == want[0]
    assert len(got[1]) == len(want[1])
    if _rounded(got[1]) != _rounded(want[1]):
        assert sorted(_rounded(got[1]), key=repr) == sorted(_rounded(want[1]), key=repr)


def _rounded(rows: list[tuple]) -> list[tuple]:
    return [tuple(_round(v) for v in row) for row in rows]


def _round(value: object) -> object:
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.9g}")
    if isinstance(value, Decimal):
        return value.normalize()
    return value
