"""Known vulnerabilities from a local OSV export (the room has no internet to ask)."""

from __future__ import annotations

import json
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from saferoom.errors import UsageError


@dataclass(frozen=True)
class Advisory:
    id: str
    summary: str
    versions: frozenset[str]
    ranges: tuple[tuple[str | None, str | None], ...]  # (introduced, fixed) in ECOSYSTEM order

    def affects(self, version: str) -> bool:
        if version in self.versions:
            return True
        try:
            v = Version(version)
            return any(_within(v, start, end) for start, end in self.ranges)
        except InvalidVersion:
            return False


def _within(v: Version, introduced: str | None, fixed: str | None) -> bool:
    low = introduced in (None, "0") or v >= Version(introduced)  # type: ignore[arg-type]
    return low and (fixed is None or v < Version(fixed))


class Vulnerabilities:
    """Advisories by canonical package name."""

    def __init__(self, advisories: dict[str, list[Advisory]]) -> None:
        self._by_name = advisories

    @classmethod
    def load(cls, path: Path | None) -> Vulnerabilities:
        if path is None:
            return cls({})
        if not path.exists():
            raise UsageError(f"the vulnerability export {path} does not exist")
        advisories: dict[str, list[Advisory]] = defaultdict(list)
        for name, text in _documents(path):
            try:
                for package, advisory in _parse(json.loads(text.decode())):
                    advisories[package].append(advisory)
            except (ValueError, KeyError, TypeError, AttributeError, InvalidVersion) as exc:  # any shape but OSV's
                raise UsageError(f"the vulnerability export holds a file that is not valid OSV JSON: {name} ({exc})") from None
        return cls(dict(advisories))

    def affecting(self, name: str, version: str) -> list[Advisory]:
        return [a for a in self._by_name.get(canonicalize_name(name), []) if a.affects(version)]

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_name.values())


def _documents(path: Path) -> list[tuple[str, bytes]]:
    if path.is_dir():
        return [(p.name, p.read_bytes()) for p in sorted(path.rglob("*.json"))]
    try:
        with zipfile.ZipFile(path) as archive:
            return [(n, archive.read(n)) for n in archive.namelist() if n.endswith(".json")]
    except zipfile.BadZipFile:
        raise UsageError(f"{path.name} is neither a folder of OSV JSON files nor a zip of them") from None


def _parse(doc: dict[str, Any]) -> list[tuple[str, Advisory]]:
    found = []
    for affected in doc.get("affected", []):
        package = affected["package"]
        if package.get("ecosystem") != "PyPI":
            continue
        ranges = tuple(_range(r) for r in affected.get("ranges", []) if r.get("type") in ("ECOSYSTEM", "SEMVER"))
        for start, end in ranges:  # validate now, so a corrupt export fails at load time
            for bound in (start, end):
                if bound not in (None, "0"):
                    Version(bound)
        advisory = Advisory(doc["id"], doc.get("summary", ""), frozenset(affected.get("versions", [])), ranges)
        found.append((canonicalize_name(package["name"]), advisory))
    return found


def _range(spec: dict[str, Any]) -> tuple[str | None, str | None]:
    introduced = fixed = None
    for event in spec.get("events", []):
        introduced = event.get("introduced", introduced)
        fixed = event.get("fixed", fixed)
    return introduced, fixed
