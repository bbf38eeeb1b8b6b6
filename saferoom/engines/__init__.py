"""Engines run guarded SQL. Each declares its dialect and allowlists as data."""

from __future__ import annotations

import importlib

from saferoom.engines.base import Engine, EngineSpec
from saferoom.engines.duckdb import DUCKDB
from saferoom.engines.postgres import POSTGRES
from saferoom.engines.spark import SPARK
from saferoom.errors import UsageError

SPECS: dict[str, EngineSpec] = {DUCKDB.name: DUCKDB, POSTGRES.name: POSTGRES, SPARK.name: SPARK}


def spec_for(engine: str) -> EngineSpec:
    return SPECS[engine]


# an optional engine's driver, and the extra that installs it
DRIVERS = {"postgres": ("adbc_driver_postgresql", "postgres"), "spark": ("pyspark", "spark")}


def require_driver(engine: str) -> None:
    """An optional engine whose driver is missing is a clear error naming what to install, not an ImportError."""
    if engine not in DRIVERS:
        return
    module, extra = DRIVERS[engine]
    try:
        importlib.import_module(module)
    except ImportError:
        raise UsageError(f"the policy reads a {engine} source, and its driver ({module}) is not installed: "
                         f"pip install 'saferoom[{extra}]'") from None


__all__ = ["DRIVERS", "SPECS", "Engine", "EngineSpec", "require_driver", "spec_for"]
