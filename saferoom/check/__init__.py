"""`saferoom check`: the airlock. Finds PII, secrets, real customer values and small cells before anything leaves."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import polars as pl
from pathspec import GitIgnoreSpec

from saferoom import keyed
from saferoom.check.readers import Unreadable, frame_cells, read
from saferoom.check.scan import Finding, birth_dates, detect, disclosure, fingerprint_matches, read_allowlist
from saferoom.check.summary import Group, summarise
from saferoom.errors import UsageError
from saferoom.policy import Policy, load_policy
from saferoom.secrets import Secret

__all__ = ["Finding", "Group", "Report", "check", "fingerprint_key"]

ALLOW_FILE = ".saferoom-allow"
SKIP_DIRS = {".git", ".hg", ".svn", "__pycache__", ".venv", "node_modules", ".ipynb_checkpoints"}


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    files: int = 0

    @property
    def exit_code(self) -> int:
        return 2 if self.errors else 1 if self.findings else 0

    def summary(self) -> list[Group]:
        """The findings grouped per file, column (or a text's lines) and kind: what a person reads first."""
        return summarise(self.findings)

    def to_dict(self) -> dict[str, Any]:
        return {"files": self.files, "findings": [f.to_dict() for f in self.findings],
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
    for label, loaded in _inputs(target, report):
        report.files += 1
        if progress:
            progress(label)
        cells = pl.concat(loaded.cells, how="vertical_relaxed") if loaded.cells else None
        found = detect(cells, text=loaded.text) if cells is not None else []
        if index is not None and cells is not None:
            found += fingerprint_matches(cells, key, index)  # type: ignore[arg-type]
        found += disclosure(loaded.tables, min_cell) + birth_dates(cells, loaded.tables)
        if label.lower().endswith(".ipynb"):
            found = [_in_notebook(f) for f in found]
        report.findings += [f for f in found if f.sha256 not in allowed]
    return report


def _in_notebook(finding: Finding) -> Finding:
    """A notebook is read as rows of cell parts; its findings say so as a notebook reader would: cell 3, source."""
    found = re.fullmatch(r"row (\d+), column (.+)", finding.location)
    return replace(finding, location=f"cell {found.group(1)}, {found.group(2)}") if found else finding


def fingerprint_key(policy: Policy | Path | None) -> Secret | None:
    """The fingerprint key of the builds made under ``policy``: derived one way from its token key."""
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


def _inputs(target: Any, report: Report) -> Iterator[tuple[str, Any]]:
    from saferoom.check.readers import Read, as_text

    if isinstance(target, (str, os.PathLike)):
        yield from _paths([Path(target)], report)
    elif isinstance(target, list | tuple):
        yield from _paths([Path(t) for t in target], report)
    else:
        frame = as_text(target)
        yield "<dataframe>", Read([frame_cells(frame, "<dataframe>")], [("<dataframe>", frame)])


def _paths(paths: list[Path], report: Report) -> Iterator[tuple[str, Any]]:
    for path in paths:
        if not path.exists():
            broken = os.path.lexists(path)
            report.errors.append((str(path), "a symbolic link that leads nowhere" if broken else "does not exist"))
            continue
        for file in _walk(path) if path.is_dir() else [path]:
            try:
                yield str(file), read(file, str(file))
            except Unreadable as exc:
                report.errors.append((str(file), str(exc)))


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
