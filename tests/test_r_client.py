"""The R package in clients/r against a real gateway: `R CMD check` runs its testthat suite, DBItest included."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from saferoom.client import RemoteSession
from tests.gateway_helpers import HUNG, serving

R_PACKAGE = Path(__file__).resolve().parent.parent / "clients" / "r"
R = shutil.which("R")
if R is None:
    if os.environ.get("SAFEROOM_REQUIRE_R"):
        raise RuntimeError("R is required (apt-get install r-base-core r-cran-dbi r-cran-curl r-cran-jsonlite ...; see .ci/run)")
    pytest.skip("R is not installed (Debian: r-base-core and the r-cran-* packages .ci/run installs)", allow_module_level=True)

# about a million rows: every order beside each of the first 67 orders
LARGE = ("select a.order_id, b.order_id as other, a.amount, a.region, a.created_at, a.customer_id "
         "from prod.orders a join prod.orders b on b.order_id <= 67")


@pytest.fixture(scope="module")
def server(room, tmp_path_factory):
    yield from serving(room, tmp_path_factory, "r-gateway")


def expected_answers(url: str, investigator: str, analyst: str) -> dict[str, object]:
    """What the Python client gets for the queries the R tests make."""
    alice, ivan = RemoteSession(url, analyst), RemoteSession(url, investigator)
    orders = alice.query("select order_id, amount, region, created_at from prod.orders order by order_id limit 5").to_pylist()
    regions = ivan.query("select region, count(*) as n, sum(amount) as total from prod.orders group by region order by region")
    (large,) = ivan.query(f"select count(*) as rows, sum(amount) as amount from ({LARGE})").to_pylist()
    return {
        "orders": [{"order_id": o["order_id"], "amount": float(o["amount"]), "created_at": f"{o['created_at']:%Y-%m-%d %H:%M:%S}"}
                   for o in orders],
        "regions": [{**r, "total": float(r["total"])} for r in regions.to_pylist()],
        "large": {"sql": LARGE, "rows": large["rows"], "amount": float(large["amount"])},
    }


def test_r_cmd_check_passes_against_a_real_gateway(server, tmp_path: Path) -> None:
    investigator, analyst, limited = server.token("ivan"), server.token("alice"), server.token("sam")
    expected = tmp_path / "expected.json"
    expected.write_text(json.dumps(expected_answers(server.url, investigator, analyst)))
    env = {**os.environ, "SAFEROOM_TEST_URL": server.url, "SAFEROOM_TEST_TOKEN": investigator,
           "SAFEROOM_TEST_ANALYST_TOKEN": analyst, "SAFEROOM_TEST_LIMITED_TOKEN": limited, "SAFEROOM_TEST_EXPECTED": str(expected),
           "_R_CHECK_FUTURE_FILE_TIMESTAMPS_": "false", "_R_CHECK_SYSTEM_CLOCK_": "false", "TZ": "UTC"}
    env.pop("SAFEROOM_URL", None)
    env.pop("SAFEROOM_TOKEN", None)
    built = subprocess.run([R, "CMD", "build", "--no-build-vignettes", str(R_PACKAGE)], cwd=tmp_path, env=env, check=False,
                           capture_output=True, text=True, timeout=HUNG)
    assert built.returncode == 0, built.stdout + built.stderr
    (tarball,) = tmp_path.glob("saferoom_*.tar.gz")
    checked = subprocess.run([R, "CMD", "check", "--no-manual", tarball.name], cwd=tmp_path, env=env, check=False,
                             capture_output=True, text=True, timeout=HUNG)
    tests = tmp_path / "saferoom.Rcheck" / "tests" / "testthat.Rout"
    report = checked.stdout + checked.stderr + (tests.read_text() if tests.exists() else "")
    assert checked.returncode == 0, report
    status = re.search(r"^Status: (.*)$", checked.stdout, re.M)
    assert status and "ERROR" not in status.group(1) and "WARNING" not in status.group(1), report
    summary = re.search(r"\[ FAIL (\d+) \| WARN (\d+) \| SKIP (\d+) \| PASS (\d+) \]", tests.read_text())
    assert summary, report
    failed, warned, _, passed = map(int, summary.groups())
    assert (failed, warned) == (0, 0), report
    assert passed >= 200, report  # our cases and DBItest's ran, not skipped for want of a gateway
    assert "no gateway" not in tests.read_text()
