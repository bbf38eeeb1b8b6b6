"""A build's reads from a Spark source: the policy view runs on Spark; Parquet is written by the cluster."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
from sqlglot import exp

from saferoom.build import fingerprints
from saferoom.build.plan import TablePlan, distinct_estimates_query, fingerprint_values
from saferoom.engines.duckdb import fingerprint_key
from saferoom.engines.spark import SparkEngine
from saferoom.policy import Policy
from saferoom.secrets import Secret, hmac_pads


def fingerprint_function(key: Secret) -> str:
    """64 bits of HMAC-SHA256 of the trimmed, lower-cased text, as two 32-bit halves (Spark has no uint64)."""
    inner, outer = (pad.hex() for pad in hmac_pads(key))
    digest = (f"sha2(concat(unhex('{outer}'), unhex(sha2(concat(unhex('{inner}'), "
              "encode(lower(trim(v)), 'UTF-8')), 256))), 256)")
    return ("CREATE OR REPLACE TEMPORARY FUNCTION saferoom_fingerprint(v STRING) RETURNS STRING RETURN "
            f"{digest}")


class SparkSide:
    """Everything a build asks of a Spark source, answered by Spark."""

    token_function = "saferoom_token"

    def __init__(self, policy: Policy, name: str) -> None:
        key = policy.token_key
        self.engine = SparkEngine(name, policy.model.sources[name], policy.base, key)
        if key is not None:
            self.engine.session.sql(fingerprint_function(fingerprint_key(key)))

    def close(self) -> None:
        self.engine.close()

    def _sql(self, query: exp.Expression) -> pa.Table:
        return self.engine.stream(query.sql("spark")).read_all()

    def identity(self, table: TablePlan) -> tuple[str, int]:
        source = table.select.args["from_"].this.copy()
        source.set("alias", exp.TableAlias(this=exp.to_identifier("t")))
        row = exp.func("xxhash64", exp.Star())
        query = exp.select(exp.Count(this=exp.Star()), exp.cast(exp.Sum(this=exp.cast(row, "DECIMAL(38, 0)")), "STRING"),
                           exp.func("bit_xor", row.copy())).from_(source)
        count, total, xor = self._sql(query).to_pylist()[0].values()
        return f"{count}:{total}:{xor}", int(count)

    def repetitive(self, table: TablePlan, rows: int) -> set[str]:
        """Tokenized columns whose values repeat enough that tokenizing distinct values first pays."""
        from saferoom.build.run import DISTINCT_MAX_RATIO, DISTINCT_MIN_ROWS
        from saferoom.build.tokens import token_calls

        columns = sorted(token_calls(table.select, self.token_function))
        if rows < DISTINCT_MIN_ROWS or not columns:
            return set()
        distinct = self._sql(distinct_estimates_query(table, columns)).to_pylist()[0].values()
        return {c for c, n in zip(columns, distinct, strict=True) if n < rows * DISTINCT_MAX_RATIO}

    def scalar(self, query: exp.Expression) -> object:
        return self._sql(query).column(0)[0].as_py()

    def reader(self, select: exp.Select) -> pa.RecordBatchReader:
        return self.engine.stream(select.sql("spark"))

    def write_parquet(self, select: exp.Select, path: Path) -> None:
        """Written in parallel by Spark's executors: a folder of part files."""
        self.engine.session.sql(select.sql("spark")).write.mode("overwrite").parquet(str(path))

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
