"""Run a build: every table through the role's policy view, into a target swapped in whole.

Work happens inside DuckDB as SQL that saferoom generates (no Python loop over
rows). The target is written under a temporary name and swapped in only when
everything succeeded; a build that fails or is killed leaves the last good
database, manifest and fingerprint index untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
from sqlglot import exp

from saferoom.engines.duckdb import (
    FINGERPRINT_TEXT_FUNCTION,
    TOKEN_FUNCTION,
    attach_sql,
    build_connection,
    fingerprint_key,
    scrub,
)
from saferoom.errors import BuildError, EngineError
from saferoom.files import fsync_dir, try_lock
from saferoom.policy import Policy
from saferoom.split import fingerprints
from saferoom.split.plan import (
    K_COLUMN,
    BuildPlan,
    TablePlan,
    count_query,
    distinct_estimates_query,
    fingerprint_values,
    smallest_group_query,
)
from saferoom.split.tokens import distinct_tokens, token_calls

Progress = Callable[[str, float], None]
DISTINCT_MIN_ROWS = 100_000
DISTINCT_MAX_RATIO = 0.5
TARGET, PREVIOUS, INCOMING = "__saferoom_target", "__saferoom_previous", "__saferoom_incoming"
META_TABLE = "saferoom_build"


@dataclass
class TableResult:
    table: str
    name: str
    source_identity: str
    recipe: str
    rows_in: int
    rows_out: int
    carried_over: bool
    row_filter: str | None
    row_filter_left_to_policy: str | None
    columns: list[dict[str, Any]]
    k_anonymity: dict[str, Any] | None = None
    fingerprinted_values: int = 0


@dataclass
class Manifest:
    build: str
    build_id: str
    saferoom_version: str
    policy_hash: str
    role: str
    target: dict[str, str]
    started_at: str
    finished_at: str = ""
    source_snapshot: str = ""
    tables: list[TableResult] = field(default_factory=list)
    fingerprints: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run(policy: Policy, plan: BuildPlan, version: str, *, full: bool = False, progress: Progress | None = None) -> Manifest:
    if policy.token_key is None:
        raise BuildError("a build needs `secrets.token_key` (it keys tokens and the fingerprint index)")
    with _locked(plan.target):
        _remove_stale(plan.target)
        previous = None if full else _previous(plan)
        conn = build_connection(_source_paths(policy), policy.token_key)
        sides = _remote_sides(policy, plan)
        try:
            return _run(conn, sides, policy, plan, version, previous, progress or (lambda _t, _f: None))
        except duckdb.Error as exc:
            raise BuildError(f"the build failed; the last good build is untouched: {scrub(str(exc), {})}") from None
        except EngineError as exc:
            raise BuildError(f"the build failed reading a source; the last good build is untouched: {exc}") from None
        finally:
            conn.close()
            for side in sides.values():
                side.close()


def _remote_sides(policy: Policy, plan: BuildPlan) -> dict[str, Any]:
    """One connection per PostgreSQL or Spark source the build reads; DuckDB sources are attached to ``conn``."""
    from saferoom.split.postgres import PostgresSide

    sides: dict[str, Any] = {}
    for name in {policy.tables[t.table].source for t in plan.tables if t.engine != "duckdb"}:
        if policy.model.sources[name].engine == "spark":
            from saferoom.split.spark import SparkSide

            sides[name] = SparkSide(policy, name)
        else:
            sides[name] = PostgresSide(policy, name)
    return sides


def _run(conn: duckdb.DuckDBPyConnection, sides: dict[str, Any], policy: Policy, plan: BuildPlan, version: str,
         previous: Manifest | None, progress: Progress) -> Manifest:
    manifest = Manifest(plan.name, uuid.uuid4().hex, version, policy.hash, plan.role,
                        {"engine": plan.engine, "path": plan.target.name}, _now())
    staging = _staging(plan)
    writer = DuckDBWriter(conn, staging) if plan.engine == "duckdb" else ParquetWriter(conn, staging)
    old = _old_sections(plan) if previous else {}
    try:
        writer.open(plan.target if previous else None)
        sections = []
        for table in plan.tables:
            side = sides.get(policy.tables[table.table].source) if table.engine != "duckdb" else None
            result, section = _table(conn, side, table, writer, previous, old, plan, progress)
            manifest.tables.append(result)
            sections.append(section)
        writer.finish(manifest.build_id, policy.hash)
        key = fingerprint_key(policy.token_key)  # type: ignore[arg-type]
        count = fingerprints.write(_tmp_sibling(plan.fingerprints_path), key, sections)
        manifest.source_snapshot = _snapshot(manifest.tables)
        manifest.fingerprints = {"file": plan.fingerprints_path.name, "values": count, "key_id": fingerprints.key_id(key)}
        manifest.finished_at = _now()
        writer.swap(plan.target)  # the moment the new build becomes the build
    except BaseException:
        writer.discard()
        _tmp_sibling(plan.fingerprints_path).unlink(missing_ok=True)
        raise
    os.replace(_tmp_sibling(plan.fingerprints_path), plan.fingerprints_path)
    _write_json(plan.manifest_path, manifest.to_dict())
    write_fragment(plan, manifest)
    return manifest


def _table(conn: duckdb.DuckDBPyConnection, side: Any, table: TablePlan, writer: Writer, previous: Manifest | None,
           old: dict[str, fingerprints.Section], plan: BuildPlan, progress: Progress) -> tuple[TableResult, fingerprints.Section]:
    progress(table.table, 0.0)
    identity, rows_in = side.identity(table) if side else _identity(conn, table)
    before = _previous_table(previous, table)
    carried = before is not None and before.recipe == table.recipe and before.source_identity == identity
    if carried:
        writer.carry(table.name)
    elif side is not None:
        repeated = side.repetitive(table, rows_in) if hasattr(side, "repetitive") else {}
        select = _select(table, plan, repeated, getattr(side, "token_function", TOKEN_FUNCTION),
                         getattr(side, "broadcast_below", None))
        if isinstance(writer, ParquetWriter) and hasattr(side, "write_parquet"):
            writer.write_cluster(table.name, side, select)  # Spark writes Parquet in parallel
        else:
            writer.write_reader(table.name, side.reader(select))  # the view runs in the source
    else:
        select = _select(table, plan, _repetitive(conn, table, rows_in))
        with _watch(conn, lambda f: progress(table.table, f)):
            writer.write(table.name, select)
    result = TableResult(
        table.table, table.name, identity, table.recipe, rows_in, writer.count(table.name), carried,
        table.row_filter, table.row_filter_left, [asdict(c) for c in table.columns],
    )
    if table.k_columns and plan.k_anonymity:
        result.k_anonymity = _k_result(conn, side, table, writer, plan, before if carried else None)
    if carried and table.table in old:
        section = old[table.table]
    else:
        section = side.fingerprints(table) if side else _fingerprints(conn, table)
    result.fingerprinted_values = len(section.hashes)
    progress(table.table, 1.0)
    return result, section


def _repetitive(conn: duckdb.DuckDBPyConnection, table: TablePlan, rows: int) -> dict[str, int]:
    return repeated_columns(table, rows, TOKEN_FUNCTION,
                            lambda columns: conn.execute(distinct_estimates_query(table, columns).sql("duckdb")).fetchall()[0])


def repeated_columns(table: TablePlan, rows: int, function: str,
                     estimate: Callable[[list[str]], Iterable[int]]) -> dict[str, int]:
    """Tokenized columns whose values repeat enough that tokenizing distinct values first pays, with their estimated
    distinct values (``estimate`` asks the source, for large tables only)."""
    columns = sorted(token_calls(table.select, function))
    if rows < DISTINCT_MIN_ROWS or not columns:
        return {}
    return {c: n for c, n in zip(columns, estimate(columns), strict=True) if n < rows * DISTINCT_MAX_RATIO}


def _select(table: TablePlan, plan: BuildPlan, repetitive: dict[str, int] | None = None, function: str = TOKEN_FUNCTION,
            broadcast_below: int | None = None) -> exp.Select:
    """The policy view, tokenizing repeated values once, with k-anonymity suppression in the same statement,
    in a shuffled order."""
    select = distinct_tokens(table.select, repetitive, table.types, function, broadcast_below) if repetitive else table.select
    k = plan.k_anonymity
    if table.k_columns and k is not None and k.on_violation == "suppress":
        window = exp.Window(this=exp.Count(this=exp.Star()), partition_by=[exp.column(c, quoted=True) for c in table.k_columns])
        counted = exp.select(exp.Star(), exp.alias_(window, K_COLUMN)).from_(select.subquery("v"))
        names = [exp.column(p.alias_or_name, quoted=True) for p in table.select.expressions]
        keep = exp.select(*names).from_(counted.subquery("c"))
        select = keep.where(exp.GTE(this=exp.column(K_COLUMN), expression=exp.Literal.number(k.k)))
    return shuffled(select)


def shuffled(select: exp.Select) -> exp.Select:
    """Rows in random order: a source's order (by customer id, by time of signup) would otherwise survive in the
    build, and a row's position would tell what its token, or its removed column, hides.

    >>> shuffled(exp.select("a").from_("t")).sql("duckdb")
    'SELECT a FROM t ORDER BY RANDOM()'
    """
    return select.order_by(exp.Rand(), copy=True)


def _k_result(conn: duckdb.DuckDBPyConnection, side: Any, table: TablePlan, writer: Writer, plan: BuildPlan,
              carried: TableResult | None) -> dict[str, Any]:
    if carried is not None and carried.k_anonymity:
        return carried.k_anonymity
    k = plan.k_anonymity
    assert k is not None
    def at_source(query: exp.Select) -> Any:
        return side.scalar(query) if side is not None else _scalar(conn, query)

    before = at_source(smallest_group_query(table.select, table.k_columns))
    rows_view = at_source(count_query(table.select))
    after = _scalar(conn, smallest_group_query(writer.source(table.name), table.k_columns))
    result = {"columns": list(table.k_columns), "k": k.k, "on_violation": k.on_violation,
              "smallest_group_before": before, "smallest_group": after, "rows_suppressed": rows_view - writer.count(table.name)}
    if k.on_violation == "fail" and before is not None and before < k.k:
        raise BuildError(f"k-anonymity fails for {table.table}: a group of {before} rows over {', '.join(table.k_columns)} is below k={k.k}")
    return result


def _scalar(conn: duckdb.DuckDBPyConnection, query: exp.Select) -> Any:
    return conn.execute(query.sql("duckdb")).fetchall()[0][0]


def _identity(conn: duckdb.DuckDBPyConnection, table: TablePlan) -> tuple[str, int]:
    """Order-independent content hash of the source table (all columns), and its row count."""
    source = table.select.args["from_"].this.copy()
    source.set("alias", exp.TableAlias(this=exp.to_identifier("t")))
    row = exp.func("hash", exp.column("t"))
    query = exp.select(exp.Count(this=exp.Star()), exp.Sum(this=exp.cast(row, "HUGEINT")), exp.func("bit_xor", row)).from_(source)
    count, total, xor = conn.execute(query.sql("duckdb")).fetchall()[0]
    return f"{count}:{total}:{xor}", int(count)


def _fingerprints(conn: duckdb.DuckDBPyConnection, table: TablePlan) -> fingerprints.Section:
    """Keyed hashes of every distinct value of every column the build removed or changed."""
    columns = tuple(table.fingerprinted)
    if not columns:
        return fingerprints.Section(table.table, (), np.zeros(0, dtype=np.uint64))
    union = fingerprint_values(table, "VARCHAR", distinct=False)
    values = exp.select("v").distinct().from_(union.subquery("u"))  # each distinct value hashed once
    # ORDER BY keeps the hashing in DuckDB's parallel pipeline (a bare projection at the root runs on one thread)
    hashed = exp.func(FINGERPRINT_TEXT_FUNCTION, exp.column("v"))  # the values are normalised already
    query = exp.select(exp.alias_(hashed, "h")).from_(values.subquery("d")).order_by("h")
    hashes = fingerprints.as_uint64(conn.sql(query.sql("duckdb")).to_arrow_table().column("h"))
    return fingerprints.Section(table.table, columns, fingerprints.unique_sorted(hashes))


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
    @abstractmethod
    def source(self, name: str) -> exp.Expression: ...
    @abstractmethod
    def finish(self, build_id: str, policy_hash: str) -> None: ...
    @abstractmethod
    def swap(self, target: Path) -> None: ...
    @abstractmethod
    def discard(self) -> None: ...

    def count(self, name: str) -> int:
        return _scalar(self.conn, count_query(self.source(name)))


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

    def source(self, name: str) -> exp.Expression:
        return self._table(name)

    def finish(self, build_id: str, policy_hash: str) -> None:
        meta = exp.select(exp.alias_(exp.Literal.string(build_id), "build_id"), exp.alias_(exp.Literal.string(policy_hash), "policy_hash"),
                          exp.alias_(exp.Literal.string(_now()), "built_at"))
        self.write(META_TABLE, meta)
        if self._previous is not None:
            self.conn.execute(f"DETACH {PREVIOUS}")
        self.conn.execute(f"DETACH {TARGET}")

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

    def write_cluster(self, name: str, side: Any, select: exp.Select) -> None:
        side.write_parquet(select, self._file(name))

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

    def source(self, name: str) -> exp.Expression:
        path = self._file(name)
        return exp.func("read_parquet", exp.Literal.string(str(path / "*.parquet") if path.is_dir() else str(path)))

    def finish(self, build_id: str, policy_hash: str) -> None:
        _write_json(self.staging / "_saferoom_build.json", {"build_id": build_id, "policy_hash": policy_hash, "built_at": _now()})

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


def _staging(plan: BuildPlan) -> Path:
    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    if plan.engine == "parquet":
        if plan.target.exists() and not plan.target.is_symlink():
            raise BuildError(f"{plan.target.name} exists and was not made by saferoom build; move it away first")
        return plan.target.with_name(f".{plan.target.name}.build-{stamp}")
    if (plan.target.exists() or plan.target.is_symlink()) and _target_build_id(plan) is None:
        # a folder, another program's file or someone's own database: never replaced by a build
        raise BuildError(f"{plan.target.name} exists and was not made by saferoom build; move it away first")
    return plan.target.with_name(f".{plan.target.name}.building-{stamp}")


def _remove_stale(target: Path) -> None:
    """Leftovers of a build that was killed: safe to remove while we hold the lock."""
    live = target.resolve() if target.is_symlink() else None
    for stale in target.parent.glob(f".{target.name}.build*"):
        if stale != live:
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(target: Path) -> Iterator[None]:
    try:
        handle = try_lock(target.with_name(f".{target.name}.lock"))
    except OSError as exc:
        raise BuildError(f"cannot write beside the build target {target.name}: {exc.strerror}") from None
    if handle is None:
        raise BuildError(f"another build of {target.name} is running")
    with handle:
        yield


@contextlib.contextmanager
def _watch(conn: duckdb.DuckDBPyConnection, report: Callable[[float], None]) -> Iterator[None]:
    """Report DuckDB's own progress of the running statement."""
    done = threading.Event()

    def poll() -> None:
        while not done.wait(0.25):
            with contextlib.suppress(duckdb.Error):
                fraction = conn.query_progress()
                if fraction >= 0:
                    report(min(fraction / 100.0, 0.99))

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _previous(plan: BuildPlan) -> Manifest | None:
    """The last build's manifest, if it describes the target that is actually there."""
    try:
        data = json.loads(plan.manifest_path.read_text())
        tables = [TableResult(**t) for t in data.pop("tables")]
        manifest = Manifest(**data, tables=tables)
    except (OSError, ValueError, TypeError):
        return None
    return manifest if _target_build_id(plan) == manifest.build_id else None


def _target_build_id(plan: BuildPlan) -> str | None:
    try:
        if plan.engine == "parquet":
            return json.loads((plan.target / "_saferoom_build.json").read_text())["build_id"]
        with duckdb.connect(str(plan.target), read_only=True) as con:
            return con.execute(f"SELECT build_id FROM {META_TABLE}").fetchall()[0][0]
    except (OSError, ValueError, KeyError, IndexError, duckdb.Error):
        return None


def _previous_table(previous: Manifest | None, table: TablePlan) -> TableResult | None:
    return next((t for t in previous.tables if t.table == table.table), None) if previous else None


def _old_sections(plan: BuildPlan) -> dict[str, fingerprints.Section]:
    try:
        return {s.table: s for s in fingerprints.read(plan.fingerprints_path)[1]}
    except (OSError, ValueError, BuildError):
        return {}


def _source_paths(policy: Policy) -> dict[str, Path]:
    from saferoom.session import _path

    return {name: _path(policy, source.path) for name, source in policy.model.sources.items()
            if name not in policy.model.builds and source.engine == "duckdb"}


def _snapshot(tables: list[TableResult]) -> str:
    return "sha256:" + hashlib.sha256("|".join(f"{t.table}={t.source_identity}" for t in tables).encode()).hexdigest()


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.next")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_fragment(plan: BuildPlan, manifest: Manifest) -> None:
    """A policy fragment that serves the built database: add `includes: [<file>]` to the policy."""
    from saferoom.split.fragment import fragment

    text = fragment(plan, manifest)
    tmp = plan.fragment_path.with_name(f".{plan.fragment_path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, plan.fragment_path)


