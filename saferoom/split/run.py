"""Run a build: every table through the role's policy view, into a target swapped in whole.

Work happens inside DuckDB as SQL that saferoom generates (no Python loop over
rows). The target is written under a temporary name and swapped in only when
everything succeeded; a build that fails or is killed leaves the last good
database, manifest and fingerprint index untouched. When no table changed, the
target is not written at all.
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

from saferoom.engines.duckdb import scrub
from saferoom.errors import BuildError, EngineError, UsageError
from saferoom.keyed import FINGERPRINT_TEXT_FUNCTION, TOKEN_FUNCTION, fingerprint_key
from saferoom.policy import Policy
from saferoom.split import fingerprints
from saferoom.split.carry import Change, changes, previous_build, unchanged
from saferoom.split.kanonymity import check_suppressed, measure, suppressing
from saferoom.split.manifest import Manifest, TableResult, now, snapshot, write_manifest
from saferoom.split.plan import BuildPlan, TablePlan, make_plan
from saferoom.split.queries import distinct_estimates_query, fingerprint_values
from saferoom.split.sources import Side, Sources, opened
from saferoom.split.tokens import distinct_tokens, token_calls
from saferoom.split.writers import Writer, locked, remove_stale, writer_for

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
        previous = None if full else previous_build(plan)
        try:
            with opened(policy, plan) as sources:
                found = changes(sources, policy, plan, previous, full=full)
                old = _old_sections(plan) if previous else {}
                if previous is not None and unchanged(plan, previous, found) and all(t.table in old for t in plan.tables):
                    return _confirm(policy, plan, version, previous, found, progress or _silent)
                return _run(sources, policy, plan, version, found, old, progress or _silent)
        except duckdb.Error as exc:
            raise BuildError(f"the build failed; the last good build is untouched: {scrub(str(exc), {})}") from None
        except EngineError as exc:
            raise BuildError(f"the build failed reading a source; the last good build is untouched: {exc}") from None


def _silent(_table: str, _fraction: float) -> None:
    return None


def _new_manifest(policy: Policy, plan: BuildPlan, version: str, build_id: str) -> Manifest:
    return Manifest(plan.name, build_id, version, policy.hash, plan.role, {"engine": plan.engine, "path": plan.target.name}, now())


def _confirm(policy: Policy, plan: BuildPlan, version: str, previous: Manifest, found: list[Change],
             progress: Progress) -> Manifest:
    """Nothing changed: the target, its build id and the fingerprint index stay as they are; the manifest and
    the fragment are written again for the policy as it is now."""
    manifest = _new_manifest(policy, plan, version, previous.build_id)
    for table, change in zip(plan.tables, found, strict=True):
        assert change.before is not None
        result = _result(table, change, change.before.rows_out)
        result.k_anonymity, result.fingerprinted_values = change.before.k_anonymity, change.before.fingerprinted_values
        check_suppressed(result, plan.k_anonymity)
        manifest.tables.append(result)
        progress(table.table, 1.0)
    manifest.source_snapshot = snapshot(manifest.tables)
    manifest.fingerprints = previous.fingerprints
    manifest.finished_at = now()
    _publish(policy, plan, manifest)
    return manifest


def _run(sources: Sources, policy: Policy, plan: BuildPlan, version: str, found: list[Change],
         old: dict[str, fingerprints.Section], progress: Progress) -> Manifest:
    manifest = _new_manifest(policy, plan, version, uuid.uuid4().hex)
    writer = writer_for(plan, sources.conn)
    next_index = _tmp_sibling(plan.fingerprints_path)
    try:
        writer.open(plan.target if any(c.carried for c in found) else None)
        sections = []
        for table, change in zip(plan.tables, found, strict=True):
            result, section = _table(sources, policy, table, change, writer, old, plan, progress)
            manifest.tables.append(result)
            sections.append(section)
        writer.finish(manifest.build_id, policy.hash)
        key = fingerprint_key(policy.token_key)  # type: ignore[arg-type]
        count = fingerprints.write(next_index, key, sections)
        manifest.source_snapshot = snapshot(manifest.tables)
        manifest.fingerprints = {"file": plan.fingerprints_path.name, "values": count, "key_id": fingerprints.key_id(key)}
        manifest.finished_at = now()
        writer.swap(plan.target)  # the moment the new build becomes the build
    except BaseException:
        writer.discard()
        next_index.unlink(missing_ok=True)
        raise
    os.replace(next_index, plan.fingerprints_path)
    _publish(policy, plan, manifest)
    return manifest


def _publish(policy: Policy, plan: BuildPlan, manifest: Manifest) -> None:
    write_manifest(plan.manifest_path, manifest)
    write_fragment(policy, plan, manifest)


def _table(sources: Sources, policy: Policy, table: TablePlan, change: Change, writer: Writer,
           old: dict[str, fingerprints.Section], plan: BuildPlan, progress: Progress) -> tuple[TableResult, fingerprints.Section]:
    progress(table.table, 0.0)
    side = sources.side(policy, table)
    if change.carried:
        writer.carry(table.name)
    else:
        _write(sources.conn, side, table, change.rows_in, writer, plan, progress)
    result = _result(table, change, writer.count(table.name))
    if table.k_columns and plan.k_anonymity:
        result.k_anonymity = _k_result(sources.conn, side, table, writer, plan, change.before)
        check_suppressed(result, plan.k_anonymity)
    if change.carried and table.table in old:
        section = old[table.table]
    else:
        section = side.fingerprints(table) if side else _fingerprints(sources.conn, table)
    result.fingerprinted_values = len(section.hashes)
    progress(table.table, 1.0)
    return result, section


def _write(conn: duckdb.DuckDBPyConnection, side: Side | None, table: TablePlan, rows_in: int, writer: Writer,
           plan: BuildPlan, progress: Progress) -> None:
    if side is not None:
        select = _select(table, plan, side.repetitive(table, rows_in), side.token_function, side.broadcast_below)
        writer.write_remote(table.name, side, select)  # the view runs in the source
        return
    select = _select(table, plan, _repetitive(conn, table, rows_in))
    with _watch(conn, lambda f: progress(table.table, f)):
        writer.write(table.name, select)


def _result(table: TablePlan, change: Change, rows_out: int) -> TableResult:
    return TableResult(table.table, table.name, change.identity, table.recipe, change.rows_in, rows_out, change.carried,
                       table.row_filter, table.row_filter_left, [asdict(c) for c in table.columns])


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
    return shuffled(suppressing(select, table, plan.k_anonymity))


def shuffled(select: exp.Select) -> exp.Select:
    """Rows in random order: a source's order (by customer id, by time of signup) would otherwise survive in the
    build, and a row's position would tell what its token, or its removed column, hides.

    >>> shuffled(exp.select("a").from_("t")).sql("duckdb")
    'SELECT a FROM t ORDER BY RANDOM()'
    """
    return select.order_by(exp.Rand(), copy=True)


def _k_result(conn: duckdb.DuckDBPyConnection, side: Side | None, table: TablePlan, writer: Writer, plan: BuildPlan,
              carried: TableResult | None) -> dict[str, Any]:
    if carried is not None and carried.k_anonymity:
        return carried.k_anonymity
    assert plan.k_anonymity is not None

    def at_source(query: exp.Select) -> Any:
        return side.scalar(query) if side is not None else _scalar(conn, query)

    return measure(table, plan.k_anonymity, at_source, lambda query: _scalar(conn, query), writer.source(table.name))


def _scalar(conn: duckdb.DuckDBPyConnection, query: exp.Select) -> Any:
    return conn.execute(query.sql("duckdb")).fetchall()[0][0]


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


def _old_sections(plan: BuildPlan) -> dict[str, fingerprints.Section]:
    try:
        return {s.table: s for s in fingerprints.read(plan.fingerprints_path)[1]}
    except (OSError, ValueError, BuildError, UsageError):
        return {}


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.next")


def write_fragment(policy: Policy, plan: BuildPlan, manifest: Manifest) -> None:
    """A policy fragment that serves the built database: add `includes: [<file>]` to the policy."""
    from saferoom.split.fragment import fragment

    text = fragment(policy, plan, manifest)
    tmp = plan.fragment_path.with_name(f".{plan.fragment_path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, plan.fragment_path)
