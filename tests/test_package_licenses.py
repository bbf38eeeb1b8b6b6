"""License decisions on real wheels' metadata, the wrong decisions of old, and OSV range semantics."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import trove_classifiers

from saferoom.errors import UsageError
from saferoom.packages import licenses, spdx, wheels
from saferoom.packages.audit import Auditor
from saferoom.packages.licenses import Facts, decide
from saferoom.packages.osv import Vulnerabilities
from saferoom.policy.model import Packages

FIXTURES = Path(__file__).parent / "fixtures" / "wheels"
MIT_TEXT = (Path(__file__).parent / "fixtures" / "wheels" / "polars-2.1.0" / "licenses" / "LICENSE").read_text()
BSD2_TEXT = (FIXTURES / "nest_asyncio2-1.7.4" / "licenses" / "LICENSE").read_text()
BANK = ["MIT", "BSD-2-Clause", "BSD-3-Clause", "Apache-2.0", "PSF-2.0", "ISC", "MPL-2.0"]

# (wheel, SPDX decision, licences it bundles beyond that, the first evidence read)
REAL = [
    ("certifi-2026.10.19.post1", "MPL-2.0", [], "License field"),
    ("comm-0.2.3", "BSD-3-Clause", [], "License field"),  # the whole BSD text in the License field
    ("contourpy-1.3.2", "BSD-3-Clause", [], "License field"),
    ("cycler-0.12.1", "BSD-3-Clause", [], "License field"),
    ("defusedxml-0.7.1", "PSF-2.0", [], "License field"),  # "PSFL"
    ("jinja2-3.1.6", "BSD-3-Clause", [], "classifier"),  # empty field, "BSD License" settled by LICENSE.txt
    ("jupyter_client-8.10.0", "BSD-3-Clause", [], "License field"),
    ("jupyter_events-0.12.1", "BSD-3-Clause", [], "License field"),
    ("jupyter_server-2.21.1", "BSD-3-Clause", [], "License field"),
    ("jupyter_server_terminals-0.5.4", None, [], "classifier"),  # a BSD text with a line moved: for review
    ("jupyterlab-4.6.6", "BSD-3-Clause", [], "License field"),
    ("jupyterlab_server-2.28.1", "BSD-3-Clause", [], "License field"),
    ("kiwisolver-1.5.1", "BSD-3-Clause", [], "License field"),
    ("matplotlib-3.11.2", "PSF-2.0", [], "License field"),
    ("nbclient-0.11.0", "BSD-3-Clause", [], "License field"),
    ("nbconvert-7.17.2", "BSD-3-Clause", [], "License field"),
    ("nbformat-5.11.1", "BSD-3-Clause", [], "License field"),
    ("nest_asyncio2-1.7.4", "BSD-2-Clause", [], "License field"),  # "BSD", settled by its LICENSE as BSD-2
    ("notebook_shim-0.2.4", "BSD-3-Clause", [], "License field"),
    ("numpy-2.2.6", "BSD-3-Clause", ["BSD-3-Clause-Open-MPI", "GPL-3.0-or-later"], "License field"),
    ("overrides-7.7.0", "Apache-2.0", [], "License field"),  # "Apache License, Version 2.0"
    ("packaging-26.4", "Apache-2.0 OR BSD-2-Clause", [], "License-Expression"),
    ("pandas-2.3.2", "BSD-3-Clause", ["Apache-2.0", "BSD-2-Clause", "MIT"], "License field"),
    ("pexpect-4.9.0", "ISC", [], "License field"),
    ("polars-2.1.0", "MIT", [], "License field"),
    ("prompt_toolkit-3.0.53", "BSD-3-Clause", [], "classifier"),
    ("pyarrow-20.0.0", "Apache-2.0", [], "License field"),  # "Apache Software License", settled by LICENSE.txt
    ("pyzmq-26.4.0", "BSD-3-Clause", ["Apache-2.0", "ISC", "MPL-2.0"], "License field"),
    ("requests-2.34.2", "Apache-2.0", [], "License field"),
    ("rfc3987_syntax-1.1.0", "MIT", [], "License-Expression"),  # wins over its Apache classifier
    ("scikit_learn-1.7.2", "BSD-3-Clause", [], "License-Expression"),
    ("scipy-1.16.3", "BSD-3-Clause", ["BSD-3-Clause-Open-MPI", "GPL-3.0-or-later"], "License field"),
    ("terminado-0.18.1", "BSD-2-Clause", [], "License field"),
    ("tinycss2-1.5.1", "BSD-3-Clause", [], "classifier"),
    ("traitlets-5.16.1", "BSD-3-Clause", [], "License field"),
    ("typing_extensions-4.16.0", "PSF-2.0", ["0BSD", "Python-2.0.1"], "License-Expression"),
    ("webencodings-0.6.1", "BSD-3-Clause", [], "classifier"),
]


def real_wheel(name: str, folder: Path) -> wheels.Wheel:
    """The fixture folder zipped as the wheel it came from, read the way a sync reads it."""
    path = folder / f"{name}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for file in sorted((FIXTURES / name).rglob("*")):
            if file.is_file():
                archive.write(file, f"{name}.dist-info/{file.relative_to(FIXTURES / name)}")
    return wheels.read(path)


def test_every_fixture_has_an_expected_decision() -> None:
    assert sorted(p.name for p in FIXTURES.iterdir() if p.is_dir()) == sorted(name for name, *_ in REAL)


@pytest.mark.parametrize(("name", "expression", "bundled", "source"), REAL, ids=[r[0] for r in REAL])
def test_real_wheels_are_read_as_spdx(name: str, expression: str | None, bundled: list[str], source: str,
                                      tmp_path: Path) -> None:
    decision = decide(real_wheel(name, tmp_path).facts)
    assert decision.expression == expression, decision.summary()
    assert sorted({i for i, _ in decision.bundled}) == bundled
    assert decision.evidence[0].source == source
    assert "\n" not in decision.summary() and len(decision.summary()) < 600  # one line, never the whole text


def test_whole_text_license_field_is_identified_not_matched_by_length(tmp_path: Path) -> None:
    wheel = real_wheel("pandas-2.3.2", tmp_path)
    assert len(wheel.facts.license or "") > 10_000  # the field is the whole (trimmed) license text
    decision = decide(wheel.facts)
    assert decision.evidence[0].found == "BSD-3-Clause" and spdx.permitted(decision.expression or "", BANK)


@pytest.mark.parametrize(("facts", "expression", "allowed"), [
    # GPLv3 in the field and an MIT classifier: both apply, so MIT alone does not admit it
    (Facts(license="GPLv3", classifiers=("License :: OSI Approved :: MIT License",)), "GPL-3.0-only AND MIT", False),
    # parentheses: BSD-2-Clause alone does not satisfy MIT AND (…)
    (Facts(expression="MIT AND (Apache-2.0 OR BSD-2-Clause)"), "MIT AND (Apache-2.0 OR BSD-2-Clause)", False),
    # "BSD" is settled by the license file: BSD-2-Clause, not a guessed BSD-3-Clause
    (Facts(license="BSD", files=(("licenses/LICENSE", BSD2_TEXT),)), "BSD-2-Clause", True),
    # an empty field with only the ambiguous classifier, settled by the file
    (Facts(license="", classifiers=("License :: OSI Approved :: BSD License",), files=(("LICENSE", BSD2_TEXT),)),
     "BSD-2-Clause", True),
    # the whole license text in the field
    (Facts(license=MIT_TEXT), "MIT", True),
    (Facts(license="Apache License, Version 2.0"), "Apache-2.0", True),
    (Facts(license="UNKNOWN", files=(("LICENSE", MIT_TEXT),)), "MIT", True),  # a placeholder, then the file
], ids=["gplv3-mit-classifier", "parentheses", "bsd-free-text", "empty-field-bsd-classifier", "whole-text",
        "apache-name", "unknown-then-file"])
def test_hand_made_cases(facts: Facts, expression: str, allowed: bool) -> None:
    decision = decide(facts)
    assert decision.expression == expression, decision.summary()
    assert spdx.permitted(expression, ["BSD-2-Clause", "Apache-2.0"] if "(" in expression else ["MIT", "BSD-2-Clause", "Apache-2.0"]) is allowed


@pytest.mark.parametrize(("facts", "problem"), [
    (Facts(license="BSD"), "names a BSD license but no license file"),
    (Facts(classifiers=("License :: OSI Approved :: BSD License",)), "no license file"),
    (Facts(license="GPLv3 with the author's blessing"), "not a known license name"),
    (Facts(classifiers=("License :: Other/Proprietary License",)), "no SPDX equivalent"),
    (Facts(expression="MIT OR"), "not valid SPDX"),
    (Facts(license="Some text\nthat is no license we know\n" * 5), "a license text not identified"),
    (Facts(), "declares no license"),
])
def test_what_cannot_be_read_is_undetermined_with_the_reason(facts: Facts, problem: str) -> None:
    decision = decide(facts)
    assert decision.expression is None and problem in (decision.problem or "")


def test_parentheses_and_with_exceptions_are_evaluated_by_spdx() -> None:
    assert spdx.permitted("MIT AND (Apache-2.0 OR BSD-2-Clause)", ["mit", "bsd-2-clause"])
    assert not spdx.permitted("MIT AND (Apache-2.0 OR BSD-2-Clause)", ["BSD-2-Clause"])
    assert not spdx.permitted("GPL-3.0-or-later WITH GCC-exception-3.1", ["GPL-3.0-or-later"])
    assert spdx.permitted("GPL-3.0-or-later WITH GCC-exception-3.1", ["GPL-3.0-or-later WITH GCC-exception-3.1"])


def test_every_mapped_classifier_is_a_real_trove_classifier() -> None:
    assert set(spdx.CLASSIFIERS) <= trove_classifiers.classifiers
    assert all(spdx.normalise(v) == v for v in spdx.CLASSIFIERS.values() if isinstance(v, str))
    assert all(spdx.normalise(v) == v for v in spdx.NAMES.values() if isinstance(v, str))


def packages(**extra: object) -> Packages:
    return Packages.model_validate({"requirements": ["numpy"], "licenses": BANK, **extra})


def test_an_override_decides_with_its_reason_and_the_bundled_rule(tmp_path: Path) -> None:
    numpy = real_wheel("numpy-2.2.6", tmp_path)
    empty = Vulnerabilities({})
    assert Auditor(packages(), empty).verdict(numpy).refusal is None  # review: listed, admitted
    refused = Auditor(packages(bundled="refuse"), empty).verdict(numpy)
    assert refused.kind == "bundled" and "GPL-3.0-or-later" in (refused.refusal or "")
    override = {"numpy": {"expression": "BSD-3-Clause AND GPL-3.0-or-later WITH GCC-exception-3.1",
                          "reason": "libgfortran is bundled under the GCC runtime exception; reviewed"}}
    verdict = Auditor(packages(bundled="refuse", license_overrides=override), empty).verdict(numpy)
    assert verdict.decision.evidence[0].source == "override"
    assert "not in the allowed list" in (verdict.refusal or "")  # an override says what it is, not that it is allowed
    allowed = packages(bundled="refuse", license_overrides=override,
                       licenses=[*BANK, "GPL-3.0-or-later WITH GCC-exception-3.1"])
    assert Auditor(allowed, empty).verdict(numpy).refusal is None
    with pytest.raises(UsageError, match="not a valid SPDX expression"):
        Auditor(packages(license_overrides={"numpy": {"expression": "BSD please", "reason": "x"}}), empty)


def test_refusal_names_license_and_evidence_in_one_line(tmp_path: Path) -> None:
    verdict = Auditor(packages(licenses=["MIT"]), Vulnerabilities({})).verdict(real_wheel("pandas-2.3.2", tmp_path))
    line = verdict.refusal or ""
    assert line.startswith("license BSD-3-Clause is not in the allowed list [License field 'BSD 3-Clause License")
    assert "\n" not in line and len(line) < 400


# --- OSV: the schema's own examples, in PEP 440 versions --------------------------------------------------

def advisory(ranges: list[dict[str, object]], versions: list[str] | None = None, **extra: object) -> dict[str, object]:
    return {"id": "OSV-1", "modified": "2026-01-02T00:00:00Z", **extra,
            "affected": [{"package": {"ecosystem": "PyPI", "name": "Requests"}, "ranges": ranges, "versions": versions or []}]}


def events(*pairs: tuple[str, str]) -> list[dict[str, object]]:
    return [{"type": "ECOSYSTEM", "events": [{kind: version} for kind, version in pairs]}]


@pytest.mark.parametrize(("doc", "affected", "clean"), [
    (advisory(events(("introduced", "0"))), ["0.1", "2.31.0"], []),  # unfixed: every version
    (advisory(events(("introduced", "0"), ("fixed", "1.0.2"))), ["1.0.1", "0.9"], ["1.0.2", "2.0"]),
    # several intervals in one range: none collapses into the last
    (advisory(events(("introduced", "0"), ("fixed", "2.20.0"), ("introduced", "2.30.0"), ("fixed", "2.31.0"))),
     ["2.19.0", "2.30.0", "2.30.5"], ["2.20.0", "2.25.1", "2.31.0"]),
    (advisory(events(("introduced", "1.0.0"), ("fixed", "1.0.2"), ("introduced", "3.0.0"), ("fixed", "3.2.5"))),
     ["1.0.0", "1.0.1", "3.2.4"], ["0.9", "1.0.2", "2.9", "3.2.5"]),
    # last_affected: that version is affected, those above are not
    (advisory(events(("introduced", "0"), ("last_affected", "2.1.214"))), ["2.1.214", "2.0"], ["2.1.215", "2.8.0"]),
    # limit: nothing at or above it
    (advisory(events(("introduced", "1.0"), ("limit", "2.0"))), ["1.5"], ["2.0", "2.5", "0.5"]),
    # unsorted events are sorted first
    (advisory(events(("fixed", "2.0"), ("introduced", "1.0"))), ["1.0", "1.9"], ["2.0", "0.9"]),
    # several ranges: any one counts
    (advisory([*events(("introduced", "0"), ("fixed", "1.0")), *events(("introduced", "2.0"), ("fixed", "2.1"))]),
     ["0.5", "2.0.1"], ["1.0", "2.1"]),
    (advisory([], versions=["2.0.0"]), ["2.0.0", "2.0"], ["2.0.1"]),  # listed versions, PEP 440-equal ones too
    (advisory(events(("introduced", "0")), withdrawn="2026-02-01T00:00:00Z"), [], ["1.0"]),  # withdrawn: ignored
], ids=["unfixed", "fixed", "two-intervals", "schema-multiple", "last-affected", "limit", "unsorted", "two-ranges",
        "versions", "withdrawn"])
def test_osv_ranges(tmp_path: Path, doc: dict[str, object], affected: list[str], clean: list[str]) -> None:
    (tmp_path / "a.json").write_text(json.dumps(doc))
    (tmp_path / "b.json").write_text(json.dumps(advisory(events(("introduced", "0")), id="OTHER") | {
        "affected": [{"package": {"ecosystem": "PyPI", "name": "elsewhere"}, "ranges": events(("introduced", "0"))}]}))
    vulns = Vulnerabilities.load(tmp_path)
    assert [v for v in affected if vulns.affecting("requests", v)] == affected
    assert [v for v in clean if vulns.affecting("requests", v)] == []


def test_an_empty_or_foreign_feed_is_an_error_unless_allowed(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="holds no PyPI advisory"):
        Vulnerabilities.load(tmp_path / "empty")
    (tmp_path / "npm").mkdir()
    (tmp_path / "npm" / "x.json").write_text(json.dumps({"id": "X", "affected": [{"package": {"ecosystem": "npm", "name": "y"}}]}))
    with pytest.raises(UsageError, match=r"holds no PyPI advisory \(1 JSON files read\)"):
        Vulnerabilities.load(tmp_path / "npm")
    with pytest.raises(UsageError, match="no vulnerability feed is set"):
        Vulnerabilities.load(None)
    assert len(Vulnerabilities.load(tmp_path / "empty", allow_empty=True)) == 0


def test_the_feed_carries_its_provenance(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps(advisory(events(("introduced", "0")))))
    # a real PyPI advisory (PYSEC-2019-125) bounds its range with a date: kept, the range named, not a crash
    (tmp_path / "b.json").write_text(json.dumps(advisory(events(("introduced", "0"), ("fixed", "2019-09-12")), id="DATED")))
    vulns = Vulnerabilities.load(tmp_path)
    feed = vulns.provenance
    assert feed is not None and (feed.advisories, feed.files, feed.newest_modified) == (2, 2, "2026-01-02T00:00:00Z")
    assert len(feed.sha256) == 64 and feed.unordered == ("DATED",)
    assert [a.id for a in vulns.affecting("requests", "1.0")] == ["OSV-1"]


def test_license_files_are_read_main_first(tmp_path: Path) -> None:
    files = [name for name, _ in real_wheel("pyzmq-26.4.0", tmp_path).facts.files]
    assert files[0] == "licenses/LICENSE.md" and "licenses/licenses/LICENSE.zeromq.txt" in files
    assert licenses.TEXT < 200
