"""A build's reads from a Spark source: the policy view runs on Spark; Parquet is written by the cluster."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sqlglot import exp

from saferoom.engines.base import Catalog
from saferoom.engines.spark import SparkEngine
from saferoom.keyed import fingerprint_key
from saferoom.policy import Policy
from saferoom.secrets import Secret, hmac_pads
from saferoom.split import fingerprints
from saferoom.split.plan import TablePlan
from saferoom.split.queries import distinct_estimates_query, fingerprint_values


def fingerprint_function(key: Secret) -> str:
    """64 bits of HMAC-SHA256 of the trimmed, lower-cased text, as two 32-bit halves (Spark has no uint64)."""
    inner, outer = (pad.hex() for pad in hmac_pads(key))
    digest = (f"sha2(concat(unhex('{outer}'), unhex(sha2(concat(unhex('{inner}'), "
              "encode(lower(trim(v)), 'UTF-8')), 256))), 256)")
    return ("CREATE OR REPLACE TEMPORARY FUNCTION saferoom_fingerprint(v STRING) RETURNS STRING RETURN "
            f"{digest}")


def _local_files(uris: list[str]) -> list[Path] | None:
    """The files Spark reads for a table, if all are on this machine (``file:`` URIs)."""
    paths = [Path(unquote(urlparse(u).path)) for u in uris if urlparse(u).scheme == "file"]
    return sorted(paths) if uris and len(paths) == len(uris) else None


def _files_identity(files: list[Path]) -> str:
    """SHA-256 over each file's name, size and bytes: a content hash at disk speed, without a Spark job."""
    digest = hashlib.sha256()
    for path in files:
        with path.open("rb") as handle:
            digest.update(f"{path.name}\0{os.fstat(handle.fileno()).st_size}\0".encode())
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return "files:" + digest.hexdigest()


class SparkSide:
    """Everything a build asks of a Spark source, answered by Spark."""

    token_function = "saferoom_token"
    broadcast_below = 5_000_000  # distinct values: a token map this small is sent whole to every executor

    def __init__(self, policy: Policy, name: str, key: Secret | None) -> None:
        self.engine = SparkEngine(name, policy.model.sources[name], policy.base, key)
        self._estimates: dict[str, dict[str, int]] = {}
        if key is not None:
            self.engine.session.sql(fingerprint_function(fingerprint_key(key)))

    def close(self) -> None:
        self.engine.close()

    def catalog(self) -> Catalog:
        return self.engine.catalog()

    def _sql(self, query: exp.Expr) -> pa.Table:
        return self.engine.stream(query.sql("spark")).read_all()

    def identity(self, table: TablePlan) -> tuple[str, int]:
        """Content hash and row count: of the files, for Parquet on this machine; else by a pass over the rows."""
        view = table.select.args["from_"].this.name
        files = _local_files(self.engine.session.table(view).inputFiles())
        if files is not None and all(f.suffix == ".parquet" for f in files):
            return _files_identity(files), sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        return self._scanned_identity(table)

    def _scanned_identity(self, table: TablePlan) -> tuple[str, int]:
        """A pass over every row; it also estimates the tokenized columns' distinct values."""
        source = table.select.args["from_"].this.copy()
        source.set("alias", exp.TableAlias(this=exp.to_identifier("t")))
        row = exp.func("xxhash64", exp.Star())
        columns = self._token_columns(table)
        estimates = [exp.func("approx_count_distinct", exp.column(c, table="t", quoted=True)) for c in columns]
        query = exp.select(exp.Count(this=exp.Star()), exp.cast(exp.Sum(this=exp.cast(row, "DECIMAL(38, 0)")), "STRING"),
                           exp.func("bit_xor", row.copy()), *estimates).from_(source)
        count, total, xor, *distinct = self._sql(query).to_pylist()[0].values()
        self._estimates[table.table] = dict(zip(columns, distinct, strict=True))
        return f"{count}:{total}:{xor}", int(count)

    def _token_columns(self, table: TablePlan) -> list[str]:
        from saferoom.split.tokens import token_calls

        return sorted(token_calls(table.select, self.token_function))

    def repetitive(self, table: TablePlan, rows: int) -> dict[str, int]:
        """Tokenized columns whose values repeat enough that tokenizing distinct values first pays."""
        from saferoom.split.run import repeated_columns

        return repeated_columns(table, rows, self.token_function, lambda columns: self._estimate(table, columns))

    def _estimate(self, table: TablePlan, columns: list[str]) -> list[int]:
        """Distinct values per column: from the identity pass when it scanned the rows, else one query now."""
        if table.table not in self._estimates:
            estimated = self._sql(distinct_estimates_query(table, columns)).to_pylist()[0].values()
            self._estimates[table.table] = dict(zip(columns, estimated, strict=True))
        return [self._estimates[table.table][c] for c in columns]

    def scalar(self, query: exp.Expr) -> object:
        return self._sql(query).column(0)[0].as_py()

    def reader(self, select: exp.Select) -> pa.RecordBatchReader:
        return self.engine.stream(select.sql("spark"))

    def write_parquet(self, select: exp.Select, path: Path) -> bool:
        """Written in parallel by Spark's executors: a folder of part files."""
        self.engine.session.sql(select.sql("spark")).write.mode("overwrite").parquet(str(path))
        return True

    def fingerprints(self, table: TablePlan) -> fingerprints.Section:
        columns = tuple(table.fingerprinted)
        if not columns:
            return fingerprints.Section(table.table, (), np.zeros(0, dtype=np.uint64))
        union = fingerprint_values(table, "STRING")
        digest = exp.func("saferoom_fingerprint", exp.column("v"))
        halves = [exp.alias_(exp.cast(exp.func("conv", exp.func("substr", digest.copy(), exp.Literal.number(start), exp.Literal.number(8)),
                                                 exp.Literal.number(16), exp.Literal.number(10)), "BIGINT"), name)
                  for start, name in ((1, "hi"), (9, "lo"))]
        table_ = self._sql(exp.select(*halves).distinct().from_(union.subquery("u")))
        hi = table_.column("hi").to_numpy().astype(np.uint64)
        lo = table_.column("lo").to_numpy().astype(np.uint64)
        return fingerprints.Section(table.table, columns, np.sort((hi << np.uint64(32)) | lo))
