"""Engines by name: what a source's (or a build target's) ``engine:`` means, in one table.

Each registered engine declares as data what the guard needs (its :class:`EngineSpec`: dialect,
allowlists, masking templates), its name in messages and the optional driver it needs; and, as a few
functions, how a session opens it and what `saferoom build` reads it through or writes it with. Nothing
outside this module branches on an engine's name: callers look the name up here.

Two names may share a spec: DuckDB runs the SQL of database files and of folders of Parquet files alike,
so one session's engine serves both (a *family*, named by the spec). Drivers and the build's code are
imported only when an engine is opened, so `pip install saferoom` runs without psycopg, ADBC or Spark.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from saferoom.engines.base import Engine, EngineSpec
from saferoom.engines.duckdb import DUCKDB, Attachment, DatabaseFile
from saferoom.engines.parquet import ParquetFolder
from saferoom.engines.postgres import POSTGRES
from saferoom.engines.spark import SPARK
from saferoom.errors import UsageError
from saferoom.policy import Policy
from saferoom.policy.limits import Limits
from saferoom.secrets import Secret

if TYPE_CHECKING:
    from saferoom.split.sources import Side
    from saferoom.split.writers import Writer


class Opener(Protocol):
    """An engine for a session over the named sources (all of one family)."""

    def __call__(self, policy: Policy, names: list[str], limits: Limits | None, *, isolated: bool) -> Engine: ...


class SideOpener(Protocol):
    """What a build reads a source through when its policy views run in the source itself; without a key it
    reads the catalog and content hashes only (no tokens)."""

    def __call__(self, policy: Policy, name: str, token_key: Secret | None) -> Side: ...


@dataclass(frozen=True)
class Driver:
    """An optional engine's driver: the module imported to use it, and the extra that installs it."""

    module: str
    extra: str


@dataclass(frozen=True)
class Registered:
    name: str  # what a source's `engine:` says
    label: str  # its name in messages
    spec: EngineSpec  # the engine that runs its SQL
    open: Opener
    driver: Driver | None = None
    files: Callable[[Path], Attachment] | None = None  # the files DuckDB reads it from (a build reads it so)
    side: SideOpener | None = None  # else a build runs its policy views in the source, through this side
    writer: Callable[[], type[Writer]] | None = None  # a build may write a target of this kind, with this

    @property
    def dialect(self) -> str:
        return self.spec.dialect

    @property
    def family(self) -> str:
        """The engines that share one spec share a session's engine."""
        return self.spec.name

    def require_driver(self) -> None:
        """A missing driver is a clear error naming what to install, not an ImportError."""
        if self.driver is None:
            return
        try:
            importlib.import_module(self.driver.module)
        except ImportError:
            raise UsageError(f"the policy reads a {self.label} source, and its driver ({self.driver.module}) is not "
                             f"installed: pip install 'saferoom[{self.driver.extra}]'") from None


def _open_duckdb(policy: Policy, names: list[str], limits: Limits | None, *, isolated: bool) -> Engine:
    """DuckDB files and Parquet folders, attached together; ``isolated`` runs each query in a process of its own."""
    sources = {name: _attachment(policy, name) for name in names}
    if isolated:
        from saferoom.engines.isolated import ProcessEngine

        return ProcessEngine(sources, policy.token_key, limits or Limits())
    from saferoom.engines.duckdb import DuckDBEngine

    return DuckDBEngine(sources, policy.token_key, limits)


def _open_postgres(policy: Policy, names: list[str], limits: Limits | None, *, isolated: bool) -> Engine:
    from saferoom.engines.postgres import PostgresEngine

    name = _one(names, POSTGRES_ENGINE)
    return PostgresEngine(name, policy.source_url(name), policy.source_password(name), policy.token_key)


def _open_spark(policy: Policy, names: list[str], limits: Limits | None, *, isolated: bool) -> Engine:
    from saferoom.engines.spark import SparkEngine

    name = _one(names, SPARK_ENGINE)
    return SparkEngine(name, policy.model.sources[name], policy.base, policy.token_key)


def _one(names: list[str], engine: Registered) -> str:
    """PostgreSQL and Spark sessions read one source each (one database, one cluster)."""
    if len(names) != 1:
        raise UsageError(f"a session reads one {engine.label} source; the policy has {len(names)}")
    return names[0]


def _postgres_side(policy: Policy, name: str, token_key: Secret | None) -> Side:
    from saferoom.split.postgres import PostgresSide

    return PostgresSide(policy, name, token_key)


def _spark_side(policy: Policy, name: str, token_key: Secret | None) -> Side:
    from saferoom.split.spark import SparkSide

    return SparkSide(policy, name, token_key)


def _database_writer() -> type[Writer]:
    from saferoom.split.writers import DuckDBWriter

    return DuckDBWriter


def _parquet_writer() -> type[Writer]:
    from saferoom.split.writers import ParquetWriter

    return ParquetWriter


DUCKDB_ENGINE = Registered("duckdb", "DuckDB", DUCKDB, _open_duckdb, files=DatabaseFile, writer=_database_writer)
PARQUET_ENGINE = Registered("parquet", "Parquet", DUCKDB, _open_duckdb, files=ParquetFolder, writer=_parquet_writer)
POSTGRES_ENGINE = Registered("postgres", "PostgreSQL", POSTGRES, _open_postgres,
                             driver=Driver("adbc_driver_postgresql", "postgres"), side=_postgres_side)
SPARK_ENGINE = Registered("spark", "Spark", SPARK, _open_spark, driver=Driver("pyspark", "spark"), side=_spark_side)

# In order of preference: a session that names no engine opens the first family the policy has a source of.
ENGINES: dict[str, Registered] = {e.name: e for e in (DUCKDB_ENGINE, PARQUET_ENGINE, POSTGRES_ENGINE, SPARK_ENGINE)}


def engine(name: str) -> Registered:
    try:
        return ENGINES[name]
    except KeyError:
        raise UsageError(f"no engine is named `{name}`; saferoom has {', '.join(ENGINES)}") from None


def source_engine(policy: Policy, source: str) -> Registered:
    return engine(policy.model.sources[source].engine)


def serves(policy: Policy, source: str, spec: EngineSpec) -> bool:
    """Whether the engine of ``spec`` runs this source's SQL."""
    return source_engine(policy, source).family == spec.name


def families(policy: Policy) -> list[Registered]:
    """One engine for each family the policy has a source of (the first registered), in order of preference."""
    present = {source_engine(policy, name).family for name in policy.model.sources}
    first: dict[str, Registered] = {}
    for registered in ENGINES.values():
        if registered.family in present:
            first.setdefault(registered.family, registered)
    return list(first.values())


def for_session(policy: Policy, name: str | None = None) -> Registered:
    """The engine a session opens: the one named, else the first family the policy has a source of."""
    return engine(name) if name else next(iter(families(policy)), DUCKDB_ENGINE)


def sources_of(policy: Policy, chosen: Registered) -> list[str]:
    """The policy's sources that the chosen engine's family serves."""
    return [name for name in policy.model.sources if serves(policy, name, chosen.spec)]


def _attachment(policy: Policy, name: str) -> Attachment:
    found = attachment(policy, name)
    if found is None:
        raise UsageError(f"source `{name}` is not read from files; DuckDB cannot attach it")
    return found


def attachment(policy: Policy, name: str) -> Attachment | None:
    """How DuckDB reads a source from its files; None for a source that runs its own SQL (a server)."""
    files, path = source_engine(policy, name).files, policy.source_path(name)
    return files(path) if files is not None and path is not None else None


def spec_for(name: str) -> EngineSpec:
    return engine(name).spec


def require_driver(name: str) -> None:
    engine(name).require_driver()
