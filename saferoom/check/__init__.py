"""`saferoom check`: the airlock. Finds PII, secrets, real customer values and small cells before anything leaves."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
from pathspec import GitIgnoreSpec

from saferoom.check.cells import Batch, frame_cells
from saferoom.check.readers import Unreadable, read
from saferoom.check.scan import (
    Finding,
    TableChecks,
    birth_dates,
    detect,
    fingerprint_matches,
    prefilter,
    read_allowlist,
)
from saferoom.check.summary import Group, place, summarise
from saferoom.errors import UsageError

if TYPE_CHECKING:  # the policy and the keys are read only with --fingerprints: a check imports neither otherwise
    from saferoom.policy import Policy
    from saferoom.secrets import Secret

__all__ = ["Finding", "Group", "Report", "check", "fingerprint_key"]

ALLOW_FILE = ".saferoom-allow"
SKIP_DIRS = {".git", ".hg", ".svn", "__pycache__", ".venv", "node_modules", ".ipynb_checkpoints"}


EXAMPLES = 1000  # findings kept per file, place and kind; past it they are counted, not kept
SEEN = 100_000  # chunk findings remembered per file, to report a match two overlapping chunks share once


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    files: int = 0
    counts: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (file, place, kind) -> findings, kept or not

    @property
    def exit_code(self) -> int:
        return 2 if self.errors else 1 if self.counts else 0

    @property
    def omitted(self) -> int:
        """Findings counted but not kept: a column of a million SSNs keeps its first ``EXAMPLES``."""
        return sum(self.counts.values()) - len(self.findings)

    def add(self, found: list[Finding]) -> None:
        for finding in found:
            key = (finding.file, place(finding.location), finding.kind)
            seen = self.counts.get(key, 0)
            self.counts[key] = seen + 1
            if seen < EXAMPLES:
                self.findings.append(finding)

    def summary(self) -> list[Group]:
        """The findings grouped per file, column (or a text's lines) and kind: what a person reads first."""
        return summarise(self.findings, self.counts)

    def to_dict(self) -> dict[str, Any]:
        omitted = [{"file": f, "place": p, "kind": k, "findings": n, "kept": EXAMPLES}
                   for (f, p, k), n in self.counts.items() if n > EXAMPLES]
        return {"files": self.files, "findings": [f.to_dict() for f in self.findings], "omitted": omitted,
                "errors": [{"file": f, "problem": p} for f, p in self.errors]}


def files(paths: list[Path]) -> list[Path]:
    """The files a check of ``paths`` would read, for a progress bar."""
    found: list[Path] = []
    for path in paths:
        found += list(_walk(path)) if path.is_dir() else [path]
    return found


def check(target: Any, *, fingerprints: Path | None = None, key: Secret | None = None, policy: Policy | Path | None = None,
          min_cell: int = 10, allow: Path | None = None, progress: Callable[[str], None] | None = None) -> Report:
    """Check files, folders or a DataFrame (pandas or polars). See docs/check.md.

    ``fingerprints`` is a build's fingerprint index; ``key`` the key it was made with, or else ``policy``,
    whose token key the fingerprint key is derived from."""
    if fingerprints is not None:
        key = key if key is not None else fingerprint_key(policy)
    index = _index(fingerprints, key)
    allowed = read_allowlist(allow or Path(ALLOW_FILE))
    report = Report()
    for label, batches in _inputs(target, report):
        report.files += 1
        if progress:
            progress(label)
        tables: dict[str, tuple[TableChecks, Batch]] = {}  # a workbook's sheets are tables of their own
        seen = set[tuple[str, str]]()
        repeated: set[tuple[str, str, str]] = set()
        try:
            for batch in batches:
                checks = tables.setdefault(batch.part, (TableChecks(label, min_cell), batch))[0]
                found = _not_repeated(_batch(batch, label, checks, index, key), batch, repeated)
                report.add([f for f in _once(found, seen) if f.sha256 not in allowed])
        except Unreadable as exc:
            report.errors.append((label, str(exc)))
        for checks, first in tables.values():
            report.add([f for f in _relocated(checks.finish(), first) if f.sha256 not in allowed])
    return report


def _batch(batch: Batch, label: str, tables: TableChecks, index: list[object] | None, key: Secret | None) -> list[Finding]:
    """Every check over one batch; findings located as the batch's format names places.

    A table's values become cells only where a detector's pattern or a secret rule's keyword could match
    (one pass over each column), unless the fingerprint index, which compares every value, is in use."""
    cells = batch.cells if batch.cells is not None else frame_cells(pl.DataFrame(), label)
    found: list[Finding] = []
    if batch.table is not None:
        keep = None if index is not None else prefilter()
        cells = pl.concat([frame_cells(batch.table, label, batch.offset, keep), cells], how="vertical_relaxed")
        found += tables.add(batch.table, batch.offset)
    found += detect(cells, text=batch.text)
    if index is not None:
        found += fingerprint_matches(cells, key, index)  # type: ignore[arg-type]
    found += birth_dates(cells)
    return _relocated(found, batch)


def _relocated(found: list[Finding], batch: Batch) -> list[Finding]:
    relocate = batch.relocate
    return [replace(f, location=relocate(f.location)) for f in found] if relocate else found


def _not_repeated(found: list[Finding], batch: Batch, repeated: set[tuple[str, str, str]]) -> list[Finding]:
    """A large text's blocks overlap by a few lines: what the block before found there is not found again."""
    if batch.repeats is None:
        return found
    fresh, tail = batch.repeats
    kept = [f for f in found if _line_of(f) >= fresh or (f.location, f.kind, f.sha256) not in repeated]
    repeated.clear()
    repeated.update((f.location, f.kind, f.sha256) for f in found if _line_of(f) >= tail)
    return kept


def _line_of(finding: Finding) -> int:
    return int(finding.location.removeprefix("line ")) if finding.location.startswith("line ") else 0


def _once(found: list[Finding], seen: set[tuple[str, str]]) -> list[Finding]:
    """A match two overlapping chunks of a large text share is one finding (the chunks are read a few at a time)."""
    kept = []
    for finding in found:
        if finding.location.startswith("byte "):
            if (finding.kind, finding.sha256) in seen:
                continue
            if len(seen) < SEEN:
                seen.add((finding.kind, finding.sha256))
        kept.append(finding)
    return kept


def fingerprint_key(policy: Policy | Path | None) -> Secret | None:
    """The fingerprint key of the builds made under ``policy``: derived one way from its token key."""
    from saferoom import keyed
    from saferoom.policy import Policy, load_policy

    if policy is None:
        return None
    loaded = policy if isinstance(policy, Policy) else load_policy(policy)
    return keyed.fingerprint_key(loaded.token_key) if loaded.token_key is not None else None


def _index(path: Path | None, key: Secret | None) -> list[object] | None:
    if path is None:
        return None
    from saferoom.split.fingerprints import key_id
    from saferoom.split.fingerprints import read as read_index

    if key is None:
        raise UsageError("--fingerprints needs the fingerprint key: SAFEROOM_FINGERPRINT_KEY, or --policy with its token key")
    try:
        header, sections = read_index(path)
    except OSError as exc:
        raise UsageError(f"cannot read the fingerprint index {path}: {exc.strerror}") from None
    if header.get("key_id") != key_id(key):
        raise UsageError("the fingerprint key does not match the index (its key id differs)")
    return sections  # type: ignore[return-value]


def _inputs(target: Any, report: Report) -> Iterator[tuple[str, Iterator[Batch]]]:
    from saferoom.check.readers import as_text

    if isinstance(target, (str, os.PathLike)):
        yield from _paths([Path(target)], report)
    elif isinstance(target, list | tuple):
        yield from _paths([Path(t) for t in target], report)
    else:
        frame = as_text(target)
        yield "<dataframe>", iter([Batch(table=frame)])


def _paths(paths: list[Path], report: Report) -> Iterator[tuple[str, Iterator[Batch]]]:
    for path in paths:
        if not path.exists():
            broken = os.path.lexists(path)
            report.errors.append((str(path), "a symbolic link that leads nowhere" if broken else "does not exist"))
            continue
        for file in _walk(path) if path.is_dir() else [path]:
            yield str(file), read(file, str(file))


def _walk(root: Path) -> Iterator[Path]:
    """Files under ``root`` in a stable order, honouring every .gitignore on the way down."""
    specs: list[tuple[Path, GitIgnoreSpec]] = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        ignore = here / ".gitignore"
        if ignore.is_file():
            specs.append((here, GitIgnoreSpec.from_lines(ignore.read_text().splitlines())))
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not _ignored(here / d, specs, True))
        for name in sorted(files):
            if name not in (".gitignore", ALLOW_FILE) and not _ignored(here / name, specs, False):
                yield here / name


def _ignored(path: Path, specs: list[tuple[Path, GitIgnoreSpec]], is_dir: bool) -> bool:
    for base, spec in specs:
        try:
            relative = path.relative_to(base).as_posix()
        except ValueError:
            continue
        if spec.match_file(relative + ("/" if is_dir else "")):
            return True
    return False
