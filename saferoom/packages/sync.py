"""`saferoom packages sync`: resolve, download, audit and publish a dated snapshot.

pip resolves the dependency closure for each target (Python version and
platform), downloading wheels only — nothing runs at install time — and
checking the index's hashes. saferoom then audits every wheel (license, deny
list, known vulnerabilities) and, when one fails, forbids that exact version
and resolves again, so an allowed, clean version is chosen where one exists
and the requirement is refused, with the reason, where none does.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from saferoom.errors import PackagesError, UsageError
from saferoom.files import try_lock
from saferoom.packages import wheels as wheel_info
from saferoom.packages.index import write_index
from saferoom.packages.osv import Vulnerabilities
from saferoom.packages.wheels import Wheel
from saferoom.policy import Policy
from saferoom.policy.model import Packages

MAX_ROUNDS = 25
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Target:
    python: str
    platform: str

    @property
    def name(self) -> str:
        return f"py{self.python}-{self.platform}"


@dataclass
class Report:
    snapshot: str
    created: str
    index_url: str
    targets: list[str]
    admitted: list[dict[str, object]] = field(default_factory=list)
    refused_versions: list[dict[str, str]] = field(default_factory=list)
    refused_requirements: list[dict[str, str]] = field(default_factory=list)


def sync(policy: Policy, dest: Path, index_url: str | None = None, progress: Progress | None = None) -> Report:
    spec = _spec(policy)
    say = progress or (lambda _m: None)
    vulns = Vulnerabilities.load(_path(policy, spec.vulnerabilities) if spec.vulnerabilities else None)
    index = index_url or "https://pypi.org/simple"
    targets = [Target(py, plat) for py in spec.python for plat in spec.platforms]
    dest.mkdir(parents=True, exist_ok=True)
    with _alone(dest), tempfile.TemporaryDirectory(dir=dest, prefix=".sync-") as work:
        resolver = Resolver(spec, vulns, index, Path(work), say)
        chosen = resolver.run(targets)
        return _publish(dest, index, targets, chosen, resolver, say)


@contextlib.contextmanager
def _alone(dest: Path) -> Iterator[None]:
    """One sync of a mirror at a time: two would race for the snapshot's name and for `latest`."""
    handle = try_lock(dest.with_name(f".{dest.name}.sync.lock"))  # beside the mirror, like a build's lock
    if handle is None:
        raise PackagesError(f"another `saferoom packages sync` of {dest} is running; wait for it")
    with handle:
        yield


def _spec(policy: Policy) -> Packages:
    if policy.model.packages is None:
        raise UsageError(f"{policy.path.name} has no `packages:` section; see docs/packages.md")
    for text in policy.model.packages.requirements + policy.model.packages.deny:
        try:
            Requirement(text)
        except InvalidRequirement as exc:
            raise UsageError(f"`{text}` is not a valid requirement: {exc}") from None
    return policy.model.packages


def _path(policy: Policy, path: str) -> Path:
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else policy.base / candidate


class Resolver:
    def __init__(self, spec: Packages, vulns: Vulnerabilities, index: str, work: Path, say: Progress) -> None:
        self.spec, self.vulns, self.index, self.work, self.say = spec, vulns, index, work, say
        self.deny = [Requirement(d) for d in spec.deny]
        self.active = list(spec.requirements)
        self.excluded: dict[tuple[str, str], str] = {}  # (project, version) -> why
        self.refused: dict[str, str] = {}
        self.round = 0

    def run(self, targets: list[Target]) -> dict[Target, list[Wheel]]:
        while self.round < MAX_ROUNDS:
            self.round += 1
            chosen = {t: self._resolve(t) for t in targets}
            if all(v is not None for v in chosen.values()):
                bad = [(w, why) for ws in chosen.values() for w in ws or [] if (why := self._problem(w))]
                if not bad:
                    return {t: ws or [] for t, ws in chosen.items()}
                for wheel, why in bad:
                    if (wheel.project, wheel.version) not in self.excluded:
                        self.say(f"refused {wheel.name} {wheel.version}: {why}")
                    self.excluded[(wheel.project, wheel.version)] = why
        raise PackagesError(f"no stable resolution after {MAX_ROUNDS} rounds; narrow the requirements")

    def _resolve(self, target: Target) -> list[Wheel] | None:
        if not self.active:
            return []
        folder = self.work / f"round{self.round}" / target.name
        ok, output = self._pip(target, folder, self.active)
        if ok:
            return [wheel_info.read(p) for p in sorted(folder.glob("*.whl"))]
        self._find_culprits(target, output)
        return None

    def _find_culprits(self, target: Target, output: str) -> None:
        """The joint resolution failed: try each requirement alone and refuse those that cannot resolve."""
        for requirement in list(self.active):
            ok, alone = self._pip(target, self._folder(target, requirement), [requirement])
            if ok:
                continue
            if not self._pip(target, self._folder(target, requirement, "open"), [requirement], constrained=False)[0]:
                raise PackagesError(f"`{requirement}` cannot be resolved for {target.name} from {self.index}: {_last_error(alone)}")
            self.active.remove(requirement)
            self.refused[requirement] = self._why(requirement, alone)
            self.say(f"refused requirement {requirement}: {self.refused[requirement]}")
        if not self.refused and self.active:
            raise PackagesError(f"the requirements conflict for {target.name}: {_last_error(output)}")

    def _folder(self, target: Target, requirement: str, kind: str = "alone") -> Path:
        return self.work / f"round{self.round}" / f"{target.name}-{kind}-{canonicalize_name(Requirement(requirement).name)}"

    def _why(self, requirement: str, output: str) -> str:
        """Why nothing allowed satisfies a requirement: the refused versions of it (or of what it needs)."""
        project = canonicalize_name(Requirement(requirement).name)
        own = [f"{v}: {why}" for (p, v), why in sorted(self.excluded.items()) if p == project]
        if own:
            return f"no allowed version of {project} ({'; '.join(own)})"
        others = [f"{p} {v}: {why}" for (p, v), why in sorted(self.excluded.items())]
        return f"its dependencies have no allowed version ({'; '.join(others)})" if others else _last_error(output)

    def _pip(self, target: Target, folder: Path, requirements: list[str], constrained: bool = True) -> tuple[bool, str]:
        folder.mkdir(parents=True)
        constraints = folder / "constraints.txt"
        constraints.write_text("".join(f"{p}!={v}\n" for p, v in sorted(self.excluded)) if constrained else "")
        command = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--disable-pip-version-check",
                   "--no-input", "--progress-bar", "off", "--python-version", target.python, "--platform", target.platform,
                   "--index-url", self.index, "--cache-dir", str(self.work / "cache"), "--dest", str(folder),
                   "--constraint", str(constraints), *requirements]
        env = {**os.environ, "PIP_CONFIG_FILE": os.devnull}
        env = {k: v for k, v in env.items() if not k.startswith("PIP_") or k == "PIP_CONFIG_FILE"}
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        output = done.stdout + done.stderr
        if "DO NOT MATCH THE HASHES" in output.upper():
            raise PackagesError(f"a wheel from {self.index} does not match its published hash (tampered or corrupt); nothing was admitted")
        if done.returncode != 0 and _DISK_FULL.search(output):
            raise PackagesError(f"pip could not write its downloads in {self.work}: the disk is full or a file-size limit "
                                "was reached; free space and run again (the previous snapshot is untouched)")
        if done.returncode != 0 and _unreachable(output):
            raise PackagesError(f"the upstream index {self.index} could not be read: {_last_error(output)}")
        return done.returncode == 0, output

    def _problem(self, wheel: Wheel) -> str | None:
        if not wheel_info.allowed(wheel, self.spec.licenses):
            return f"license {wheel.license_text!r} is not in the allowed list"
        for denied in self.deny:
            if canonicalize_name(denied.name) == wheel.project and denied.specifier.contains(wheel.version, prereleases=True):
                return f"denied by `{denied}`"
        advisories = self.vulns.affecting(wheel.name, wheel.version)
        if advisories:
            return "known vulnerabilities: " + ", ".join(a.id for a in advisories)
        return None


_DISK_FULL = re.compile(r"errno 2[78]\b|oserror\(2[78],|no space left on device|file too large", re.IGNORECASE)


def _unreachable(output: str) -> bool:
    signs = ("connection refused", "connectionerror", "max retries exceeded", "remote end closed", "incompleteread",
             "connection broken", "could not fetch url", "read timed out")
    return any(s in output.lower() for s in signs)


def _last_error(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip().startswith("ERROR")]
    return (lines[-1] if lines else output.strip().splitlines()[-1] if output.strip() else "pip failed").removeprefix("ERROR: ")


def _publish(dest: Path, index: str, targets: list[Target], chosen: dict[Target, list[Wheel]], resolver: Resolver,
             say: Progress) -> Report:
    stage = dest / f".snapshot-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        stage.mkdir()
        files = stage / "files"
        files.mkdir()
        unique: dict[str, Wheel] = {}
        for wheels in chosen.values():
            for wheel in wheels:
                if wheel.path.name not in unique:
                    shutil.copy2(wheel.path, files / wheel.path.name)
                    unique[wheel.path.name] = wheel_info.read(files / wheel.path.name)
        write_index(stage, list(unique.values()))
        _locks(stage, chosen)
        name = _snapshot_name(dest)
        report = _report(name, index, targets, chosen, resolver)
        (stage / "report.json").write_text(json.dumps(asdict(report), indent=1) + "\n")
        os.chmod(stage, 0o755)
        os.replace(stage, dest / name)
    except BaseException as exc:
        shutil.rmtree(stage, ignore_errors=True)
        if isinstance(exc, OSError):
            raise PackagesError(f"the snapshot could not be written in {dest}: {exc.strerror}; free space and run again "
                                "(the previous snapshot is untouched)") from None
        raise
    _point_latest(dest, name)
    say(f"snapshot {name}: {len(report.admitted)} wheels admitted")
    return report


def _locks(stage: Path, chosen: dict[Target, list[Wheel]]) -> None:
    locks = stage / "locks"
    locks.mkdir()
    for target, wheels in chosen.items():
        lines = [f"{w.project}=={w.version} --hash=sha256:{w.sha256}" for w in sorted(wheels, key=lambda w: w.project)]
        (locks / f"{target.name}.txt").write_text("# saferoom packages lock\n" + "\n".join(lines) + "\n")


def _report(name: str, index: str, targets: list[Target], chosen: dict[Target, list[Wheel]], resolver: Resolver) -> Report:
    report = Report(name, datetime.now(UTC).isoformat(timespec="seconds"), index, [t.name for t in targets])
    seen: dict[str, dict[str, object]] = {}
    for target, wheels in chosen.items():
        for w in wheels:
            entry = seen.setdefault(w.path.name, {"project": w.project, "version": w.version, "file": w.path.name,
                                                  "sha256": w.sha256, "license": w.license_text, "targets": []})
            entry["targets"].append(target.name)  # type: ignore[union-attr]
    report.admitted = sorted(seen.values(), key=lambda e: (str(e["project"]), str(e["file"])))
    report.refused_versions = [{"project": p, "version": v, "reason": why} for (p, v), why in sorted(resolver.excluded.items())]
    report.refused_requirements = [{"requirement": r, "reason": why} for r, why in resolver.refused.items()]
    return report


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
