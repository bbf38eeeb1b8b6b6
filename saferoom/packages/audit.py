"""The audit of one wheel against the policy: license, bundled licences, deny list, known vulnerabilities."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, replace

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from saferoom.errors import UsageError
from saferoom.packages import spdx
from saferoom.packages.advisories import IndexAdvisories
from saferoom.packages.licenses import Decision, decide
from saferoom.packages.osv import Vulnerabilities
from saferoom.packages.wheels import Wheel
from saferoom.policy.model import Packages


@dataclass(frozen=True)
class Match:
    """A known vulnerability of a release, as the local OSV export and/or the index report it."""

    id: str
    fixed_in: tuple[str, ...]
    sources: tuple[str, ...]  # "osv-export", "index"

    def line(self) -> str:
        return f"{self.id} (fixed in {', '.join(self.fixed_in)})" if self.fixed_in else self.id

    def as_dict(self) -> dict[str, object]:
        return {"id": self.id, "fixed_in": list(self.fixed_in), "sources": list(self.sources)}


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    refusal: str | None  # one line, None when admitted
    kind: str | None = None  # license | bundled | deny | vulnerable
    advisories: tuple[Match, ...] = ()


class Auditor:
    def __init__(self, spec: Packages, vulns: Vulnerabilities | Future[Vulnerabilities],
                 index: IndexAdvisories | None = None) -> None:
        self.spec, self._vulns, self.index = spec, vulns, index
        self.deny = [Requirement(d) for d in spec.deny]
        self.overrides: dict[str, tuple[str, str]] = {canonicalize_name(name): (_valid(name, o.expression), o.reason)
                          for name, o in spec.license_overrides.items()}

    @property
    def vulns(self) -> Vulnerabilities:
        """The feed; one still loading (beside the first resolution) is waited for, and its errors raised, here."""
        return self._vulns.result() if isinstance(self._vulns, Future) else self._vulns

    def verdict(self, wheel: Wheel) -> Verdict:
        decision = decide(wheel.facts, self.overrides.get(wheel.project))
        for check in (self._license, self._bundled, self._denied):
            refusal = check(wheel, decision)
            if refusal:
                return Verdict(decision, refusal[1], refusal[0])
        advisories = self._vulnerable(wheel)
        if advisories:
            return Verdict(decision, f"known vulnerabilities: {', '.join(a.line() for a in advisories)}", "vulnerable",
                           advisories)
        return Verdict(decision, None)

    def _vulnerable(self, wheel: Wheel) -> tuple[Match, ...]:
        """Both sources' advisories for the release; one the index lists under an alias of a feed's is one."""
        found = {a.id: Match(a.id, a.fixed_in, ("osv-export",)) for a in self.vulns.affecting(wheel.name, wheel.version)}
        for advisory in self.index.affecting(wheel.project, wheel.version) if self.index else ():
            same = next((k for k in (advisory.id, *advisory.aliases) if k in found), None)
            if same:
                fixed = tuple(dict.fromkeys((*found[same].fixed_in, *advisory.fixed_in)))
                found[same] = replace(found[same], fixed_in=fixed, sources=(*found[same].sources, "index"))
            else:
                found[advisory.id] = Match(advisory.id, advisory.fixed_in, ("index",))
        return tuple(found.values())

    def _license(self, wheel: Wheel, decision: Decision) -> tuple[str, str] | None:
        if decision.expression is None:
            return "license", (f"license undetermined: {decision.problem} [{_evidence(decision)}]; add a reviewed "
                               f"`license_overrides: {{{wheel.project}: {{expression: …, reason: …}}}}` entry")
        if not spdx.permitted(decision.expression, self.spec.licenses):
            return "license", f"license {decision.expression} is not in the allowed list [{_evidence(decision)}]"
        return None

    def _bundled(self, wheel: Wheel, decision: Decision) -> tuple[str, str] | None:
        if self.spec.bundled != "refuse" or wheel.project in self.overrides:
            return None
        outside = sorted({i for i, _ in decision.bundled if not spdx.permitted(i, self.spec.licenses)})
        if not outside:
            return None
        files = sorted({f for i, f in decision.bundled if i in outside})
        return "bundled", (f"bundles licences not in the allowed list: {', '.join(outside)} (in {', '.join(files)}); "
                           "review them and add a `license_overrides` entry")

    def _denied(self, wheel: Wheel, decision: Decision) -> tuple[str, str] | None:
        for denied in self.deny:
            if canonicalize_name(denied.name) == wheel.project and denied.specifier.contains(wheel.version, prereleases=True):
                return "deny", f"denied by `{denied}`"
        return None


def _evidence(decision: Decision) -> str:
    return "; ".join(e.line() for e in decision.evidence) or "no license information"


def _valid(project: str, expression: str) -> str:
    normal = spdx.normalise(expression)
    if normal is None:
        raise UsageError(f"license_overrides: {project}: {expression!r} is not a valid SPDX expression; write it as SPDX "
                         "ids joined by AND, OR and WITH (LicenseRef-… for one SPDX does not list)")
    return normal
