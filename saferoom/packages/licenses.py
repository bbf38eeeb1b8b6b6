"""A wheel's license, decided from what it says about itself, with the evidence.

The order is the ecosystem's own: a reviewed override in the policy; PEP 639's
``License-Expression``; the ``License`` field (an SPDX expression, a known name,
or a whole license text identified against the SPDX license texts); then trove
classifiers. A name that leaves the license open ("BSD License") is settled by
the license files in the wheel. Sources that disagree all apply (``A AND B``),
and licences the wheel's texts bundle beyond its own are listed for review.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from licenseclassifier import identify_license

from saferoom.packages import spdx
from saferoom.packages.spdx import Family

TEXT = 100  # a License field longer than this, or with a line break, is a license text rather than a name


@dataclass(frozen=True)
class Facts:
    """What a wheel says about its license: metadata fields and the license files it ships."""

    expression: str | None = None
    license: str | None = None
    classifiers: tuple[str, ...] = ()
    files: tuple[tuple[str, str], ...] = ()  # (path inside the wheel, text), the main license file first


@dataclass(frozen=True)
class Evidence:
    source: str  # override | License-Expression | License field | classifier | file
    detail: str  # the classifier, the file name, or the field's first words
    found: str  # the SPDX id or expression it gave, or why it gave none

    def line(self) -> str:
        return f"{self.source} {self.detail!r} -> {self.found}" if self.detail else f"{self.source} -> {self.found}"


@dataclass(frozen=True)
class Decision:
    expression: str | None  # None: undetermined
    evidence: tuple[Evidence, ...]
    bundled: tuple[tuple[str, str], ...] = ()  # (SPDX id, file) found in the texts beyond the expression
    problem: str | None = None  # why it is undetermined

    def summary(self) -> str:
        """One line: the license and how it was read (never the whole text)."""
        how = "; ".join(e.line() for e in self.evidence) or "no license information"
        head = self.expression or f"undetermined ({self.problem})"
        return f"{head} [{how}]"

    def as_dict(self) -> dict[str, object]:
        return {"expression": self.expression, "problem": self.problem,
                "evidence": [{"source": e.source, "detail": e.detail, "found": e.found} for e in self.evidence],
                "bundled": [{"license": i, "file": f} for i, f in self.bundled]}


@dataclass
class _Claims:
    exact: list[tuple[str, Evidence]] = field(default_factory=list)
    open: list[tuple[Family, Evidence]] = field(default_factory=list)
    unreadable: list[Evidence] = field(default_factory=list)


def decide(facts: Facts, override: tuple[str, str] | None = None) -> Decision:
    """The SPDX expression a wheel is under; ``override`` is a reviewed (expression, reason) from the policy."""
    found = _identified(facts)
    if override is not None:
        return _finish(override[0], (Evidence("override", override[1], override[0]),), found)
    if facts.expression:
        expression = spdx.normalise(facts.expression)
        evidence = Evidence("License-Expression", "", expression or "not a valid SPDX expression")
        if expression is None:
            return Decision(None, (evidence,), problem=f"License-Expression {_excerpt(facts.expression)!r} is not valid SPDX")
        return _finish(expression, (evidence,), found)
    return _from_claims(_claims(facts, found), found)


def _identified(facts: Facts) -> list[tuple[str, str]]:
    """Every license the texts hold, as (SPDX id, where), in order: the License field's text first, then files."""
    texts = [("License field", facts.license)] if facts.license and _is_text(facts.license) else []
    found = []
    for where, text in [*texts, *facts.files]:
        found += [(match.id, where) for match in identify_license(text or "", coverage_threshold=0)]
    return found


def _claims(facts: Facts, found: list[tuple[str, str]]) -> _Claims:
    claims = _Claims()
    if facts.license and facts.license.strip():
        _field(facts.license.strip(), found, claims)
    for classifier in facts.classifiers:
        _classifier(classifier, claims)
    if not claims.exact and not claims.open and not claims.unreadable and found:
        spdx_id, where = found[0]
        claims.exact.append((spdx_id, Evidence("file", where, spdx_id)))
    return claims


def _field(text: str, found: list[tuple[str, str]], claims: _Claims) -> None:
    if _is_text(text):
        own = [i for i, where in found if where == "License field"]
        evidence = Evidence("License field", _excerpt(text), own[0] if own else "a license text not identified")
        (claims.exact.append((own[0], evidence)) if own else claims.unreadable.append(evidence))
        return
    if spdx.is_pointer(text):
        return
    named = spdx.name(text)
    evidence = Evidence("License field", text, named.name if isinstance(named, Family) else named or "not a known license name")
    if isinstance(named, Family):
        claims.open.append((named, evidence))
    elif named:
        claims.exact.append((named, evidence))
    else:
        claims.unreadable.append(evidence)


def _classifier(classifier: str, claims: _Claims) -> None:
    if not classifier.startswith("License ::") or classifier in spdx.UNINFORMATIVE:
        return
    short = classifier.removeprefix("License :: ").removeprefix("OSI Approved :: ")
    named = spdx.CLASSIFIERS.get(classifier)
    if isinstance(named, Family):
        claims.open.append((named, Evidence("classifier", short, named.name)))
    elif named:
        claims.exact.append((named, Evidence("classifier", short, named)))
    else:
        claims.unreadable.append(Evidence("classifier", short, "no SPDX equivalent"))


def _from_claims(claims: _Claims, found: list[tuple[str, str]]) -> Decision:
    evidence = [e for _, e in claims.exact] + [e for _, e in claims.open] + claims.unreadable
    if claims.unreadable:
        return Decision(None, tuple(evidence), problem=f"{claims.unreadable[0].source} {claims.unreadable[0].detail!r} "
                        f"is {claims.unreadable[0].found}")
    parts = [spdx_id for spdx_id, _ in claims.exact]
    for family, said in claims.open:
        if any(family.has(part) for part in parts):
            continue  # another source already says which
        settled = next(((i, where) for i, where in found if family.has(i)), None)
        if settled is None:
            return Decision(None, tuple(evidence), problem=f"{said.source} {said.detail!r} names {family.name} but no "
                            "license file in the wheel says which")
        parts.append(settled[0])
        evidence.append(Evidence("file", settled[1], f"settles {said.detail!r} as {settled[0]}"))
    if not parts:
        return Decision(None, tuple(evidence), problem="the wheel declares no license")
    return _finish(spdx.conjunction(parts), tuple(evidence), found)


def _finish(expression: str, evidence: tuple[Evidence, ...], found: list[tuple[str, str]]) -> Decision:
    named = {i.lower() for i in spdx.ids(expression)}
    bundled = tuple(dict.fromkeys((i, where) for i, where in found if i.lower() not in named))
    return Decision(expression, evidence, bundled)


def _is_text(text: str) -> bool:
    return "\n" in text.strip() or len(text) > TEXT


def _excerpt(text: str) -> str:
    words = " ".join(text.split())
    return words if len(words) <= 40 else words[:40] + "…"
