"""A folder of Parquet files as a source, read by the embedded DuckDB engine: what a Parquet build writes.

Each table is a file ``<table>.parquet``, or a folder of that name holding part files (as Spark writes
them). The folder becomes an in-memory database named after the source, with one view per table, so a
query names ``source.table`` as it would in a DuckDB file. The engine then closes itself to files except
this folder: the views read it at query time, so a rebuild swapped in under the same path is what the
next query reads.
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
    """A folder of Parquet files, one table each, attached as views."""

    path: Path

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
