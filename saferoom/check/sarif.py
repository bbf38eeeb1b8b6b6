"""SARIF 2.1.0 output, for code-scanning pages."""

from __future__ import annotations

import re
from typing import Any

from saferoom.check import Report

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"


def sarif(report: Report, version: str) -> dict[str, Any]:
    rules = {f.rule_id: f.rule for f in report.findings}
    results = [
        {
            "ruleId": f.rule_id,
            "level": "error",
            "message": {"text": f"{f.rule}: {f.preview} at {f.location}"},
            "partialFingerprints": {"valueSha256": f.sha256},
            "properties": {"kind": f.kind, "ruleset": f.ruleset, "rulesetVersion": f.ruleset_version},
            "locations": [{"physicalLocation": _where(f.file, f.location)}],
        }
        for f in report.findings
    ]
    notes = [{"level": "error", "message": {"text": f"{file}: {problem}"}, "descriptor": {"id": "unreadable"}}
             for file, problem in report.errors]
    driver = {"name": "saferoom", "version": version,
              "rules": [{"id": k, "shortDescription": {"text": r}} for k, r in sorted(rules.items())]}
    run: dict[str, Any] = {"tool": {"driver": driver}, "results": results}
    if notes:
        run["invocations"] = [{"executionSuccessful": False, "toolExecutionNotifications": notes}]
    return {"version": "2.1.0", "$schema": SCHEMA, "runs": [run]}


def _where(file: str, location: str) -> dict[str, Any]:
    physical: dict[str, Any] = {"artifactLocation": {"uri": file}}
    line = re.match(r"line (\d+)", location)
    row = re.match(r"row (\d+)", location)
    if line:
        physical["region"] = {"startLine": int(line.group(1))}
    elif row and file.endswith((".csv", ".tsv")):
        physical["region"] = {"startLine": int(row.group(1)) + 1}  # the header is line 1
    return physical
