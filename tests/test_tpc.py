"""TPC-H (22 queries) and TPC-DS (99) through the guard, at a small scale factor.

Under a role that allows everything every query is accepted and returns exactly what DuckDB returns for
the same text on the raw files. Under a restrictive role (rows of one market segment or birth country,
contact columns denied, names tokenized) each query returns what DuckDB returns over views that apply
the policy by hand, or, when it names a denied column, is refused naming it.

The data and the official queries come from DuckDB's tpch and tpcds extensions (see bench/tpc.py); they
are generated into a temporary folder, never kept in git.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import saferoom
from tests import answers

sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))
import tpc

SF = 0.01
RESTRICTED = {
    "tpch": {"columns": {"pii": "deny"}, "rows": {"tpch.customer": "c_mktsegment = {user.segment}"}},
    "tpcds": {"columns": {"pii": "deny"}, "rows": {"tpcds.customer": "c_birth_country = {user.country}"}},
}
ATTRIBUTES = {"segment": "BUILDING", "country": "GERMANY"}
DENIED = {"tpch.customer": ("c_address", "c_phone", "c_comment"),
          "tpcds.customer": ("c_email_address", "c_login", "c_birth_day")}
# The hand-written policy: what the restricted role's tables hold, as views over the raw file.
VIEWS = {"tpch": {"customer": "c_mktsegment = 'BUILDING'"}, "tpcds": {"customer": "c_birth_country = 'GERMANY'"}}


@pytest.fixture(scope="session")
def benchmarks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tpc.Benchmark]:
    folder = tmp_path_factory.mktemp("tpc")
    try:
        return tpc.generate(folder, SF)
    except tpc.Unavailable as exc:
        if os.environ.get("SAFEROOM_REQUIRE_TPC"):
            raise
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def tpc_policies(benchmarks: dict[str, tpc.Benchmark], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tpc-policy")
    (folder / "token.key").write_text("tpc-test-key-" * 4)
    policies = {}
    for name, benchmark in benchmarks.items():
        policy = policies[name] = folder / f"{name}.yaml"
        policy.write_text(tpc.policy(benchmark, folder / "token.key", restricted=RESTRICTED[name]))
        _tag_denied(policy)
    return policies


def _tag_denied(policy: Path) -> None:
    import yaml

    document = yaml.safe_load(policy.read_text())
    for table, columns in DENIED.items():
        for column in columns:
            if table in document["tables"]:
                document["tables"][table][column] = "pii"
    document["users"]["rita"]["attributes"] = ATTRIBUTES
    policy.write_text(yaml.safe_dump(document, sort_keys=False))


@pytest.fixture(scope="session")
def everything(tpc_policies: dict[str, Path]) -> Iterator[dict[str, saferoom.Session]]:
    yield from _sessions(tpc_policies, "ana")


@pytest.fixture(scope="session")
def restricted(tpc_policies: dict[str, Path]) -> Iterator[dict[str, saferoom.Session]]:
    yield from _sessions(tpc_policies, "rita")


def _sessions(policies: dict[str, Path], user: str) -> Iterator[dict[str, saferoom.Session]]:
    sessions = {name: saferoom.connect(policy, user=user) for name, policy in policies.items()}
    try:
        yield sessions
    finally:
        for session in sessions.values():
            session.close()


def _cases(name: str) -> list[Any]:
    counts = {"tpch": 22, "tpcds": 99}
    return [pytest.param(name, n, id=f"{name}-q{n:02d}") for n in range(1, counts[name] + 1)]


CASES = _cases("tpch") + _cases("tpcds")


def direct(benchmark: tpc.Benchmark, sql: str, restricted: bool = False) -> answers.Answer:
    """The query on the raw file, or over views that apply the restricted role's policy by hand."""
    return answers.direct(benchmark.database, sql, {t: _view(benchmark, t, restricted) for t in benchmark.tables()})


def _view(benchmark: tpc.Benchmark, table: str, restricted: bool) -> str:
    denied = DENIED.get(f"{benchmark.name}.{table}", ()) if restricted else ()
    exclude = f" EXCLUDE ({', '.join(denied)})" if denied else ""
    where = VIEWS[benchmark.name].get(table, "true") if restricted else "true"
    return f"SELECT *{exclude} FROM raw.{table} WHERE {where}"


@pytest.mark.parametrize(("name", "number"), CASES)
def test_allow_all_answers_exactly_as_direct(benchmarks: dict[str, tpc.Benchmark], everything: dict[str, saferoom.Session],
                                             name: str, number: int) -> None:
    benchmark = benchmarks[name]
    sql = benchmark.queries[number]
    answers.same(answers.guarded(everything[name], sql), direct(benchmark, sql))


@pytest.mark.parametrize(("name", "number"), CASES)
def test_restricted_answers_what_the_policy_implies(benchmarks: dict[str, tpc.Benchmark],
                                                   restricted: dict[str, saferoom.Session], name: str, number: int) -> None:
    benchmark = benchmarks[name]
    sql = benchmark.queries[number]
    named = [c for c in DENIED[f"{name}.customer"] if c in sql.lower()]
    if named:
        with pytest.raises(saferoom.QueryRejected, match="is denied it") as refused:
            restricted[name].query(sql)
        assert refused.value.column.split(".")[-1] in named
        return
    answers.same(answers.guarded(restricted[name], sql), direct(benchmark, sql, restricted=True))
