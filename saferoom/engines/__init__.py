"""Engines run guarded SQL. Each declares its dialect and allowlists as data."""

from __future__ import annotations

from saferoom.engines.base import Engine, EngineSpec
from saferoom.engines.duckdb import DUCKDB
from saferoom.engines.postgres import POSTGRES
from saferoom.engines.spark import SPARK

SPECS: dict[str, EngineSpec] = {DUCKDB.name: DUCKDB, POSTGRES.name: POSTGRES, SPARK.name: SPARK}


def spec_for(engine: str) -> EngineSpec:
    return SPECS[engine]


__all__ = ["SPECS", "Engine", "EngineSpec", "spec_for"]
