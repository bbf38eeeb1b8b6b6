"""Rounds of resolution: resolve once per target, audit what is new, refuse, and resolve again until clean.

A refused version is never silently replaced by an older one. Without
``fallback: previous-clean`` its project is refused, and so is every top-level
requirement that needs it; the rest resolve again without them. With it, the
refused version is excluded and the resolver may choose an older one, which
is admitted only if it passes and is no older than ``fallback_max_age_days``;
the report says what was chosen instead of what, and why. A ``deny`` entry is
the policy's own word, so a denied version is always excluded and replaced.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from saferoom.errors import PackagesError
from saferoom.packages import wheels as wheel_info
from saferoom.packages.audit import Auditor, Verdict
from saferoom.packages.resolve import Pin, Progress, Target, Unresolvable, closure, download, last_error, resolve
from saferoom.packages.uploads import uploaded
from saferoom.packages.wheels import Wheel
from saferoom.policy.model import Packages

FALLBACK_TRIES = 5  # older versions tried per project before it is refused


@dataclass
class Audited:
    pin: Pin
    wheel: Wheel
    verdict: Verdict


@dataclass
class State:
    """Everything decided so far; the report is made from it, whether the sync ends well or not."""

    active: list[str]
    refused_requirements: dict[str, str] = field(default_factory=dict)
    refused_versions: dict[tuple[str, str], tuple[Audited, str]] = field(default_factory=dict)  # and why
    excluded: dict[tuple[str, str], str] = field(default_factory=dict)  # (project, version) -> why
    banned: dict[str, str] = field(default_factory=dict)  # project -> why it may not be admitted at all
    fallbacks: list[dict[str, str]] = field(default_factory=list)
    round: int = 0


class Rounds:
    def __init__(self, spec: Packages, auditor: Auditor, index: str, work: Path, previous: Path | None, say: Progress) -> None:
        self.spec, self.auditor, self.index, self.work, self.previous, self.say = spec, auditor, index, work, previous, say
        self.state = State(list(spec.requirements))
        self.audited: dict[str, Audited] = {}  # by file name
        self.tries: dict[str, int] = defaultdict(int)
        self.max_rounds = 2 * len(spec.requirements) + FALLBACK_TRIES + 2
        self.resolver = "pip (did not run)"

    def run(self, targets: list[Target]) -> dict[Target, list[Audited]]:
        while self.state.round < self.max_rounds:
            self.state.round += 1
            chosen = self._resolve_all(targets)
            if chosen is None:
                continue
            audited = self._audit(chosen)
            if self._settle(audited):
                return audited
        raise PackagesError(f"no stable resolution after {self.max_rounds} rounds; narrow the requirements")

    def _resolve_all(self, targets: list[Target]) -> dict[Target, list[Pin]] | None:
        chosen: dict[Target, list[Pin]] = {}
        for target in targets:
            if not self.state.active:
                chosen[target] = []
                continue
            self.say(f"round {self.state.round}: resolving {len(self.state.active)} requirements for {target.name}")
            try:
                chosen[target] = self._resolve(target, self.state.active, self._constraints())
            except Unresolvable as exc:
                self._unresolvable(target, exc)
                return None
        return chosen

    def _resolve(self, target: Target, requirements: list[str], constraints: list[str], tag: str = "") -> list[Pin]:
        pins, self.resolver = resolve(target, requirements, constraints, self.index,
                                      self.work / f"round{self.state.round}" / f"{target.name}{tag}")
        return pins

    def _constraints(self) -> list[str]:
        return [f"{project}!={version}" for project, version in sorted(self.state.excluded)]

    def _audit(self, chosen: dict[Target, list[Pin]]) -> dict[Target, list[Audited]]:
        unique = {p.filename: p for pins in chosen.values() for p in pins}
        new = [p for name, p in unique.items() if name not in self.audited]
        self._ask_index(new)
        self.say(f"round {self.state.round}: {len(unique)} wheels chosen, {len(new)} new; downloading")
        for n, (pin, path) in enumerate(download(new, self.work / "wheels", self.previous), 1):
            self.say(f"round {self.state.round}: downloaded and auditing {n}/{len(new)}: {pin.project} {pin.version}")
            wheel = wheel_info.read(path, pin.sha256)  # the hash was checked on arrival
            self.audited[pin.filename] = Audited(pin, wheel, self.auditor.verdict(wheel))
        return {t: [self.audited[p.filename] for p in pins] for t, pins in chosen.items()}

    def _ask_index(self, pins: list[Pin]) -> None:
        """Ask the index for the new releases' advisories while their wheels download."""
        index = self.auditor.index
        asked = index.ask((p.project, p.version) for p in pins) if index else 0
        if index and asked:
            self.say(f"round {self.state.round}: asking {index.api} for the known vulnerabilities of {asked} releases")

    def _settle(self, audited: dict[Target, list[Audited]]) -> bool:
        """Refuse what failed; True when nothing did and the choice stands."""
        every = {a.pin.filename: a for items in audited.values() for a in items}.values()
        failed = [a for a in every if a.verdict.refusal or a.pin.project in self.state.banned]
        failed += [a for a in every if a not in failed and self._too_old(a)]
        for item in failed:
            self._refuse(item, audited)
        if failed:
            return False
        self._record_fallbacks(every)
        return True

    def _refuse(self, item: Audited, audited: dict[Target, list[Audited]]) -> None:
        project, version = item.pin.project, item.pin.version
        why = self.state.banned.get(project) or item.verdict.refusal or ""
        if (project, version) not in self.state.refused_versions:
            self.state.refused_versions[(project, version)] = (item, why)
            self.say(f"refused {project} {version}: {why}")
        if item.verdict.kind == "deny" or (self.spec.fallback == "previous-clean" and project not in self.state.banned
                                           and self.tries[project] < FALLBACK_TRIES):
            self.tries[project] += 1
            self.state.excluded[(project, version)] = why
            return
        self.state.banned.setdefault(project, why)
        self._drop_requirements(project, version, why, audited)

    def _drop_requirements(self, project: str, version: str, why: str, audited: dict[Target, list[Audited]]) -> None:
        for markers in (True, False):  # if no requirement needs it by its markers, any that may need it goes
            needing = [r for r in self.state.active
                       if any(project in closure(r, [a.pin for a in items], markers) for items in audited.values())]
            if needing:
                break
        for requirement in needing:
            self.state.active.remove(requirement)
            self.state.refused_requirements[requirement] = f"needs {project} {version}, which is refused: {why}"
            self.say(f"requirement refused: {requirement} (needs {project} {version})")

    def _too_old(self, item: Audited) -> bool:
        """A fallback (an older version chosen after a refusal) must be recent enough; deny replacements need not be."""
        project = item.pin.project
        refused = [(v, why) for (p, v), why in self.state.excluded.items() if p == project]
        if not refused or all(why.startswith("denied by") for _, why in refused):
            return False
        when = uploaded(self.index, project, item.pin.filename)
        limit = datetime.now(UTC) - timedelta(days=self.spec.fallback_max_age_days)
        if when is not None and when >= limit:
            return False
        age = "its upload time is unknown" if when is None else f"it was uploaded {when.date()}"
        self.state.banned[project] = (f"no fallback: {project} {item.pin.version} would replace {refused[0][0]} "
                                      f"({refused[0][1]}), but {age}, past fallback_max_age_days "
                                      f"({self.spec.fallback_max_age_days})")
        return True

    def _record_fallbacks(self, every: object) -> None:
        for item in every:  # type: ignore[attr-defined]
            refused = [(v, why) for (p, v), why in self.state.excluded.items() if p == item.pin.project]
            for version, why in refused:
                self.state.fallbacks.append({"project": item.pin.project, "refused": version, "reason": why,
                                             "chosen": item.pin.version})

    def _unresolvable(self, target: Target, exc: Unresolvable) -> None:
        """The joint resolution failed: find the requirements that cannot resolve alone, and refuse them."""
        culprits = []
        for requirement in list(self.state.active):
            try:
                self._resolve(target, [requirement], self._constraints(), f"-alone-{_key(requirement)}")
            except Unresolvable as failure:
                culprits.append((requirement, failure))
        if not culprits:
            raise PackagesError(f"the requirements conflict for {target.name}: {last_error(exc.output)}")
        for requirement, failed in culprits:
            try:
                self._resolve(target, [requirement], [], f"-open-{_key(requirement)}")
            except Unresolvable:
                raise PackagesError(f"`{requirement}` cannot be resolved for {target.name} from {self.index}: "
                                    f"{last_error(failed.output)}") from None
            self.state.active.remove(requirement)
            self.state.refused_requirements[requirement] = self._why(requirement)
            self.say(f"requirement refused: {requirement}: {self.state.refused_requirements[requirement]}")

    def _why(self, requirement: str) -> str:
        project = canonicalize_name(Requirement(requirement).name)
        own = [f"{v}: {why}" for (p, v), why in sorted(self.state.excluded.items()) if p == project]
        if own:
            return f"no allowed version of {project} ({'; '.join(own)})"
        others = [f"{p} {v}: {why}" for (p, v), why in sorted(self.state.excluded.items())]
        return f"its dependencies have no allowed version ({'; '.join(others)})"


def _key(requirement: str) -> str:
    return canonicalize_name(Requirement(requirement).name)
