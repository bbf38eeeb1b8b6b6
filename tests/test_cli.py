"""The command line, run as a real process."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest


def saferoom(*args: str, stdin: str | None = None, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SAFEROOM_")}, **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", "from saferoom.cli import main; main()", *args],
        check=False, capture_output=True, text=True, input=stdin, env=env, cwd=cwd, timeout=120,
    )


def test_query_json(room) -> None:
    done = saferoom("query", "-p", str(room.policy), "-u", "alice", "-f", "json", "select region, count(*) as n from orders group by 1")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [{"region": "EU", "n": room.raw("select count(*) from orders where region = 'EU'")[0][0]}]


def test_query_csv_from_stdin(room) -> None:
    done = saferoom("query", "-p", str(room.policy), "-u", "ivan", "-f", "csv", "-", stdin="select card_id, pan from cards order by card_id limit 3")
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert len(rows) == 3 and all(r["pan"].startswith("************") for r in rows)


def test_refusal_exits_3_with_the_explanation(room) -> None:
    done = saferoom("query", "-p", str(room.policy), "-u", "alice", "select pan from cards")
    assert done.returncode == 3
    assert "Error:" in done.stderr and "card-theft" in done.stderr and "investigator" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_policy_error_exits_2_with_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "saferoom.yaml"
    bad.write_text("version: 1\nsources: {}\ntables: {}\nroles: {x: {colums: {}}}\n")
    done = saferoom("tables", "-p", str(bad), "-u", "alice")
    assert done.returncode == 2
    assert f"{bad}:4" in done.stderr and "colums" in done.stderr


def test_unknown_user_exits_4(room) -> None:
    done = saferoom("query", "-p", str(room.policy), "-u", "mallory", "select 1")
    assert done.returncode == 4 and "mallory" in done.stderr


def test_tables_and_explain(room) -> None:
    tables = saferoom("tables", "-p", str(room.policy), "-u", "alice", "-f", "json")
    assert tables.returncode == 0, tables.stderr
    pan = [r for r in json.loads(tables.stdout) if r["table"] == "prod.cards" and r["name"] == "pan"]
    assert pan[0]["action"] == "deny"
    explained = saferoom("explain", "-p", str(room.policy), "-u", "alice", "select name, zip from customers")
    assert explained.returncode == 0, explained.stderr
    assert "tokenize" in explained.stdout and "generalize" in explained.stdout
    refused = saferoom("explain", "-p", str(room.policy), "-u", "alice", "select pan from cards")
    assert refused.returncode == 3 and "Refused" in refused.stdout


def test_schema_is_json_schema() -> None:
    done = saferoom("schema")
    assert done.returncode == 0
    assert "roles" in json.loads(done.stdout)["properties"]


def test_lint_reports_unclassified_and_missing(room, tmp_path: Path) -> None:
    text = room.policy.read_text().replace("path: prod.duckdb", f"path: {room.database}").replace("file:token.key", f"file:{room.folder / 'token.key'}")
    policy = tmp_path / "saferoom.yaml"
    policy.write_text(text)
    clean = saferoom("lint", "-p", str(policy))
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "internal_score" in clean.stdout  # unclassified: a warning
    strict = saferoom("lint", "-p", str(policy), "--strict")
    assert strict.returncode == 1
    policy.write_text(text.replace("segment: public}", "segment: public, loyalty_tier: public}"))
    missing = saferoom("lint", "-p", str(policy))
    assert missing.returncode == 1 and "loyalty_tier" in missing.stdout
    assert f"{policy}:17: error: column prod.customers.loyalty_tier" in missing.stdout  # the line to fix


def test_demo_builds_and_walks_through(tmp_path: Path) -> None:
    done = saferoom("demo", "--dir", str(tmp_path / "demo"), "--customers", "2000")
    assert done.returncode == 0, done.stderr
    assert "Refused" in done.stdout and "card-theft" in done.stdout
    assert "************" in done.stdout  # the investigator's masked card numbers
    with duckdb.connect(str(tmp_path / "demo" / "prod.duckdb"), read_only=True) as con:
        assert con.execute("select count(*) from customers").fetchone() == (2000,)
    assert oct((tmp_path / "demo" / "token.key").stat().st_mode)[-3:] == "600"


@pytest.mark.parametrize("args", [["query"], ["nonsense"], ["query", "-f", "xml", "select 1"]])
def test_usage_errors_exit_2(args: list[str]) -> None:
    assert saferoom(*args).returncode == 2


def test_sql_that_does_not_parse_is_a_usage_error(room) -> None:
    for command in ("query", "explain"):
        done = saferoom(command, "-p", str(room.policy), "-u", "alice", "selec 1")
        assert done.returncode == 2, done.stderr
        assert "not valid SQL" in done.stderr and "column 7" in done.stderr and "Traceback" not in done.stderr


def test_usage_errors_of_compile_and_serve_exit_2(room, tmp_path: Path) -> None:
    unknown = saferoom("compile", "-p", str(room.policy), "--engine", "oracle")
    assert unknown.returncode == 2 and "postgres and spark" in unknown.stderr
    spark_apply = saferoom("compile", "-p", str(room.policy), "--engine", "spark", "--apply")
    assert spark_apply.returncode == 2 and "run the printed SQL" in spark_apply.stderr
    no_postgres = saferoom("compile", "-p", str(room.policy), "--drop")
    assert no_postgres.returncode == 2 and "no postgres source" in no_postgres.stderr
    exposed = saferoom("serve", "-p", str(room.policy), "--state", str(tmp_path / "state"), "--host", "0.0.0.0")
    assert exposed.returncode == 2 and "beyond loopback" in exposed.stderr


def test_policy_comes_from_the_environment_too(room) -> None:
    done = saferoom("tables", "-u", "alice", "-f", "json", env={"SAFEROOM_POLICY": str(room.policy)})
    assert done.returncode == 0, done.stderr
    assert any(r["table"] == "prod.cards" for r in json.loads(done.stdout))


def test_every_csv_output_is_csv(room, tmp_path: Path) -> None:
    """`-f csv` writes CSV everywhere it is offered: nested values as JSON text, explanations and reports as rows."""
    tables = saferoom("tables", "-p", str(room.policy), "-u", "alice", "-f", "csv")
    assert tables.returncode == 0, tables.stderr
    rows = list(csv.DictReader(io.StringIO(tables.stdout)))
    assert {"table", "name", "action", "threats"} <= set(rows[0]) and any(json.loads(r["threats"]) for r in rows)
    nested = saferoom("query", "-p", str(room.policy), "-u", "alice", "-f", "csv", "select [1, 2] as l, {'a': 1} as s")
    assert nested.returncode == 0, nested.stderr
    assert list(csv.DictReader(io.StringIO(nested.stdout))) == [{"l": "[1, 2]", "s": '{"a": 1}'}]
    explained = saferoom("explain", "-p", str(room.policy), "-u", "alice", "-f", "csv", "select region, customer_id from orders")
    assert explained.returncode == 0, explained.stderr
    by_column = {r["column"]: r for r in csv.DictReader(io.StringIO(explained.stdout))}
    assert by_column["customer_id"]["action"] == "tokenize" and by_column["region"]["action"] == "allow"
    (tmp_path / "state").mkdir()
    report = saferoom("audit", "report", "--state", str(tmp_path / "state"), "-f", "csv")
    assert report.returncode == 0, report.stderr
    assert report.stdout.splitlines()[0] == '"kind","name","queries","refused","rows","bytes"'


def test_audit_verify_of_a_folder_that_is_not_there_is_a_usage_error(tmp_path: Path) -> None:
    done = saferoom("audit", "verify", "--state", str(tmp_path / "typo"))
    assert done.returncode == 2 and "no gateway state folder" in done.stderr


def test_query_prints_its_notices_on_stderr(room) -> None:
    done = saferoom("query", "-p", str(room.policy), "-u", "alice", "-f", "json", "select count(*) as n from orders where region = 'US'")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [{"n": 0}]  # stdout stays data
    assert "rows of prod.orders are filtered for role analyst: region = 'EU'" in done.stderr


def command_paths() -> list[list[str]]:
    """Every command and group of the CLI, as the words that name it."""
    from typer.main import get_command

    from saferoom.cli import app

    def walk(command, path: list[str]):
        yield path
        for name, sub in (getattr(command, "commands", None) or {}).items():
            yield from walk(sub, [*path, name])

    return list(walk(get_command(app), []))


@pytest.mark.parametrize("path", command_paths(), ids=lambda p: " ".join(p) or "saferoom")
def test_help_shows_flags_as_flags(path: list[str]) -> None:
    from typer.testing import CliRunner

    from saferoom.cli import app

    done = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert done.exit_code == 0, done.output
    assert "Show this message and exit." in done.output and "<bool>" not in done.output
