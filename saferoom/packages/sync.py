"""`saferoom packages sync`: resolve, download, audit and publish a dated snapshot.

pip resolves the dependency closure for each target (Python version and
platform), wheels only — nothing runs at install time — and saferoom checks
every hash, audits every wheel (license, bundled licences, deny list, known
vulnerabilities) and resolves again without what it refused (see
:mod:`saferoom.packages.rounds`). The report says what was admitted, on what
evidence, and what was refused and why; a failed sync still leaves one.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

import saferoom
from saferoom.errors import PackagesError, SaferoomError, UsageError
from saferoom.files import try_lock
from saferoom.packages.advisories import IndexAdvisories, api_base
from saferoom.packages.audit import Auditor
from saferoom.packages.index import write_index
from saferoom.packages.osv import Vulnerabilities
from saferoom.packages.resolve import Progress, Target
from saferoom.packages.rounds import Audited, Rounds, State
from saferoom.packages.wheels import Wheel
from saferoom.policy import Policy
from saferoom.policy.model import Packages

INDEX_OPTED_OUT = "index_vulnerabilities: false in the policy: the local OSV feed alone was consulted"
LICENSE_TEXT_KEPT = 100_000  # of a refused wheel's License field, in the report, for the reviewer


@dataclass
class Report:
    snapshot: str | None
    created: str
    index_url: str
    targets: list[str]
    status: str = "published"  # or "failed"
    error: str | None = None
    provenance: dict[str, object] = field(default_factory=dict)
    admitted: list[dict[str, object]] = field(default_factory=list)
    fallbacks: list[dict[str, str]] = field(default_factory=list)
    refused_versions: list[dict[str, object]] = field(default_factory=list)
    refused_requirements: list[dict[str, str]] = field(default_factory=list)


def sync(policy: Policy, dest: Path, index_url: str | None = None, progress: Progress | None = None,
         requested: Sequence[str] = ()) -> Report:
    """``requested``: approved package requests (NAME or NAME==VERSION), resolved and audited as the policy's own."""
    spec = _spec(policy, requested)
    say = progress or (lambda _m: None)
    feed = policy.local_path(spec.vulnerabilities) if spec.vulnerabilities else None
    if feed is None or not feed.exists():
        Vulnerabilities.load(feed, allow_empty=spec.allow_empty_vulnerabilities)  # says what is wrong, before anything starts
    index = index_url or "https://pypi.org/simple"
    if spec.index_vulnerabilities:
        api_base(index)  # an index without a JSON API is said before anything starts
    targets = [Target(py, plat) for py in spec.python for plat in spec.platforms]
    dest.mkdir(parents=True, exist_ok=True)
    with (_alone(dest), tempfile.TemporaryDirectory(dir=dest, prefix=".sync-") as work, ThreadPoolExecutor(1) as loader,
          _index_advisories(spec, index) as asked):
        # the feed is read while pip resolves in its own process: thousands of advisories take seconds
        auditor = Auditor(spec, loader.submit(Vulnerabilities.load, feed, allow_empty=spec.allow_empty_vulnerabilities),
                          asked)
        previous = dest / "latest" / "files"
        rounds = Rounds(spec, auditor, index, Path(work), previous if previous.is_dir() else None, say)
        try:
            chosen = rounds.run(targets)
            _ = auditor.vulns  # a bad feed stops the sync even when nothing needed auditing
            report = _report(None, index, targets, chosen, rounds.state, _provenance(index, rounds, auditor))
            return _publish(dest, report, chosen, say)
        except SaferoomError as exc:
            report = _report(None, index, targets, {}, rounds.state, _provenance(index, rounds, auditor))
            _keep_failure(dest, report, exc)
            raise


def _provenance(index: str, rounds: Rounds, auditor: Auditor) -> dict[str, object]:
    try:
        feed = auditor.vulns.provenance
    except SaferoomError:
        feed = None
    asked = auditor.index.provenance() if auditor.index else {"source": None, "skipped": INDEX_OPTED_OUT}
    return {"index": index, "resolver": rounds.resolver, "saferoom": saferoom.__version__,
            "vulnerabilities": feed.as_dict() if feed else None, "index_vulnerabilities": asked}


@contextlib.contextmanager
def _index_advisories(spec: Packages, index: str) -> Iterator[IndexAdvisories | None]:
    if not spec.index_vulnerabilities:
        yield None
        return
    with IndexAdvisories(index) as asked:
        yield asked


@contextlib.contextmanager
def _alone(dest: Path) -> Iterator[None]:
    """One sync of a mirror at a time: two would race for the snapshot's name and for `latest`."""
    handle = try_lock(dest.with_name(f".{dest.name}.sync.lock"))  # beside the mirror, like a build's lock
    if handle is None:
        raise PackagesError(f"another `saferoom packages sync` of {dest} is running; wait for it")
    with handle:
        yield


def _spec(policy: Policy, requested: Sequence[str] = ()) -> Packages:
    if policy.model.packages is None:
        raise UsageError(f"{policy.path.name} has no `packages:` section; see docs/packages.md")
    spec = policy.model.packages
    extra = [r for r in dict.fromkeys(requested) if r not in spec.requirements]
    spec = spec.model_copy(update={"requirements": [*spec.requirements, *extra]})
    for text in spec.requirements + spec.deny:
        try:
            Requirement(text)
        except InvalidRequirement as exc:
            raise UsageError(f"`{text}` is not a valid requirement: {exc}") from None
    return spec


def _keep_failure(dest: Path, report: Report, exc: SaferoomError) -> None:
    """A failed sync leaves its report in DEST/failed/ (never in a snapshot); the error names it."""
    report.status, report.error = "failed", exc.message
    folder = dest / "failed"
    path = folder / f"{datetime.now(UTC).strftime('%Y-%m-%dT%H%M%SZ')}-{secrets.token_hex(2)}.json"
    part = path.with_suffix(".part")
    try:
        folder.mkdir(exist_ok=True)
        part.write_text(json.dumps(asdict(report), indent=1) + "\n")
        os.replace(part, path)
    except OSError:  # a full disk: the error itself is what matters
        part.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            folder.rmdir()
        return
    exc.message = f"{exc.message} (what was decided before it stopped: {path})"
    exc.args = (exc.message,)


def _publish(dest: Path, report: Report, chosen: dict[Target, list[Audited]], say: Progress) -> Report:
    stage = dest / f".snapshot-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        stage.mkdir()
        (stage / "files").mkdir()
        unique = {a.wheel.path.name: a.wheel for items in chosen.values() for a in items}
        for wheel in unique.values():
            _place(wheel.path, stage / "files" / wheel.path.name)
        write_index(stage, list(unique.values()))
        _locks(stage, chosen)
        report.snapshot = _snapshot_name(dest)
        (stage / "report.json").write_text(json.dumps(asdict(report), indent=1) + "\n")
        os.chmod(stage, 0o755)
        os.replace(stage, dest / report.snapshot)
    except BaseException as exc:
        shutil.rmtree(stage, ignore_errors=True)
        if isinstance(exc, OSError):
            raise PackagesError(f"the snapshot could not be written in {dest}: {exc.strerror}; free space and run again "
                                "(the previous snapshot is untouched)") from None
        raise
    _point_latest(dest, report.snapshot)
    say(f"snapshot {report.snapshot}: {len(report.admitted)} wheels admitted")
    return report


def _place(source: Path, target: Path) -> None:
    try:
        os.link(source, target)  # same file system: no second copy of a 40 MB wheel
    except OSError:
        shutil.copy2(source, target)


def _locks(stage: Path, chosen: dict[Target, list[Audited]]) -> None:
    locks = stage / "locks"
    locks.mkdir()
    for target, items in chosen.items():
        wheels = sorted((a.wheel for a in items), key=lambda w: w.project)
        lines = [f"{w.project}=={w.version} --hash=sha256:{w.sha256}" for w in wheels]
        (locks / f"{target.name}.txt").write_text("# saferoom packages lock\n" + "\n".join(lines) + "\n")


def _report(name: str | None, index: str, targets: list[Target], chosen: dict[Target, list[Audited]], state: State,
            provenance: dict[str, object]) -> Report:
    report = Report(name, datetime.now(UTC).isoformat(timespec="seconds"), index, [t.name for t in targets],
                    provenance=provenance)
    seen: dict[str, dict[str, object]] = {}
    for target, items in chosen.items():
        for a in items:
            entry = seen.setdefault(a.wheel.path.name, _entry(a.wheel, a))
            entry["targets"].append(target.name)  # type: ignore[attr-defined]
    report.admitted = sorted(seen.values(), key=lambda e: (str(e["project"]), str(e["file"])))
    report.fallbacks = state.fallbacks
    report.refused_versions = [_refused(a, why) for _, (a, why) in sorted(state.refused_versions.items())]
    report.refused_requirements = [{"requirement": r, "reason": why} for r, why in state.refused_requirements.items()]
    return report


def _entry(wheel: Wheel, audited: Audited) -> dict[str, object]:
    return {"project": wheel.project, "version": wheel.version, "file": wheel.path.name, "sha256": wheel.sha256,
            "license": audited.verdict.decision.as_dict(), "targets": []}


def _refused(audited: Audited, why: str) -> dict[str, object]:
    wheel, verdict = audited.wheel, audited.verdict
    return {"project": wheel.project, "version": wheel.version, "file": wheel.path.name, "reason": why,
            "kind": verdict.kind or "", "advisories": [a.as_dict() for a in verdict.advisories],
            "license": verdict.decision.as_dict(),
            "license_field": (wheel.facts.license or "")[:LICENSE_TEXT_KEPT]}


def _snapshot_name(dest: Path) -> str:
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    name, n = today, 1
    while (dest / name).exists():
        n += 1
        name = f"{today}.{n}"
    return name


def _point_latest(dest: Path, name: str) -> None:
    link = dest / f".latest-{os.getpid()}"
    link.unlink(missing_ok=True)
    link.symlink_to(name)
    os.replace(link, dest / "latest")  # atomic: `latest` is always a whole snapshot
