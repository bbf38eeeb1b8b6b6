"""The connections a build reads through: one DuckDB with every source that is files attached (database files,
Parquet folders), and one side per source that runs its own SQL (PostgreSQL, Spark), where its policy views run.
Which is which, the engine registry says (:mod:`saferoom.engines.registry`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import duckdb
import pyarrow as pa
from sqlglot import exp

from saferoom.engines import registry
from saferoom.engines.base import Catalog
from saferoom.engines.duckdb import CLOSED_CONFIG, Attachment, no_progress_bar, read_catalog
from saferoom.keyed import fingerprint_function, fingerprint_key, token_function
from saferoom.policy import Policy
from saferoom.secrets import Secret

if TYPE_CHECKING:
    from saferoom.split.fingerprints import Section
    from saferoom.split.plan import BuildPlan, TablePlan


class Side(Protocol):
    """Everything a build asks of a source whose policy views run in the source itself."""

    @property
    def token_function(self) -> str:
        """The function its tokenize template calls, where distinct values are tokenized once."""
        ...

    @property
    def broadcast_below(self) -> int | None:
        """A token map of fewer distinct values is sent whole to every worker of a cluster."""
        ...

    def catalog(self) -> Catalog: ...

    def identity(self, table: TablePlan) -> tuple[str, int]:
        """The table's content hash (order-independent) and its row count."""
        ...

    def repetitive(self, table: TablePlan, rows: int) -> dict[str, int]:
        """Tokenized columns whose values repeat enough to tokenize distinct values first, with their estimates."""
        ...

    def reader(self, select: exp.Select) -> pa.RecordBatchReader: ...

    def write_parquet(self, select: exp.Select, path: Path) -> bool:
        """Write the rows as Parquet at ``path`` itself, where the source does that better than streaming them
        (Spark's executors write in parallel); False: nothing written, stream them instead."""
        ...

    def scalar(self, query: exp.Expr) -> object: ...

    def fingerprints(self, table: TablePlan) -> Section: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Sources:
    conn: duckdb.DuckDBPyConnection  # sources that are files, the token functions, and the target being written
    sides: dict[str, Side]  # source name -> its side, for sources that run their own SQL

    def side(self, policy: Policy, table: TablePlan) -> Side | None:
        return self.sides.get(policy.tables[table.table].source)

    def identity(self, policy: Policy, table: TablePlan) -> tuple[str, int]:
        """The source table's content hash (order-independent, all columns) and its row count."""
        side = self.side(policy, table)
        return side.identity(table) if side is not None else _identity(self.conn, table)


@contextlib.contextmanager
def opened(policy: Policy, plan: BuildPlan) -> Iterator[Sources]:
    conn = build_connection(attachments(policy), policy.token_key)
    try:
        with _sides(policy, {policy.tables[t.table].source for t in plan.tables}, policy.token_key) as sides:
            yield Sources(conn, sides)
    finally:
        conn.close()


@contextlib.contextmanager
def _sides(policy: Policy, names: set[str], token_key: Secret | None) -> Iterator[dict[str, Side]]:
    """The sides of those sources that run their own SQL; the ones opened are closed if a later one fails."""
    sides: dict[str, Side] = {}
    try:
        for name in sorted(names):
            opener = registry.source_engine(policy, name).side
            if opener is not None:
                sides[name] = opener(policy, name, token_key)
        yield sides
    finally:
        for side in sides.values():
            side.close()


def _identity(conn: duckdb.DuckDBPyConnection, table: TablePlan) -> tuple[str, int]:
    source = table.select.args["from_"].this.copy()
    source.set("alias", exp.TableAlias(this=exp.to_identifier("t")))
    row = exp.func("hash", exp.column("t"))
    query = exp.select(exp.Count(this=exp.Star()), exp.Sum(this=exp.cast(row, "HUGEINT")), exp.func("bit_xor", row)).from_(source)
    count, total, xor = conn.execute(query.sql("duckdb")).fetchall()[0]
    return f"{count}:{total}:{xor}", int(count)


def build_connection(sources: dict[str, Attachment], token_key: Secret | None) -> duckdb.DuckDBPyConnection:
    """A connection for `saferoom build`: sources read-only, the token and fingerprint macros.

    Only SQL that saferoom generates runs here, and it must write the target,
    so external access stays on; extensions stay off.
    """
    conn = duckdb.connect(":memory:", config={**CLOSED_CONFIG, "preserve_insertion_order": False})
    try:
        no_progress_bar(conn)
        for name, source in sources.items():
            source.attach(conn, name, {})
        if token_key is not None:
            keyed_functions(conn, token_key)
    except BaseException:
        conn.close()
        raise
    return conn


def keyed_functions(conn: duckdb.DuckDBPyConnection, token_key: Secret) -> None:
    """The token and fingerprint functions of a build."""
    token_function(conn, token_key)
    fingerprint_function(conn, fingerprint_key(token_key))


def _readable(policy: Policy) -> list[str]:
    """The sources a build may read: every one but the builds' own targets."""
    return [name for name in policy.model.sources if name not in policy.model.builds]


def attachments(policy: Policy) -> dict[str, Attachment]:
    """The sources a build reads from files, as its DuckDB attaches them."""
    found = {name: registry.attachment(policy, name) for name in _readable(policy)}
    return {name: attachment for name, attachment in found.items() if attachment is not None}


def sources_catalog(policy: Policy) -> Catalog:
    """Tables and column types of every source a build may read."""
    conn = build_connection(attachments(policy), None)
    try:
        catalog = read_catalog(conn)
    finally:
        conn.close()
    with _sides(policy, set(_readable(policy)), None) as sides:  # no key: only the catalog is read
        for side in sides.values():
            catalog |= side.catalog()
    return catalog
