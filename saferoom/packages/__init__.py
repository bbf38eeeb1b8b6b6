"""Offline, curated Python packages: a pinned, audited index for rooms without internet."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from saferoom.errors import UsageError
from saferoom.packages.osv import Vulnerabilities
from saferoom.packages.sync import Report, sync

__all__ = ["Finding", "Report", "check", "sync", "vulnerability_export"]


@dataclass(frozen=True)
class Finding:
    project: str
    version: str
    file: str
    advisories: tuple[str, ...]


def vulnerability_export(vulnerabilities: Path | None, policy: Path) -> tuple[Path | None, bool]:
    """The vulnerability export to check against, and whether it may hold no advisory: the one given,
    else the one the policy's ``packages:`` names (a missing policy file names none)."""
    if vulnerabilities is not None:
        return vulnerabilities, False
    from saferoom.policy import load_policy

    loaded = load_policy(policy) if policy.exists() else None
    spec = loaded.model.packages if loaded else None
    if loaded is None or spec is None or (spec.vulnerabilities is None and not spec.allow_empty_vulnerabilities):
        raise UsageError(f"no vulnerability export to check against: give --vulnerabilities PATH, or a --policy "
                         f"whose `packages: vulnerabilities:` names one ({policy} has none)")
    return (loaded.base / spec.vulnerabilities if spec.vulnerabilities else None), spec.allow_empty_vulnerabilities


def check(snapshot: Path, vulnerabilities: Path | None, *, allow_empty: bool = False) -> tuple[list[Finding], Vulnerabilities]:
    """Audit a snapshot again against a (newer) vulnerability export, without downloading anything."""
    folder = snapshot / "latest" if (snapshot / "latest").exists() else snapshot
    try:
        report = json.loads((folder / "report.json").read_text())
    except (OSError, ValueError):
        raise UsageError(f"{snapshot} is not a saferoom package snapshot (no report.json); give the folder that "
                         "`packages sync --dest` wrote, or one of its dated snapshots") from None
    vulns = Vulnerabilities.load(vulnerabilities, allow_empty=allow_empty)
    findings = []
    for entry in report["admitted"]:
        advisories = vulns.affecting(entry["project"], entry["version"])
        if advisories:
            findings.append(Finding(entry["project"], entry["version"], entry["file"], tuple(a.id for a in advisories)))
    return findings, vulns
