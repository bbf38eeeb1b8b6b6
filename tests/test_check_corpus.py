"""The airlock against a labelled corpus: per-entity recall and false positives, at the levels last measured.

tests/fixtures/check_corpus/ holds cases from Presidio's recognizer tests and gitleaks' rule tests (both MIT,
licences beside them) and synthetic cases for every miss and false positive of issue #16; README.md there
says where each came from. The thresholds sit a little below the measured figures so a regression fails.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

import saferoom.check as airlock

CORPUS = Path(__file__).parent / "fixtures" / "check_corpus"
FILES = ("presidio.jsonl", "gitleaks.jsonl", "synthetic.jsonl")
# entity -> (minimum recall, maximum false positives): measured, then set a little below / above
LEVELS = {
    "card-number": (0.95, 0),
    "email": (0.95, 0),
    "iban": (0.95, 0),
    "ip-address": (0.95, 0),
    "phone": (0.95, 0),
    "ssn": (0.95, 0),
    "secret": (1.0, 0),
}


def cases() -> list[dict[str, object]]:
    return [json.loads(line) for name in FILES for line in (CORPUS / name).read_text().splitlines() if line.strip()]


def flagged(case: dict[str, object], found: list[airlock.Finding]) -> bool:
    """A case is flagged by a finding of its entity; a gitleaks case against one rule only by that rule's findings."""
    kinds = [f for f in found if f.kind == case["entity"]]
    if case["entity"] == "secret" and not case["positive"] and case.get("rule"):
        return any(f.rule_id == case["rule"] for f in kinds)
    return bool(kinds)


def measure(all_cases: list[dict[str, object]]) -> dict[str, Counter[str]]:
    frame = pl.DataFrame({"text": [str(c["text"]) for c in all_cases]})
    by_row: dict[int, list[airlock.Finding]] = {}
    for finding in airlock.check(frame, min_cell=0).findings:
        row = int(finding.location.split(",")[0].removeprefix("row "))
        by_row.setdefault(row, []).append(finding)
    counts: dict[str, Counter[str]] = {}
    for row, case in enumerate(all_cases, 1):
        hit = flagged(case, by_row.get(row, []))
        outcome = ("tp" if hit else "fn") if case["positive"] else ("fp" if hit else "tn")
        counts.setdefault(str(case["entity"]), Counter())[outcome] += 1
    return counts


@pytest.fixture(scope="module")
def measured() -> dict[str, Counter[str]]:
    return measure(cases())


@pytest.mark.parametrize("entity", sorted(LEVELS))
def test_recall_and_false_positives_per_entity(measured: dict[str, Counter[str]], entity: str) -> None:
    counts = measured[entity]
    recall = counts["tp"] / (counts["tp"] + counts["fn"])
    least, most = LEVELS[entity]
    assert recall >= least, (entity, dict(counts))
    assert counts["fp"] <= most, (entity, dict(counts))


def test_every_case_names_its_source() -> None:
    assert all(c.get("source") for c in cases())


def test_secrets_are_found_as_well_in_text_files(tmp_path: Path) -> None:
    """A text's lines are joined back before the secret rules run: the positives, one Markdown file each."""
    positives = [c for c in cases() if c["entity"] == "secret" and c["positive"]]
    for i, case in enumerate(positives):
        (tmp_path / f"case{i:04d}.md").write_text(f"# Case\n\n{case['text']}\n")
    found = {f.file for f in airlock.check(tmp_path, allow=tmp_path / "none").findings if f.kind == "secret"}
    assert len(found) / len(positives) >= LEVELS["secret"][0], len(found)
