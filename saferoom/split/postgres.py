"""A build's reads from a PostgreSQL source: the policy view runs in PostgreSQL, rows stream to the target."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
from sqlglot import exp

from saferoom.engines.base import Catalog
from saferoom.engines.postgres import FINGERPRINT_KEY, PostgresEngine, fingerprint_sql
from saferoom.keyed import fingerprint_key
from saferoom.policy import Policy
from saferoom.secrets import Secret
from saferoom.split import fingerprints
from saferoom.split.plan import TablePlan
from saferoom.split.queries import fingerprint_values


class PostgresSide:
    """Everything a build asks of one PostgreSQL source, answered by PostgreSQL."""

    # PostgreSQL computes a token inline from built-ins (no function to call), once per row: with no function
    # there is no distinct-values rewrite to make, and no cluster to broadcast to
    token_function = ""
    broadcast_below = None

    def __init__(self, policy: Policy, name: str, key: Secret | None) -> None:
        self.engine = PostgresEngine(name, policy.source_url(name), policy.source_password(name), key,
                                     fingerprint_key(key) if key is not None else None)

    def close(self) -> None:
        self.engine.close()

    def catalog(self) -> Catalog:
        return self.engine.catalog()

    def repetitive(self, table: TablePlan, rows: int) -> dict[str, int]:
        return {}

    def write_parquet(self, select: exp.Select, path: Path) -> bool:
        return False  # rows stream to the build's DuckDB, which writes them

    def scalar(self, query: exp.Expr) -> object:
        return self.engine.stream(query.sql("postgres")).read_all().column(0)[0].as_py()

    def identity(self, table: TablePlan) -> tuple[str, int]:
        """Order-independent hash of every row's text, and the row count."""
        source = table.select.args["from_"].this.copy()
        source.set("alias", exp.TableAlias(this=exp.to_identifier("t")))
        row = exp.func("hashtextextended", exp.cast(exp.column("t"), "TEXT"), exp.Literal.number(0))
        query = exp.select(exp.Count(this=exp.Star()), exp.cast(exp.Sum(this=exp.cast(row, "NUMERIC")), "TEXT"),
                           exp.func("bit_xor", row.copy())).from_(source)
        result = self.engine.stream(query.sql("postgres")).read_all().to_pylist()[0]
        count, total, xor = result.values()
        return f"{count}:{total}:{xor}", int(count)

    def reader(self, select: exp.Select) -> pa.RecordBatchReader:
        return self.engine.stream(select.sql("postgres"))

    def fingerprints(self, table: TablePlan) -> fingerprints.Section:
        columns = tuple(table.fingerprinted)
        if not columns:
            return fingerprints.Section(table.table, (), np.zeros(0, dtype=np.uint64))
        union = fingerprint_values(table, "TEXT")
        hashed = exp.select(exp.alias_(fingerprint_sql(exp.column("v"), FINGERPRINT_KEY), "h")).from_(union.subquery("u"))
        signed = self.engine.stream(exp.select("h").distinct().from_(hashed.subquery("x")).sql("postgres")).read_all()
        hashes = np.sort(fingerprints.as_uint64(signed.column("h")))
        return fingerprints.Section(table.table, columns, hashes)
