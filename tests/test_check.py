"""The airlock: a generated corpus of planted secrets and look-alikes, every format, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest

import saferoom
import saferoom.check as airlock
from saferoom.check.scan import digest

PLANTED = {  # kind -> values that must be found
    "card-number": ["4539 1488 0343 6467", "5555555555554444", "378282246310005", "6011111111111117"],
    "ssn": ["123-45-6789", "212-67-8910", "078-12-3456"],
    "email": ["jane.roe@gmail.com", "k.okafor@bank-customer.co.uk"],
    "phone": ["(212) 456-7890", "+1 415-555-2671"],
    "iban": ["DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432"],
    "ip-address": ["172.16.254.1", "8.8.4.4", "2001:4860:4860::8888"],
    "connection-string": ["postgresql://admin:s3cretPassw0rd@db.internal:5432/prod"],
}
PEM = ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n"
       "VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK\n-----END RSA PRIVATE KEY-----")
SECRETS = {  # rule of the secret rule set -> a value it must find
    "aws-access-token": "AKIAQYLPMN5HHHFPZAM2",
    "private-key": PEM,
    "jwt": "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.abc123def456",
    "generic-api-key": 'api_key = "Zx9kQ2vL7mN4pR8sT1wY6bC3dF5gH0jK"',
    "github-pat": "ghp_aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5",
}
LOOKALIKES = [  # values that must not be found
    "1234567812345670",  # 16 digits, fails Luhn
    "4111 1111 1111 1112", "order 0000000000000000", "666-12-3456", "900-12-3456", "123-00-4567", "123-45-0000",
    "invoice 987-65-4321", "docs@example.com", "user@test.example", "127.0.0.1", "0.0.0.0", "192.0.2.44",
    "550e8400-e29b-41d4-a716-446655440000", "d41d8cd98f00b204e9800998ecf8427e", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "DE89 3704 0044 0532 0130 01", "postgresql://admin:${DB_PASSWORD}@db:5432/prod", "password = 'changeme'",
    "(555) 010-0199", "version 1.2.3.4567", "SKU 4000-1234-5678", "AKIAIOSFODNN7EXAMPLE", "AKIAXXXXXXXXXXXXXXXX",
    "-----BEGIN RSA PRIVATE KEY-----", "OID 1.3.6.1.4.1.311", "Version 1.2.3.4", "(212) 555-0123",
]
FORMATS = ["csv", "tsv", "parquet", "json", "jsonl", "xlsx", "ipynb", "html", "md", "txt", "py"]


def write(folder: Path, fmt: str, values: list[str], name: str) -> Path:
    path = folder / f"{name}.{fmt}"
    frame = pd.DataFrame({"id": range(len(values)), "note": values})
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif fmt == "parquet":
        frame.to_parquet(path)
    elif fmt == "json":
        path.write_text(frame.to_json(orient="records"))
    elif fmt == "jsonl":
        path.write_text(frame.to_json(orient="records", lines=True))
    elif fmt == "xlsx":
        frame.to_excel(path, index=False)
    elif fmt == "ipynb":
        cells = [{"cell_type": "code", "source": ["x = 1\n"], "outputs": [
            {"output_type": "execute_result", "data": {"text/html": [f"<table><tr><td>{v}</td></tr></table>" for v in values]}}]}]
        path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    elif fmt == "html":
        path.write_text("<html><body>" + "".join(f"<p>{v}</p>\n" for v in values) + "</body></html>")
    elif fmt == "md":
        path.write_text("# Notes\n\n" + "".join(f"- {v}\n" for v in values))
    elif fmt == "txt":
        path.write_text("\n".join(values) + "\n")
    else:
        path.write_text("".join(f"value_{i} = {v!r}\n" if not v.startswith(("api_key", "-----B")) else f"{v}\n" for i, v in enumerate(values)))
    return path


@pytest.mark.parametrize("fmt", FORMATS)
def test_planted_values_are_all_found_in_every_format(tmp_path: Path, fmt: str) -> None:
    values = [v for vs in PLANTED.values() for v in vs] + list(SECRETS.values())
    write(tmp_path, fmt, values, "planted")
    report = airlock.check(tmp_path, allow=tmp_path / "none")
    assert not report.errors, report.errors
    found = {f.sha256 for f in report.findings}
    missing = [(kind, v) for kind, vs in PLANTED.items() for v in vs if digest(_matched(kind, v)) not in found]
    assert not missing, missing  # recall 100%
    rules = {f.rule_id for f in report.findings if f.kind == "secret"}
    assert set(SECRETS) <= rules, set(SECRETS) - rules


def _matched(kind: str, value: str) -> str:
    if kind == "connection-string":
        return value.rsplit("/", 1)[0]  # the match ends at the host: the part that carries the password
    return value


@pytest.mark.parametrize("fmt", FORMATS)
def test_lookalikes_are_not_findings(tmp_path: Path, fmt: str) -> None:
    write(tmp_path, fmt, LOOKALIKES, "clean")
    report = airlock.check(tmp_path, allow=tmp_path / "none")
    assert not report.errors
    assert report.findings == [], [(f.kind, f.preview, f.location) for f in report.findings]


def not_luhn(rng: np.random.Generator, digits: int) -> str:
    """An order id that is not a card number: its check digit is wrong."""
    from saferoom.check.detectors import card

    body = "".join(str(d) for d in rng.integers(0, 10, digits))
    return body if not card(body) else body[:-1] + str((int(body[-1]) + 1) % 10)


def test_false_positives_stay_under_one_percent_of_clean_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    for i in range(120):
        words = ["order", "invoice", "sku", "total", "region", "EU", "ref"]
        lines = [f"{rng.choice(words)} {not_luhn(rng, int(rng.integers(3, 20)))} {rng.choice(LOOKALIKES)}" for _ in range(30)]
        (tmp_path / f"clean{i}.txt").write_text("\n".join(lines))
    report = airlock.check(tmp_path)
    flagged = {f.file for f in report.findings}
    assert len(flagged) / 120 < 0.01, sorted({(f.kind, f.preview) for f in report.findings})


def test_bad_input_is_reported_and_the_scan_continues(tmp_path: Path) -> None:
    (tmp_path / "junk.bin").write_bytes(bytes(range(256)) * 40)
    good = pl.DataFrame({"a": list(range(1000))})
    good.write_parquet(tmp_path / "whole.parquet")
    (tmp_path / "truncated.parquet").write_bytes((tmp_path / "whole.parquet").read_bytes()[:200])
    (tmp_path / "broken.ipynb").write_text("{not json")
    locked = tmp_path / "locked.txt"
    locked.write_text("123-45-6789")
    (tmp_path / "fine.txt").write_text("card 4539 1488 0343 6467\n")
    os.chmod(locked, 0)
    try:
        report = airlock.check(tmp_path)
    finally:
        os.chmod(locked, 0o644)
    problems = dict(report.errors)
    assert "binary" in problems[str(tmp_path / "junk.bin")]
    assert str(tmp_path / "truncated.parquet") in problems
    assert "notebook" in problems[str(tmp_path / "broken.ipynb")]
    if os.geteuid() != 0:  # root reads anything; elsewhere the file is reported
        assert str(locked) in problems
    assert any(f.kind == "card-number" and f.file.endswith("fine.txt") for f in report.findings)
    assert report.exit_code == 2


def test_hostile_files_are_reported_never_crash_or_hang(tmp_path: Path) -> None:
    """A corrupt workbook, a pipe that would block a reader forever, looping links: each is reported, the rest checked."""
    (tmp_path / "corrupt.xlsx").write_bytes(b"PK\x03\x04 not really a workbook")
    (tmp_path / "corrupt.json").write_text('{"a": [1, 2')
    os.mkfifo(tmp_path / "pipe.csv")
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    (tmp_path / "fine.txt").write_text("ssn 123-45-6789\n")
    done = subprocess.run([sys.executable, "-c", "from saferoom.cli import main; main()", "check", str(tmp_path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and "Traceback" not in done.stdout + done.stderr, done.stderr
    for name, why in (("corrupt.xlsx", "not a readable xlsx"), ("corrupt.json", "not a readable json"),
                      ("pipe.csv", "not a regular file"), ("loop1", "leads nowhere")):
        assert any(name in line and why in line for line in done.stdout.splitlines()), (name, done.stdout)
    assert "123-45-6789" not in done.stdout and "fine.txt" in done.stdout


def test_a_two_gigabyte_single_line_is_reported_without_reading_it_whole(tmp_path: Path) -> None:
    big = tmp_path / "one-line.txt"
    with big.open("wb") as f:
        f.write(b"start " + b"x" * 100)
        f.truncate(2 * 1024**3)  # sparse: 2 GB on one line, mostly NUL bytes
    (tmp_path / "after.txt").write_text("212-67-8910\n")
    report = airlock.check(tmp_path)
    assert "binary" in dict(report.errors)[str(big)]
    assert [Path(f.file).name for f in report.findings] == ["after.txt"]


def test_long_text_line_keeps_matches_across_chunk_edges(tmp_path: Path) -> None:
    from saferoom.check.readers import CHUNK

    text = "a" * (CHUNK - 10) + " 4539 1488 0343 6467 " + "b" * (CHUNK * 2)
    (tmp_path / "long.txt").write_text(text)
    report = airlock.check(tmp_path / "long.txt")
    assert [f.kind for f in report.findings] == ["card-number"]


def test_findings_never_print_the_value_and_allowlist_by_hash(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("ssn 212-67-8910 and card 4539148803436467\n")
    report = airlock.check(tmp_path)
    text = json.dumps(report.to_dict())
    assert "212-67-8910" not in text and "4539148803436467" not in text
    (tmp_path / ".saferoom-allow").write_text(f"sha256:{digest('212-67-8910')}  # test fixture SSN\n")
    again = airlock.check(tmp_path, allow=tmp_path / ".saferoom-allow")
    assert [f.kind for f in again.findings] == ["card-number"]


def test_gitignore_is_respected(tmp_path: Path) -> None:
    (tmp_path / ".gitignore").write_text("secrets/\n*.log\n")
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "x.txt").write_text("212-67-8910")
    (tmp_path / "run.log").write_text("212-67-8910")
    (tmp_path / "kept.txt").write_text("212-67-8910")
    report = airlock.check(tmp_path)
    assert {Path(f.file).name for f in report.findings} == {"kept.txt"}


def test_small_cells_and_recoverable_suppression(tmp_path: Path) -> None:
    pd.DataFrame({"region": ["north", "south", "east"], "count": [120, 4, 57]}).to_csv(tmp_path / "counts.csv", index=False)
    pd.DataFrame({"group": ["a", "b", "c", "Total"], "n": ["40", "*", "33", "80"]}).to_csv(tmp_path / "suppressed.csv", index=False)
    pd.DataFrame({"group": ["a", "b"], "n": ["40", "55"]}).to_csv(tmp_path / "fine.csv", index=False)
    report = airlock.check(tmp_path)
    kinds = {(Path(f.file).name, f.kind, f.location) for f in report.findings}
    assert kinds == {("counts.csv", "small-cell", "row 2, column count"), ("suppressed.csv", "recoverable-cell", "row 2, column n")}


def test_dataframes_are_checked_directly() -> None:
    frame = pl.DataFrame({"who": ["Jane"], "email": ["jane.roe@gmail.com"], "n": [2]})
    report = airlock.check(frame)
    assert {f.kind for f in report.findings} == {"email", "small-cell"}
    assert {f.kind for f in airlock.check(frame.to_pandas()).findings} == {"email", "small-cell"}


@pytest.mark.parametrize("frame", [
    pd.DataFrame({"b": [b"212-67-8910", b"\xff\xfe"]}),                          # bytes, one not UTF-8
    pd.DataFrame({"d": [{"ssn": "212-67-8910"}, {"x": 1}]}),                      # dicts
    pd.DataFrame({"m": ["212-67-8910", 5, None, 3.2]}),                           # mixed objects
    pd.DataFrame([["212-67-8910", "x"]], columns=["a", "a"]),                     # duplicate names
    pd.DataFrame([["212-67-8910", 1]], columns=pd.MultiIndex.from_tuples([("a", "b"), ("a", "c")])),
    pl.DataFrame({"s": [{"ssn": "212-67-8910", "n": 1}]}),                        # struct
    pl.DataFrame({"l": [["212-67-8910", "x"], []]}),                              # list
    pl.DataFrame({"b": [b"212-67-8910", b"\xff"]}),                               # binary
], ids=["bytes", "dicts", "mixed", "duplicate-names", "multiindex", "struct", "list", "binary"])
def test_any_dataframe_is_read_and_nothing_inside_is_missed(frame) -> None:
    report = airlock.check(frame)
    assert [f.kind for f in report.findings if f.kind != "small-cell"] == ["ssn"] and not report.errors


def test_empty_dataframes_are_clean() -> None:
    for frame in (pd.DataFrame(), pl.DataFrame(), pd.DataFrame({"x": []})):
        report = airlock.check(frame)
        assert report.findings == [] and report.errors == [] and report.exit_code == 0


def test_fingerprints_catch_real_values_no_pattern_would(room, tmp_path: Path) -> None:
    from saferoom.keyed import fingerprint_key
    from saferoom.split import build
    from tests.conftest import CANARY_NAME
    from tests.test_build import policy_with_build

    policy = policy_with_build(room, tmp_path)
    build(policy, "analytics")
    (tmp_path / "slides.md").write_text(f"# Churn\n\nOur best customer, {CANARY_NAME}, left in March.\nBob Example stayed.\n")
    key = fingerprint_key(policy.token_key)
    report = airlock.check(tmp_path / "slides.md", fingerprints=tmp_path / "analytics.duckdb.fingerprints", key=key)
    real = [f for f in report.findings if f.kind == "real-value"]
    assert [f.location for f in real] == ["line 3"] and CANARY_NAME not in json.dumps(report.to_dict())
    from saferoom.errors import UsageError
    from saferoom.secrets import Secret

    with pytest.raises(UsageError, match="does not match"):
        airlock.check(tmp_path / "slides.md", fingerprints=tmp_path / "analytics.duckdb.fingerprints", key=Secret("wrong" * 8))
    fingerprint_key_from_the_policy_unless_given(policy, tmp_path / "slides.md", tmp_path / "analytics.duckdb.fingerprints")


def fingerprint_key_from_the_policy_unless_given(policy: saferoom.Policy, slides: Path, index: Path) -> None:
    """The key given outright (SAFEROOM_FINGERPRINT_KEY) wins; else it is derived from the policy's token key."""
    from saferoom.errors import UsageError
    from saferoom.secrets import Secret

    for source in (policy, policy.path):
        report = airlock.check(slides, fingerprints=index, policy=source)
        assert [f.location for f in report.findings if f.kind == "real-value"] == ["line 3"]
    with pytest.raises(UsageError, match="does not match"):
        airlock.check(slides, fingerprints=index, key=Secret("wrong" * 8), policy=policy)
    with pytest.raises(UsageError, match="needs the fingerprint key"):
        airlock.check(slides, fingerprints=index)
    run = [sys.executable, "-c", "from saferoom.cli import main; main()", "check", str(slides), "--fingerprints", str(index)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEROOM_")}
    derived = subprocess.run([*run, "-p", str(policy.path)], capture_output=True, text=True, check=False, env=env)
    assert derived.returncode == 1 and "real-value" in derived.stdout, derived.stderr
    wrong = subprocess.run([*run, "-p", str(policy.path)], capture_output=True, text=True, check=False,
                           env={**env, "SAFEROOM_FINGERPRINT_KEY": "wrong" * 8})
    assert wrong.returncode == 2 and "does not match" in wrong.stderr


def test_cli_exit_codes_and_sarif(tmp_path: Path) -> None:
    run = [sys.executable, "-c", "from saferoom.cli import main; main()", "check"]
    (tmp_path / "clean.txt").write_text("nothing to see\n")
    assert subprocess.run([*run, str(tmp_path / "clean.txt")], capture_output=True, check=False).returncode == 0
    (tmp_path / "leak.csv").write_text("name,ssn\nJane,212-67-8910\n")
    done = subprocess.run([*run, str(tmp_path / "leak.csv"), "-f", "sarif"], capture_output=True, text=True, check=False)
    assert done.returncode == 1
    sarif = json.loads(done.stdout)
    result = sarif["runs"][0]["results"][0]
    assert sarif["version"] == "2.1.0" and result["ruleId"] == "ssn"
    assert result["locations"][0]["physicalLocation"]["region"]["startLine"] == 2
    assert "212-67-8910" not in done.stdout
    missing = subprocess.run([*run, str(tmp_path / "nope.txt")], capture_output=True, text=True, check=False)
    assert missing.returncode == 2 and "does not exist" in missing.stdout
    hooks = (Path(__file__).parent.parent / ".pre-commit-hooks.yaml").read_text()
    assert "entry: saferoom check" in hooks


def test_dates_of_birth_next_to_names(tmp_path: Path) -> None:
    pd.DataFrame({"name": ["Jane Roe"], "dob": ["1977-07-13"], "segment": ["retail"]}).to_csv(tmp_path / "people.csv", index=False)
    pd.DataFrame({"product": ["x"], "launch_date": ["2020-01-01"]}).to_csv(tmp_path / "products.csv", index=False)
    (tmp_path / "note.md").write_text("Jane Roe (born 13/07/1977) called.\nThe release is on 2024-01-01.\n")
    report = airlock.check(tmp_path)
    found = {(Path(f.file).name, f.kind, f.location) for f in report.findings}
    assert found == {("people.csv", "birth-date", "column dob beside column name"), ("note.md", "birth-date", "line 1")}


def test_text_output_summarises_per_file_column_and_kind(tmp_path: Path) -> None:
    run = [sys.executable, "-c", "from saferoom.cli import main; main()", "check"]
    ssns = [f"212-67-{8910 + i}" for i in range(20)]
    (tmp_path / "leak.csv").write_text("name,ssn\n" + "".join(f"Jane,{s}\n" for s in ssns))
    (tmp_path / "notes.txt").write_text("".join(f"call {s}\n" if i % 2 else "nothing\n" for i, s in enumerate(ssns[:14])))
    done = subprocess.run([*run, str(tmp_path)], capture_output=True, text=True, check=False)
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    table = [line for line in lines if "leak.csv" in line]
    assert len(table) == 1 and "column ssn: 20 findings, e.g. row 1, column ssn: 21*******10" in table[0]
    text = [line for line in lines if "notes.txt" in line]
    assert len(text) == 1 and "lines 2, 4, 6, 8, 10 and 2 more: 7 findings, e.g. line 2:" in text[0]
    assert "sha256" not in " ".join(table + text) and "27 finding(s)" in done.stdout
    assert not any(s in done.stdout for s in ssns)
    details = subprocess.run([*run, str(tmp_path), "--details"], capture_output=True, text=True, check=False)
    assert details.returncode == 1 and details.stdout.count("sha256:") == 27
    machine = subprocess.run([*run, str(tmp_path), "-f", "json"], capture_output=True, text=True, check=False)
    assert machine.returncode == 1 and len(json.loads(machine.stdout)["findings"]) == 27


def test_a_report_summarises_in_python_too(tmp_path: Path) -> None:
    (tmp_path / "leak.csv").write_text("ssn,email\n212-67-8910,jane.roe@gmail.com\n212-67-8911,jane.roe@gmail.com\n")
    groups = airlock.check(tmp_path).summary()
    assert [(g.kind, g.place, g.count) for g in groups] == [("ssn", "column ssn", 2), ("email", "column email", 2)]


# Issue #16: each miss and false positive it lists, as a line of text; the kind it must give, or None.
ISSUE_16 = [
    ("+44 (20) 7123 4567", "phone"), ("+49 30 1234567", "phone"), ("+55 11 98456 5666", "phone"),
    ("tel 090-1234-5678", "phone"), ("(212) 555-0123", None), ("+1 (415) 555-0175", None),
    ("078 05 1123", "ssn"), ("078.05.1123", "ssn"), ("SSN 078051121", "ssn"), ("078051121", None),
    ("host 2001:4860:4860::8888", "ip-address"), ("OID 1.3.6.1.4.1.311", None), ("Version 1.2.3.4", None),
    ("UATP 122000000000003", "card-number"), ("Dankort 5019717010103742", "card-number"),
    ("Maestro 6759649826438453", "card-number"),
    ("IBAN DE89-3704-0044-0532-0130-00", "iban"), ("DE89 3704 0044 0532 0130 01", None),
    ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c", "jwt"),
    ("xoxb-1234567890123-1234567890123-aBcDeFgHiJkLmNoPqRsTuVwX", "slack-bot-token"),
    ("ghp_aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5", "github-pat"), ("sk_live_4eC39HqLyjWDarjtT1zdp7dc", "stripe-access-token"),
    ("glpat-xK9mP2vL7nQ4rT8sW1yZ", "gitlab-pat"), ("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", "huggingface-access-token"),
    ("A3T0QYLPMN5HHHFPZAM2", "aws-access-token"), ("ABIAQYLPMN5HHHFPZAM2", "aws-access-token"),
    ("ACCAQYLPMN5HHHFPZAM2", "aws-access-token"), ("curl -u admin:Sup3rS3cr3tP4ss https://api.internal", "curl-auth-user"),
    ('{"api_key": "Zx9kQ2vL7mN4pR8sT1wY6bC3dF5gH0jK"}', "generic-api-key"),
    ('os.environ["GITHUB_TOKEN"] = "ghp_aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5"', "github-pat"),
    ('connect(password="Xy7#kP2$mQ9!vL4w")', "saferoom-quoted-password"),
    ('app_secret: sq0csp-Rk4mZ8qW2nX7vB1cT9pL3sY6hJ0dF5gA_uE-oI2kM8r', "saferoom-square-oauth-secret"),
    ('{"type": "service_account", "project_id": "analytics-1"}', "saferoom-gcp-service-account"),
    ('sq0csp-tooshort', None),
    ("AKIAIOSFODNN7EXAMPLE", None), ("AKIAXXXXXXXXXXXXXXXX", None), ("-----BEGIN RSA PRIVATE KEY-----", None),
]


@pytest.mark.parametrize(("text", "expected"), ISSUE_16, ids=[t[:24] for t, _ in ISSUE_16])
def test_issue_16_misses_are_found_and_false_positives_are_not(tmp_path: Path, text: str, expected: str | None) -> None:
    (tmp_path / "notes.md").write_text(f"# Notes\n\n{text}\n")
    found = [f.rule_id for f in airlock.check(tmp_path, allow=tmp_path / "none").findings]
    assert found == ([expected] if expected else []), found


def test_a_pgp_key_block_over_lines_is_one_finding_on_its_first_line(tmp_path: Path) -> None:
    body = "\n".join(["lQOYBF0fTq0BCADExkSlZ2xBqDMv3GjhTzk/b9k7bRZ0+F1MJGs+o2cVbPqXlZ3Z"] * 3)
    (tmp_path / "key.py").write_text(f'x = 1\nKEY = """\n-----BEGIN PGP PRIVATE KEY BLOCK-----\n\n{body}\n-----END PGP PRIVATE KEY BLOCK-----\n"""\n')
    findings = airlock.check(tmp_path / "key.py").findings
    assert [(f.rule_id, f.location) for f in findings] == [("private-key", "line 3")]


def test_line_numbers_count_newlines_only(tmp_path: Path) -> None:
    (tmp_path / "odd.txt").write_text("page\fbreak\x1cand\x1d\x1e\x85\u2028more\u2029\v\r\nssn 212-67-8910\n")
    assert [f.location for f in airlock.check(tmp_path / "odd.txt").findings] == ["line 2"]


def test_json_names_the_rule_and_rule_set_version(tmp_path: Path) -> None:
    from saferoom.check.rules import ruleset

    (tmp_path / "leak.txt").write_text("ssn 212-67-8910\ntoken ghp_aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5\n")
    pd.DataFrame({"region": ["north", "south"], "count": [120, 4], "contact": ["jane.roe@gmail.com", "x"]}).to_csv(tmp_path / "t.csv", index=False)
    run = [sys.executable, "-c", "from saferoom.cli import main; main()", "check", str(tmp_path), "-f", "json"]
    done = subprocess.run(run, capture_output=True, text=True, check=False)
    every = json.loads(done.stdout)["findings"]
    assert {f["rule_id"] for f in every} == {"ssn", "github-pat", "small-cell", "email"}
    assert all(f["ruleset"] and f["ruleset_version"] for f in every), every  # every finding names its rule set and version
    findings = {f["rule_id"]: f for f in every}
    assert findings["github-pat"]["ruleset"] == "gitleaks" and findings["github-pat"]["ruleset_version"] == ruleset().version
    assert findings["ssn"]["ruleset"] == "saferoom" and findings["ssn"]["ruleset_version"] == saferoom.__version__
    assert "ghp_aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5" not in done.stdout


def test_the_rule_set_ships_with_its_version_and_licence() -> None:
    from saferoom.check.rules import RULES_DIR, ruleset

    rules = ruleset()
    assert rules.version.startswith("v8.") and len(rules.rules) > 200
    assert "MIT License" in (RULES_DIR / "gitleaks.LICENSE").read_text()
    assert {"jwt", "github-pat", "private-key", "generic-api-key"} <= {r.id for r in rules.rules}


@pytest.mark.parametrize(("go", "rust"), [
    (r"\bkey\w{3}\s\d", r"(?-u:\b)key[0-9A-Za-z_]{3}[\t\n\f\r ][0-9]"),
    (r"[\w.-]", r"[0-9A-Za-z_.-]"),
    (r"^\${\d+}$", r"^\$\{[0-9]+}$"),
    (r"a{2,3}[{]", r"a{2,3}[{]"),
])
def test_go_regexes_are_read_as_go_reads_them(go: str, rust: str) -> None:
    from saferoom.check.rules import rust_regex

    assert rust_regex(go) == rust


def test_notebook_findings_name_the_cell_and_its_line(tmp_path: Path) -> None:
    cells = [{"cell_type": "markdown", "source": ["# Title\n"]},
             {"cell_type": "code", "source": ["x = 1\n", "print('212-67-8910')\n", "t = 'ghp_aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5'\n"],
              "outputs": [{"output_type": "stream", "name": "stdout", "text": ["ok\n", "jane.roe@gmail.com\n"]}]}]
    (tmp_path / "n.ipynb").write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    report = airlock.check(tmp_path / "n.ipynb")
    assert sorted((f.rule_id, f.location) for f in report.findings) == [
        ("email", "cell 2, output stream, line 2"), ("github-pat", "cell 2, source, line 3"), ("ssn", "cell 2, source, line 2")]
    assert {g.where() for g in report.summary()} == {"cell 2, output stream, line 2", "cell 2, source, line 3", "cell 2, source, line 2"}


def test_excel_findings_name_the_sheet_and_cell(tmp_path: Path) -> None:
    import openpyxl

    book = openpyxl.Workbook()
    first = book.active
    first.title = "Orders"
    first["B3"], first["C3"] = "id", "note"  # the table starts at B3: its header row
    for row in range(4, 9):
        first[f"B{row}"], first[f"C{row}"] = row, "fine"
    first["C7"] = "ssn 212-67-8910"
    second = book.create_sheet("People")
    second.append(["name", "contact"])
    second.append(["Jane", "jane.roe@gmail.com"])
    book.save(tmp_path / "book.xlsx")
    found = sorted((f.kind, f.file, f.location) for f in airlock.check(tmp_path / "book.xlsx").findings)
    book_path = str(tmp_path / "book.xlsx")
    assert found == [("email", book_path, "People!B2, column contact"), ("ssn", book_path, "Orders!C7, column note")]
    assert {g.where() for g in airlock.check(tmp_path / "book.xlsx").summary()} == {"People column contact", "Orders column note"}


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet", "jsonl", "xlsx"])
def test_rows_are_numbered_across_batches(tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small batches force a table to be read in many: every row keeps its own number, in every format."""
    from saferoom.check import tables

    monkeypatch.setattr(tables, "BATCH_BYTES", 4096)
    monkeypatch.setattr(tables, "BLOCK_BYTES", 4096)
    monkeypatch.setattr(tables, "EXCEL_ROWS", 100)
    notes = ["order shipped on time, nothing to report"] * 3000
    planted = {17: "ssn 212-67-8910", 1234: "card 4539 1488 0343 6467", 2999: "mail jane.roe@gmail.com"}
    for row, value in planted.items():
        notes[row] = value
    pd.DataFrame({"id": range(3000), "note": notes, "n": [100] * 2999 + [3]}).to_parquet(tmp_path / "t.parquet", row_group_size=500) \
        if fmt == "parquet" else write(tmp_path, fmt, notes, "t")
    found = sorted(f.location for f in airlock.check(tmp_path / f"t.{fmt}", min_cell=0).findings)
    expected = [f"row {row + 1}, column note" for row in planted]
    if fmt == "xlsx":  # the header is the sheet's row 1, so a table's row n is the sheet's row n + 1
        expected = [f"Sheet1!B{row + 2}, column note" for row in planted]
    assert found == sorted(expected)


def test_a_suppressed_cell_is_recoverable_across_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from saferoom.check import tables

    monkeypatch.setattr(tables, "BATCH_BYTES", 1024)
    monkeypatch.setattr(tables, "BLOCK_BYTES", 1024)
    groups = [f"g{i}" for i in range(400)] + ["Total"]
    counts = ["50"] * 400 + ["20000"]
    counts[7] = "*"
    pd.DataFrame({"group": groups, "n": counts}).to_csv(tmp_path / "s.csv", index=False)
    assert [(f.kind, f.location) for f in airlock.check(tmp_path / "s.csv").findings] == [("recoverable-cell", "row 8, column n")]
    counts[300] = "*"  # two suppressed cells: neither is given back by the total alone
    pd.DataFrame({"group": groups, "n": counts}).to_csv(tmp_path / "s.csv", index=False)
    assert airlock.check(tmp_path / "s.csv").findings == []


def test_a_csv_that_is_not_utf8_or_has_ragged_rows_is_still_read(tmp_path: Path) -> None:
    (tmp_path / "odd.csv").write_bytes(b"id,note\n1,caf\xe9\n2,ssn 212-67-8910\n3,a,b,extra mail jane.roe@gmail.com\n4,card 4539 1488 0343 6467\n")
    report = airlock.check(tmp_path / "odd.csv")
    assert not report.errors
    assert sorted(f.kind for f in report.findings) == ["card-number", "email", "ssn"]


def test_findings_past_the_cap_are_counted_not_kept(tmp_path: Path) -> None:
    from saferoom.check import EXAMPLES

    ssns = [f"212-67-{n:04d}" for n in range(1, EXAMPLES * 3 + 1)]
    pd.DataFrame({"ssn": ssns}).to_csv(tmp_path / "many.csv", index=False)
    report = airlock.check(tmp_path / "many.csv")
    assert len(report.findings) == EXAMPLES and report.omitted == EXAMPLES * 2 and report.exit_code == 1
    assert [(g.place, g.count) for g in report.summary()] == [("column ssn", EXAMPLES * 3)]
    assert report.to_dict()["omitted"] == [{"file": str(tmp_path / "many.csv"), "place": "column ssn", "kind": "ssn",
                                            "findings": EXAMPLES * 3, "kept": EXAMPLES}]
    done = subprocess.run([sys.executable, "-c", "from saferoom.cli import main; main()", "check", str(tmp_path / "many.csv")],
                          capture_output=True, text=True, check=False)
    assert f"{EXAMPLES * 3} finding(s) ({EXAMPLES * 2} past the first {EXAMPLES}" in done.stdout, done.stdout


# The child's own peak: VmHWM starts afresh at exec, while ru_maxrss keeps the peak of the process it was forked from.
PEAK = """
import re, sys
import saferoom.check as airlock
report = airlock.check(sys.argv[1])
peak = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
print(peak, sum(report.counts.values()), len(report.findings))
"""


def _orders_csv(path: Path, megabytes: int) -> int:
    """Order-like rows, one in a hundred carrying an SSN, an email or a card, repeated up to the size asked."""
    rng = np.random.default_rng(7)
    pii = np.array(["ssn 212-67-8910", "mail jane.roe@gmail.com", "card 4539 1488 0343 6467"])
    notes = np.where(rng.random(20_000) < 0.01, pii[rng.integers(0, 3, 20_000)], "order shipped on time; no issue reported")
    block = "".join(f"{i},SKU-{i % 9973},{i * 0.37:.2f},{note}\n" for i, note in enumerate(notes)).encode()
    with path.open("wb") as f:
        f.write(b"order_id,sku,amount,note\n")
        for _ in range(megabytes * 1_000_000 // len(block) + 1):
            f.write(block)
    return path.stat().st_size


def test_memory_stays_bounded_however_large_the_table(tmp_path: Path) -> None:
    """Two CSVs, one eight times the other: the larger's peak memory grows far less than its extra size
    (reading a table whole grew it by about five times the file)."""
    peaks, sizes, counts = [], [], []
    for megabytes in (30, 240):
        path = tmp_path / f"orders-{megabytes}.csv"
        sizes.append(_orders_csv(path, megabytes))
        done = subprocess.run([sys.executable, "-c", PEAK, str(path)], capture_output=True, text=True, check=True)
        peak, found, kept = map(int, done.stdout.split())
        peaks.append(peak)
        counts.append((found, kept))
        path.unlink()
    assert peaks[1] - peaks[0] < (sizes[1] - sizes[0]) / 2, (peaks, sizes)
    assert counts[1][0] > counts[0][0] * 6 and counts[1][1] <= 3 * airlock.EXAMPLES, counts  # every finding counted, a bounded number kept


SHORT_KEYWORDS = [  # rules whose keyword is one or two letters: the table prefilter reads their regex instead
    ("twilio SK8a3f9c2e7b1d4f6a8c0e2b4d6f8a1c3e5", "twilio-api-key"),
    ("jwt eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c", "jwt"),
    ("<td>hvs.CAESIJlWh5LEHU1dZ8QcUwPqJtrR2FvAL4o9HLqtQv2bQeQhGh4KHGh2cy5QbVB6c0RGZlpGY2pPRjNIZWdMR3h3Qkw</td>", "vault-service-token"),
    ("vault s.Xk7Pq2Lm9Rt4Vw8Yz3Bn6Cd1", "vault-service-token"),
    ("risk task desk they survey money SKU-1234", None),
]


@pytest.mark.parametrize(("text", "rule"), SHORT_KEYWORDS, ids=[r or "none" for _, r in SHORT_KEYWORDS])
def test_rules_with_short_keywords_still_find_their_secrets_in_tables(text: str, rule: str | None) -> None:
    found = [f.rule_id for f in airlock.check(pl.DataFrame({"v": [text]})).findings]
    assert found == ([rule] if rule else []), found


def test_each_sheet_of_a_workbook_is_its_own_table(tmp_path: Path) -> None:
    """One suppressed cell in each of two sheets, each with its total: each is given back, named by its cell."""
    import openpyxl

    book = openpyxl.Workbook()
    for index, title in enumerate(("North", "South")):
        sheet = book.active if index == 0 else book.create_sheet()
        sheet.title = title
        for row in (["group", "n"], ["a", "40"], ["b", "*"], ["Total", "80"]):
            sheet.append(row)
    book.save(tmp_path / "counts.xlsx")
    found = sorted((f.kind, f.location) for f in airlock.check(tmp_path / "counts.xlsx").findings)
    assert found == [("recoverable-cell", "North!B3, column n"), ("recoverable-cell", "South!B3, column n")]


def test_a_json_lines_record_too_long_to_hold_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from saferoom.check import tables

    monkeypatch.setattr(tables, "LONGEST_RECORD", 1 << 20)
    monkeypatch.setattr(tables, "BATCH_BYTES", 1 << 18)
    (tmp_path / "long.jsonl").write_text('{"a": "ssn 212-67-8910"}\n{"b": "' + "x" * (2 << 20) + '"}\n')
    report = airlock.check(tmp_path / "long.jsonl")
    assert "a line longer than 1 MiB" in dict(report.errors)[str(tmp_path / "long.jsonl")] and report.exit_code == 2
    assert [f.kind for f in report.findings] == ["ssn"]  # what was read before it is still reported


def test_a_large_text_is_read_in_blocks_of_lines_and_keeps_its_line_numbers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks repeat the last lines of the one before: a key block across the edge is found whole, once."""
    from saferoom.check import readers, tables

    monkeypatch.setattr(readers, "WHOLE_TEXT", 1 << 12)
    monkeypatch.setattr(tables, "BATCH_BYTES", 1 << 12)
    monkeypatch.setattr(readers, "REPEATED_LINES", 20)
    lines = [f"line {n} nothing to see" for n in range(1, 1001)]
    lines[99] = "ssn 212-67-8910"
    pem = PEM.split("\n")
    start = next(n for n in range(180, 400) if sum(len(x) + 1 for x in lines[:n]) % (1 << 12) > (1 << 12) - 60)  # a block ends inside it
    lines[start:start + len(pem)] = pem
    lines[899] = "mail jane.roe@gmail.com"
    (tmp_path / "big.log").write_text("\n".join(lines) + "\n")
    found = sorted((f.rule_id, f.location) for f in airlock.check(tmp_path / "big.log").findings)
    assert found == [("email", "line 900"), ("private-key", f"line {start + 1}"), ("ssn", "line 100")], found
