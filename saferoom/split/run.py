"""Run a build: every table through the role's policy view, into a target swapped in whole.

Work happens inside DuckDB as SQL that saferoom generates (no Python loop over
rows). The target is written under a temporary name and swapped in only when
everything succeeded; a build that fails or is killed leaves the last good
database, manifest and fingerprint index untouched.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
from sqlglot import exp

from saferoom.engines.duckdb import FINGERPRINT_TEXT_FUNCTION, TOKEN_FUNCTION, build_connection, fingerprint_key, scrub
from saferoom.errors import BuildError, EngineError
from saferoom.policy import Policy
from saferoom.split import fingerprints
from saferoom.split.manifest import Manifest, TableResult, now, read_manifest, snapshot, write_manifest
from saferoom.split.plan import K_COLUMN, BuildPlan, TablePlan, make_plan, source_paths
from saferoom.split.queries import count_query, distinct_estimates_query, fingerprint_values, smallest_group_query
from saferoom.split.tokens import distinct_tokens, token_calls
from saferoom.split.writers import Writer, locked, remove_stale, target_build_id, writer_for

Progress = Callable[[str, float], None]
DISTINCT_MIN_ROWS = 100_000
DISTINCT_MAX_RATIO = 0.5


def build(policy: Policy, name: str, *, full: bool = False, progress: Progress | None = None) -> Manifest:
    """Build ``name``; unchanged tables are carried over from the last build unless ``full``."""
    from saferoom import __version__

    return run(policy, make_plan(policy, name), __version__, full=full, progress=progress)


def run(policy: Policy, plan: BuildPlan, version: str, *, full: bool = False, progress: Progress | None = None) -> Manifest:
    if policy.token_key is None:
        raise BuildError("a build needs `secrets.token_key` (it keys tokens and the fingerprint index)")
    with locked(plan.target):
        remove_stale(plan.target)
        previous = None if full else _previous(plan)
        conn = build_connection(source_paths(policy), policy.token_key)
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
                        {"engine": plan.engine, "path": plan.target.name}, now())
    writer = writer_for(plan, conn)
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
        manifest.source_snapshot = snapshot(manifest.tables)
        manifest.fingerprints = {"file": plan.fingerprints_path.name, "values": count, "key_id": fingerprints.key_id(key)}
        manifest.finished_at = now()
        writer.swap(plan.target)  # the moment the new build becomes the build
    except BaseException:
        writer.discard()
        _tmp_sibling(plan.fingerprints_path).unlink(missing_ok=True)
        raise
    os.replace(_tmp_sibling(plan.fingerprints_path), plan.fingerprints_path)
    write_manifest(plan.manifest_path, manifest)
    write_fragment(plan, manifest)
    return manifest


def _table(conn: duckdb.DuckDBPyConnection, side: Any, table: TablePlan, writer: Writer, previous: Manifest | None,
           old: dict[str, fingerprints.Section], plan: BuildPlan, progress: Progress) -> tuple[TableResult, fingerprints.Section]:
    progress(table.table, 0.0)
    identity, rows_in = side.identity(table) if side else _identity(conn, table)
    before = _previous_table(previous, table)
    carried = (before is not None and before.name == table.name and before.recipe == table.recipe
               and before.source_identity == identity)
    if carried:
        writer.carry(table.name)
    elif side is not None:
        repeated = side.repetitive(table, rows_in) if hasattr(side, "repetitive") else {}
        select = _select(table, plan, repeated, getattr(side, "token_function", TOKEN_FUNCTION),
                         getattr(side, "broadcast_below", None))
        writer.write_remote(table.name, side, select)  # the view runs in the source
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
    manifest = read_manifest(plan.manifest_path)
    return manifest if manifest is not None and target_build_id(plan) == manifest.build_id else None


def _previous_table(previous: Manifest | None, table: TablePlan) -> TableResult | None:
    return next((t for t in previous.tables if t.table == table.table), None) if previous else None


def _old_sections(plan: BuildPlan) -> dict[str, fingerprints.Section]:
    try:
        return {s.table: s for s in fingerprints.read(plan.fingerprints_path)[1]}
    except (OSError, ValueError, BuildError):
        return {}


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.next")


def write_fragment(plan: BuildPlan, manifest: Manifest) -> None:
    """A policy fragment that serves the built database: add `includes: [<file>]` to the policy."""
    from saferoom.split.fragment import fragment

    text = fragment(plan, manifest)
    tmp = plan.fragment_path.with_name(f".{plan.fragment_path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, plan.fragment_path)


