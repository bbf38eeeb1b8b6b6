"""Package requests: approved, the package joins the next `packages sync` (a real one, against a local index),
and the requester's request is marked landed once the published snapshot admits it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.gateway_helpers import eventually
from tests.requests_helpers import start
from tests.wheels import Upstream, make_wheel, write_upstream

PACKAGES = """\
version: 1
sources: {}
tables: {}
packages:
  requirements: [alpha]
  licenses: [MIT]
  vulnerabilities: osv/
  allow_empty_vulnerabilities: true
"""


@pytest.fixture()
def upstream(tmp_path: Path):
    files = tmp_path / "upstream" / "files"
    files.mkdir(parents=True)
    wheels = [make_wheel(files, "alpha", "1.0", expression="MIT"), make_wheel(files, "zeta", "1.0", expression="MIT"),
              make_wheel(files, "zeta", "2.0", expression="MIT")]
    write_upstream(tmp_path / "upstream", wheels)
    (tmp_path / "osv").mkdir()
    (tmp_path / "packages.yaml").write_text(PACKAGES)
    serving = Upstream(tmp_path / "upstream")
    yield serving
    serving.close()


def test_an_approved_package_is_in_the_next_sync_and_the_requester_told_it_landed(upstream, tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    (tmp_path / "gw").mkdir()
    gateway = start(tmp_path / "gw", "--packages", str(mirror))
    try:
        done = gateway.cli("ana", "packages", "request", "zeta==1.0", "--reason", "for the survival models", "--json")
        assert done.returncode == 0, done.stderr
        asked = json.loads(done.stdout)
        assert asked["state"] == "submitted"
        approved = gateway.cli("boss", "requests", "approve", asked["id"])
        assert approved.returncode == 0, approved.stderr
        wanted = gateway.server.state / "requests" / "approved-packages.txt"
        assert wanted.read_text() == "zeta==1.0\n"
        synced = gateway.cli("boss", "packages", "sync", "--policy", str(tmp_path / "packages.yaml"), "--dest", str(mirror),
                             "--index-url", upstream.url, "--requested", str(wanted))
        assert synced.returncode == 0, synced.stdout + synced.stderr
        admitted = {(p["project"], p["version"]) for p in json.loads((mirror / "latest" / "report.json").read_text())["admitted"]}
        assert ("zeta", "1.0") in admitted and ("zeta", "2.0") not in admitted
        eventually(lambda: gateway.ok("ana", "GET", f"/v1/requests/{asked['id']}")["state"] == "landed", "the request lands")
    finally:
        gateway.server.stop()


def test_package_requests_outside_the_shape_are_refused(tmp_path: Path) -> None:
    (tmp_path / "gw").mkdir()
    gateway = start(tmp_path / "gw")
    try:
        for requirement in ("zeta>=1; os_name=='nt'", "git+https://example.com/x.git", "../x", "zeta @ file:///etc", "-e ."):
            refused = gateway.call("ana", "POST", "/v1/requests/packages", json={"requirement": requirement, "reason": "x"})
            assert refused.status_code == 409, requirement
        asked = gateway.ok("ana", "POST", "/v1/requests/packages", json={"requirement": "Zeta", "reason": "x"})
        assert asked["detail"]["requirement"] == "zeta"
        assert gateway.call("rev1", "GET", f"/v1/requests/{asked['id']}").status_code == 404  # release reviewers only
        assert gateway.review("ana", asked).status_code == 409
    finally:
        gateway.server.stop()
