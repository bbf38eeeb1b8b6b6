"""Known vulnerabilities from a local OSV export (the room has no internet to ask).

Ranges are evaluated as the OSV schema's own pseudocode says: every range of an
advisory counts, its events are sorted in PEP 440 order, ``introduced`` opens an
interval, ``fixed`` closes it before the fix, ``last_affected`` after the named
version, and ``limit`` events bound the whole range from above.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from saferoom.errors import UsageError

KINDS = ("introduced", "fixed", "last_affected", "limit")


@dataclass(frozen=True)
class Event:
    kind: str  # one of KINDS
    version: str

    @property
    def key(self) -> Version | None:
        """PEP 440 order; None sorts first (introduced "0") and, for a limit, means infinity ("*")."""
        return None if self.version in ("0", "*") else Version(self.version)


@dataclass(frozen=True)
class Range:
    events: tuple[Event, ...]

    def contains(self, v: Version) -> bool:
        if not self._before_limits(v):
            return False
        vulnerable = False
        for event in sorted((e for e in self.events if e.kind != "limit"), key=_order):
            at = event.key
            if event.kind == "introduced" and (at is None or v >= at):
                vulnerable = True
            elif event.kind == "fixed" and at is not None and v >= at:
                vulnerable = False
            elif event.kind == "last_affected" and at is not None and v > at:
                vulnerable = False
        return vulnerable

    def _before_limits(self, v: Version) -> bool:
        limits = [e.key for e in self.events if e.kind == "limit"]
        return not limits or any(limit is None or v < limit for limit in limits)


def _order(event: Event) -> tuple[int, Version]:
    at = event.key
    return (0, Version("0")) if at is None else (1, at)


@dataclass(frozen=True)
class Advisory:
    id: str
    summary: str
    versions: frozenset[str]
    ranges: tuple[Range, ...]
    unordered: int = 0  # ranges left out: a bound that is not a PEP 440 version cannot be ordered

    def affects(self, version: str) -> bool:
        if version in self.versions:
            return True
        try:
            v = Version(version)
        except InvalidVersion:
            return False
        return any(r.contains(v) for r in self.ranges) or _normalised_in(v, self.versions)

    @property
    def fixed_in(self) -> tuple[str, ...]:
        """The versions its ranges name as fixed, in PEP 440 order."""
        fixed = {e.version for r in self.ranges for e in r.events if e.kind == "fixed"}
        return tuple(sorted(fixed, key=Version))


def _normalised_in(v: Version, versions: frozenset[str]) -> bool:
    for listed in versions:
        try:
            if Version(listed) == v:
                return True
        except InvalidVersion:
            continue
    return False


@dataclass(frozen=True)
class Provenance:
    """Where the advisories came from, for the report: a sync is only as current as its feed."""

    source: str
    sha256: str
    files: int
    advisories: int
    newest_modified: str | None
    unordered: tuple[str, ...] = ()  # advisories with a range whose bounds are not PEP 440 versions

    def as_dict(self) -> dict[str, object]:
        return {"source": self.source, "sha256": self.sha256, "files": self.files, "advisories": self.advisories,
                "newest_modified": self.newest_modified, "ranges_not_pep440": list(self.unordered)}


class Vulnerabilities:
    """Advisories by canonical package name."""

    def __init__(self, advisories: dict[str, list[Advisory]], provenance: Provenance | None = None) -> None:
        self._by_name = advisories
        self.provenance = provenance

    @classmethod
    def load(cls, path: Path | None, *, allow_empty: bool = False) -> Vulnerabilities:
        """Read an export; a missing, unreadable or empty one is an error unless ``allow_empty``."""
        if path is None:
            if allow_empty:
                return cls({})
            raise UsageError("no vulnerability feed is set: point `packages: vulnerabilities:` at an OSV export "
                             "(a folder of OSV JSON files, or its zip), or set `allow_empty_vulnerabilities: true`")
        if not path.exists():
            raise UsageError(f"the vulnerability export {path} does not exist; download the PyPI OSV export and point to it")
        documents = _documents(path)
        advisories, modified = _read_all(documents)
        loaded = cls(dict(advisories), _provenance(path, documents, advisories, modified))
        if not len(loaded) and not allow_empty:
            raise UsageError(f"the vulnerability export {path} holds no PyPI advisory ({len(documents)} JSON files read); "
                             "point to the PyPI OSV export, or set `allow_empty_vulnerabilities: true` to sync without one")
        return loaded

    def affecting(self, name: str, version: str) -> list[Advisory]:
        return [a for a in self._by_name.get(canonicalize_name(name), []) if a.affects(version)]

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_name.values())


def _read_all(documents: list[tuple[str, bytes]]) -> tuple[dict[str, list[Advisory]], list[str]]:
    advisories: dict[str, list[Advisory]] = defaultdict(list)
    modified: list[str] = []
    for name, text in documents:
        try:
            doc = json.loads(text.decode())
            for package, advisory in _parse(doc):
                advisories[package].append(advisory)
            if isinstance(doc.get("modified"), str):
                modified.append(doc["modified"])
        except (ValueError, KeyError, TypeError, AttributeError, InvalidVersion) as exc:  # any shape but OSV's
            raise UsageError(f"the vulnerability export holds a file that is not valid OSV JSON: {name} ({exc})") from None
    return advisories, modified


def _provenance(path: Path, documents: list[tuple[str, bytes]], advisories: dict[str, list[Advisory]],
                modified: list[str]) -> Provenance:
    digest = hashlib.sha256()
    for name, text in documents:
        digest.update(name.encode() + b"\0" + hashlib.sha256(text).digest())
    count = sum(len(v) for v in advisories.values())
    unordered = tuple(sorted({a.id for v in advisories.values() for a in v if a.unordered}))
    return Provenance(str(path.resolve()), digest.hexdigest(), len(documents), count, max(modified, default=None), unordered)


def _documents(path: Path) -> list[tuple[str, bytes]]:
    try:
        if path.is_dir():
            return [(p.name, p.read_bytes()) for p in sorted(path.rglob("*.json"))]
        with zipfile.ZipFile(path) as archive:
            return [(n, archive.read(n)) for n in sorted(archive.namelist()) if n.endswith(".json")]
    except zipfile.BadZipFile:
        raise UsageError(f"{path.name} is neither a folder of OSV JSON files nor a zip of them") from None
    except OSError as exc:
        raise UsageError(f"the vulnerability export {path} cannot be read: {exc.strerror}") from None


def _parse(doc: dict[str, Any]) -> list[tuple[str, Advisory]]:
    found: list[tuple[str, Advisory]] = []
    withdrawn = bool(doc.get("withdrawn"))
    for affected in doc.get("affected", []):
        package = affected["package"]
        if package.get("ecosystem") != "PyPI" or withdrawn:
            continue
        read = [_range(r) for r in affected.get("ranges", []) if r["type"] in ("ECOSYSTEM", "SEMVER")]
        versions = affected.get("versions", [])
        if not all(isinstance(v, str) for v in versions):
            raise TypeError("versions must be strings")
        ranges = tuple(r for r in read if r is not None)
        advisory = Advisory(str(doc["id"]), str(doc.get("summary", "")), frozenset(versions), ranges, len(read) - len(ranges))
        found.append((canonicalize_name(package["name"]), advisory))
    return found


def _range(spec: dict[str, Any]) -> Range | None:
    """A range, or None when one of its versions is not PEP 440 (e.g. a date): it cannot be ordered."""
    events = []
    for event in spec["events"]:
        kinds = [k for k in KINDS if k in event]
        if len(kinds) != 1 or not isinstance(event[kinds[0]], str):
            raise ValueError(f"an event must have exactly one of {', '.join(KINDS)}, as a string: {event!r}")
        events.append(Event(kinds[0], event[kinds[0]]))
    try:
        for made in events:
            _ = made.key
    except InvalidVersion:
        return None
    return Range(tuple(events))
