"""A folder of Parquet files as a source, read by the embedded DuckDB engine: what a Parquet build writes.

Each table is a file ``<table>.parquet``, or a folder of that name holding part files (as Spark writes
them). The folder becomes an in-memory database named after the source, with one view per table, so a
query names ``source.table`` as it would in a DuckDB file. The engine then closes itself to files except
this folder, which its views read at query time.

A build's target is a link to the folder of the build that wrote it, and a rebuild swaps the link. The
engine reads the folder the link named when it opened, as an attached DuckDB file stays the one opened
(DuckDB checks the folders it may read by their real paths, so a swapped link would be refused anyway);
the build then removes that folder, so an engine opened before a rebuild is reopened to read the new one
(the gateway does when the build rewrites its fragment).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
from sqlglot import exp

from saferoom.engines.duckdb import attach_sql, scrub
from saferoom.errors import EngineError

SUFFIX = ".parquet"


def parquet_scan(path: Path) -> exp.Expr:
    """``read_parquet`` of one table: its file, or every part file of its folder."""
    return exp.func("read_parquet", exp.Literal.string(str(path / f"*{SUFFIX}") if path.is_dir() else str(path)))


def tables(folder: Path) -> dict[str, Path]:
    """The tables of a folder: name -> its file or folder of part files."""
    return {entry.name[: -len(SUFFIX)]: entry for entry in sorted(folder.iterdir()) if entry.name.endswith(SUFFIX)}


@dataclass(frozen=True)
class ParquetFolder:
    """A folder of Parquet files, one table each, attached as views. A link is followed once, here: every
    process that attaches it (the isolated engine's workers) reads the same build."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", self.path.resolve())

    def attach(self, conn: duckdb.DuckDBPyConnection, name: str, paths: dict[str, str]) -> None:
        if not self.path.is_dir():
            raise EngineError(f"source `{name}`: folder {self.path.name} does not exist; check sources.{name}.path")
        try:
            conn.execute(attach_sql(":memory:", name, read_only=False))
            for table, files in tables(self.path).items():
                view = exp.Create(this=exp.table_(table, db="main", catalog=name, quoted=True), kind="VIEW",
                                  expression=exp.select("*").from_(parquet_scan(files)))
                conn.execute(view.sql("duckdb"))
        except duckdb.Error as exc:
            raise EngineError(f"source `{name}` cannot be opened: {scrub(str(exc), paths)}") from None

    def folders(self) -> list[Path]:
        return [self.path]
