"""Where a build's tables go: a DuckDB file or a folder of Parquet files, staged beside the target and
swapped in whole, so a build that fails or is killed leaves the last good target untouched."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING

import duckdb
import pyarrow as pa
from sqlglot import exp

from saferoom.engines import registry
from saferoom.engines.duckdb import attach_sql
from saferoom.engines.parquet import parquet_scan
from saferoom.errors import BuildError
from saferoom.files import fsync_dir, try_lock
from saferoom.split.manifest import META_TABLE, now, write_json
from saferoom.split.plan import BuildPlan
from saferoom.split.queries import count_query

if TYPE_CHECKING:
    from saferoom.split.sources import Side

TARGET, PREVIOUS, INCOMING = "__saferoom_target", "__saferoom_previous", "__saferoom_incoming"
META_FILE = "_saferoom_build.json"


class Writer(ABC):
    """Where the tables go: a DuckDB file or a folder of Parquet files, staged then swapped."""

    def __init__(self, conn: duckdb.DuckDBPyConnection, staging: Path) -> None:
        self.conn, self.staging = conn, staging
        self._previous: Path | None = None

    @abstractmethod
    def open(self, previous: Path | None) -> None: ...
    @abstractmethod
    def write(self, name: str, select: exp.Select) -> None: ...
    @abstractmethod
    def carry(self, name: str) -> None: ...

    def write_reader(self, name: str, reader: pa.RecordBatchReader) -> None:
        """Rows that arrive as Arrow (a PostgreSQL source): DuckDB reads the stream as it comes."""
        self.conn.register(INCOMING, reader)
        try:
            self.write(name, exp.select("*").from_(exp.to_identifier(INCOMING)))
        finally:
            self.conn.unregister(INCOMING)

    def write_remote(self, name: str, side: Side, select: exp.Select) -> None:
        """A view that runs in a source that runs its own SQL (PostgreSQL, Spark)."""
        self.write_reader(name, side.reader(select))

    @abstractmethod
    def source(self, name: str) -> exp.Expr: ...
    @abstractmethod
    def finish(self, build_id: str, policy_hash: str) -> None: ...
    @abstractmethod
    def swap(self, target: Path) -> None: ...
    @abstractmethod
    def discard(self) -> None: ...

    @classmethod
    @abstractmethod
    def stage(cls, target: Path, stamp: str) -> Path:
        """Where a build is written before it is swapped in; a target saferoom did not make is refused."""

    @staticmethod
    @abstractmethod
    def build_id(target: Path) -> str | None:
        """The id of the build the target holds; None if it holds none."""

    def count(self, name: str) -> int:
        rows: int = self.conn.execute(count_query(self.source(name)).sql("duckdb")).fetchall()[0][0]
        return rows


class DuckDBWriter(Writer):
    def open(self, previous: Path | None) -> None:
        self.conn.execute(attach_sql(self.staging, TARGET, read_only=False))
        if previous is not None and previous.is_file():
            self.conn.execute(attach_sql(previous, PREVIOUS, read_only=True))
            self._previous = previous

    def _table(self, name: str, database: str = TARGET) -> exp.Table:
        return exp.table_(name, db="main", catalog=database, quoted=True)

    def write(self, name: str, select: exp.Select) -> None:
        self.conn.execute(exp.Create(this=self._table(name), kind="TABLE", expression=select).sql("duckdb"))

    def carry(self, name: str) -> None:
        self.write(name, exp.select("*").from_(self._table(name, PREVIOUS)))

    def source(self, name: str) -> exp.Expr:
        return self._table(name)

    def finish(self, build_id: str, policy_hash: str) -> None:
        meta = exp.select(exp.alias_(exp.Literal.string(build_id), "build_id"), exp.alias_(exp.Literal.string(policy_hash), "policy_hash"),
                          exp.alias_(exp.Literal.string(now()), "built_at"))
        self.write(META_TABLE, meta)
        if self._previous is not None:
            self.conn.execute(f"DETACH {PREVIOUS}")
        self.conn.execute(f"DETACH {TARGET}")

    @classmethod
    def stage(cls, target: Path, stamp: str) -> Path:
        if (target.exists() or target.is_symlink()) and cls.build_id(target) is None:
            # a folder, another program's file or someone's own database: never replaced by a build
            raise BuildError(f"{target.name} exists and was not made by saferoom build; move it away first")
        return target.with_name(f".{target.name}.building-{stamp}")

    @staticmethod
    def build_id(target: Path) -> str | None:
        try:
            with duckdb.connect(str(target), read_only=True) as con:
                build_id: str = con.execute(f"SELECT build_id FROM {META_TABLE}").fetchall()[0][0]
        except (OSError, ValueError, IndexError, duckdb.Error):
            return None
        return build_id

    def swap(self, target: Path) -> None:
        os.replace(self.staging, target)
        fsync_dir(target.parent)

    def discard(self) -> None:
        with contextlib.suppress(duckdb.Error):
            self.conn.execute(f"DETACH DATABASE IF EXISTS {TARGET}")
        self.staging.unlink(missing_ok=True)
        self.staging.with_name(self.staging.name + ".wal").unlink(missing_ok=True)


class ParquetWriter(Writer):
    def open(self, previous: Path | None) -> None:
        self.staging.mkdir()
        self._previous = previous if previous is not None and previous.is_dir() else None

    def _file(self, name: str) -> Path:
        return self.staging / f"{name}.parquet"

    def write_remote(self, name: str, side: Side, select: exp.Select) -> None:
        if not side.write_parquet(select, self._file(name)):
            super().write_remote(name, side, select)

    def write(self, name: str, select: exp.Select) -> None:
        copy = exp.Copy(this=select.subquery(), kind=False, files=[exp.Literal.string(str(self._file(name)))],
                        params=[exp.CopyParameter(this=exp.var("FORMAT"), expression=exp.var("PARQUET")),
                                exp.CopyParameter(this=exp.var("COMPRESSION"), expression=exp.var("ZSTD"))])
        self.conn.execute(copy.sql("duckdb"))

    def carry(self, name: str) -> None:
        assert self._previous is not None
        old = self._previous / f"{name}.parquet"
        if old.is_dir():
            shutil.copytree(old, self._file(name), copy_function=os.link)
        else:
            os.link(old, self._file(name))

    def source(self, name: str) -> exp.Expr:
        return parquet_scan(self._file(name))

    def finish(self, build_id: str, policy_hash: str) -> None:
        write_json(self.staging / META_FILE, {"build_id": build_id, "policy_hash": policy_hash, "built_at": now()})

    @classmethod
    def stage(cls, target: Path, stamp: str) -> Path:
        if target.exists() and not target.is_symlink():
            raise BuildError(f"{target.name} exists and was not made by saferoom build; move it away first")
        return target.with_name(f".{target.name}.build-{stamp}")

    @staticmethod
    def build_id(target: Path) -> str | None:
        try:
            build_id: str = json.loads((target / META_FILE).read_text())["build_id"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return build_id

    def swap(self, target: Path) -> None:
        link = target.with_name(f".{target.name}.link-{os.getpid()}")
        link.unlink(missing_ok=True)
        link.symlink_to(self.staging.name)
        old = target.resolve() if target.is_symlink() else None
        os.replace(link, target)  # atomic: readers see the old folder or the new one
        fsync_dir(target.parent)
        if old is not None and old != self.staging.resolve():
            shutil.rmtree(old, ignore_errors=True)

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def writer_for(plan: BuildPlan, conn: duckdb.DuckDBPyConnection) -> Writer:
    kind = target_kind(plan)
    return kind(conn, kind.stage(plan.target, f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"))


def target_kind(plan: BuildPlan) -> type[Writer]:
    """The writer of the build's target, as the engine registry has it."""
    writer = registry.engine(plan.engine).writer
    if writer is None:
        raise BuildError(f"a build cannot write a {registry.engine(plan.engine).label} target")
    return writer()


def target_build_id(plan: BuildPlan) -> str | None:
    """The id of the build the target holds; None if it holds none."""
    return target_kind(plan).build_id(plan.target)


def remove_stale(target: Path) -> None:
    """Leftovers of a build that was killed: safe to remove while we hold the lock."""
    live = target.resolve() if target.is_symlink() else None
    for stale in target.parent.glob(f".{target.name}.build*"):
        if stale != live:
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


@contextlib.contextmanager
def locked(target: Path) -> Iterator[None]:
    """Only one build of a target at a time. The lock file goes when the build ends; one left by a build that
    was killed is taken over by the next."""
    path = target.with_name(f".{target.name}.lock")
    handle = _lock(path, target.name)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # while still holding it: a build waiting on this file tries again
        handle.close()


def _lock(path: Path, target: str) -> IO[str]:
    for _ in range(3):
        try:
            handle = try_lock(path)
        except OSError as exc:
            raise BuildError(f"cannot write beside the build target {target}: {exc.strerror}") from None
        if handle is None:
            break
        if _same_file(handle, path):
            return handle
        handle.close()  # the file was removed by a build that just ended: lock the one there now
    raise BuildError(f"another build of {target} is running; wait for it to end")


def _same_file(handle: IO[str], path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(handle.fileno()), path.stat())
    except FileNotFoundError:
        return False
