"""Offline packages: a curated, audited snapshot that plain pip installs from, and nothing else."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import saferoom
from saferoom.errors import PackagesError, UsageError
from saferoom.packages import check, sync, vulnerability_export
from tests.wheels import Upstream, make_wheel, write_release, write_upstream

POLICY = """\
version: 1
sources: {}
tables: {}
packages:
  requirements: [alpha, gamma, "delta>=2", epsilon]
  python: ["3.11", "3.12"]
  platforms: [manylinux_2_17_x86_64, macosx_11_0_arm64]
  licenses: [MIT, Apache-2.0, BSD-3-Clause]
  deny: ["delta>=2.5"]
  vulnerabilities: osv/
  fallback: previous-clean
"""

ADVISORY = {
    "id": "PYSEC-2026-1", "summary": "beta 1.1 leaks memory",
    "affected": [{"package": {"ecosystem": "PyPI", "name": "beta"}, "versions": ["1.1"]}],
}
NEWER = {
    "id": "GHSA-xxxx-2026", "summary": "alpha is bad before 2.0",
    "affected": [{"package": {"ecosystem": "PyPI", "name": "alpha"},
                  "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "2.0"}]}]}],
}


ONE_TARGET = ("  python: [\"3.11\", \"3.12\"]\n  platforms: [manylinux_2_17_x86_64, macosx_11_0_arm64]",
              "  python: [\"3.11\"]\n  platforms: [manylinux_2_17_x86_64]")


@pytest.fixture()
def world(tmp_path: Path, request: pytest.FixtureRequest):
    files = tmp_path / "upstream" / "files"
    files.mkdir(parents=True)
    wheels = [
        make_wheel(files, "alpha", "1.0", requires=("beta>=1",), expression="MIT"),
        make_wheel(files, "beta", "1.0", license="MIT"),
        make_wheel(files, "beta", "1.1", classifiers=("License :: OSI Approved :: MIT License",)),
        make_wheel(files, "gamma", "1.0", expression="GPL-3.0-only"),
        make_wheel(files, "delta", "2.0", expression="Apache-2.0"),
        make_wheel(files, "delta", "2.5", expression="Apache-2.0"),
        make_wheel(files, "epsilon", "1.0", license="BSD-3-Clause"),
    ]
    write_upstream(tmp_path / "upstream", wheels)
    (tmp_path / "osv").mkdir()
    (tmp_path / "osv" / "PYSEC-2026-1.json").write_text(json.dumps(ADVISORY))
    every_target = request.node.name.startswith("test_sync_admits")
    (tmp_path / "saferoom.yaml").write_text(POLICY if every_target else POLICY.replace(*ONE_TARGET))
    upstream = Upstream(tmp_path / "upstream")
    yield tmp_path, upstream
    upstream.close()


def pip(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update({"PIP_CONFIG_FILE": os.devnull, **(env_extra or {})})
    return subprocess.run([sys.executable, "-m", "pip", *args, "--disable-pip-version-check"], capture_output=True,
                          text=True, env=env, check=False)


def test_sync_admits_clean_versions_and_refuses_with_reasons(world) -> None:
    folder, upstream = world
    report = sync(saferoom.load_policy(folder / "saferoom.yaml"), folder / "mirror", upstream.url)
    admitted = {(e["project"], e["version"]) for e in report.admitted}
    assert admitted == {("alpha", "1.0"), ("beta", "1.0"), ("delta", "2.0"), ("epsilon", "1.0")}
    refused = {(r["project"], r["version"]): r["reason"] for r in report.refused_versions}
    assert "PYSEC-2026-1" in refused[("beta", "1.1")]
    assert "delta>=2.5" in refused[("delta", "2.5")]
    assert refused[("gamma", "1.0")] == "license GPL-3.0-only is not in the allowed list [License-Expression -> GPL-3.0-only]"
    assert report.refused_requirements == [{"requirement": "gamma", "reason": "no allowed version of gamma (1.0: license "
                                            "GPL-3.0-only is not in the allowed list [License-Expression -> GPL-3.0-only])"}]
    assert {(f["project"], f["refused"], f["chosen"]) for f in report.fallbacks} == {("beta", "1.1", "1.0"), ("delta", "2.5", "2.0")}
    epsilon = next(e for e in report.admitted if e["project"] == "epsilon")
    assert epsilon["license"] == {"expression": "BSD-3-Clause", "problem": None, "bundled": [],  # type: ignore[comparison-overlap]
                                  "evidence": [{"source": "License field", "detail": "BSD-3-Clause", "found": "BSD-3-Clause"}]}
    assert report.provenance["vulnerabilities"]["advisories"] == 1  # type: ignore[index]
    assert str(report.provenance["resolver"]).startswith("pip ")
    latest = folder / "mirror" / "latest"
    assert latest.is_symlink() and (folder / "mirror" / report.snapshot).is_dir()
    lock = (latest / "locks" / "py3.11-manylinux_2_17_x86_64.txt").read_text()
    assert "beta==1.0 --hash=sha256:" in lock and "gamma" not in lock
    page = (latest / "simple" / "beta" / "index.html").read_text()
    assert "#sha256=" in page and "beta-1.1" not in page
    assert json.loads((latest / "simple" / "beta" / "index.json").read_text())["files"][0]["hashes"]["sha256"]


def test_pip_installs_from_the_snapshot_offline(world, tmp_path: Path) -> None:
    folder, upstream = world
    sync(saferoom.load_policy(folder / "saferoom.yaml"), folder / "mirror", upstream.url)
    upstream.close()  # the room has no internet
    index = f"file://{folder / 'mirror' / 'latest' / 'simple'}"
    target = tmp_path / "site"
    done = pip("install", "--index-url", index, "--target", str(target), "alpha")
    assert done.returncode == 0, done.stderr
    assert (target / "beta" / "__init__.py").read_text() == "VERSION = '1.0'\n"
    refused = pip("install", "--index-url", index, "--target", str(tmp_path / "other"), "gamma")
    assert refused.returncode != 0
    locked = pip("install", "--index-url", index, "--target", str(tmp_path / "locked"), "--require-hashes",
                 "-r", str(folder / "mirror" / "latest" / "locks" / "py3.11-manylinux_2_17_x86_64.txt"))
    assert locked.returncode == 0, locked.stderr


def test_tampered_wheel_fails_its_hash_and_keeps_the_previous_snapshot(world) -> None:
    folder, upstream = world
    policy = saferoom.load_policy(folder / "saferoom.yaml")
    first = sync(policy, folder / "mirror", upstream.url)
    wheel = folder / "upstream" / "files" / "epsilon-1.0-py3-none-any.whl"
    wheel.write_bytes(wheel.read_bytes() + b"tampered")
    with pytest.raises(PackagesError, match="does not match its published hash"):
        sync(policy, folder / "mirror", upstream.url)
    assert os.readlink(folder / "mirror" / "latest") == first.snapshot
    assert sorted(p.name for p in (folder / "mirror").iterdir()) == [first.snapshot, "failed", "latest"]
    kept = json.loads(next((folder / "mirror" / "failed").iterdir()).read_text())
    assert kept["status"] == "failed" and "published hash" in kept["error"]


def test_tampered_snapshot_wheel_fails_pip_hash_check(world, tmp_path: Path) -> None:
    folder, upstream = world
    sync(saferoom.load_policy(folder / "saferoom.yaml"), folder / "mirror", upstream.url)
    wheel = folder / "mirror" / "latest" / "files" / "beta-1.0-py3-none-any.whl"
    wheel.write_bytes(wheel.read_bytes()[:-10] + b"0123456789")
    done = pip("install", "--index-url", f"file://{folder / 'mirror' / 'latest' / 'simple'}", "--target", str(tmp_path / "t"), "beta")
    assert done.returncode != 0 and "hash" in (done.stdout + done.stderr).lower()


def test_upstream_dying_mid_download_is_a_clear_error(world) -> None:
    folder, upstream = world
    policy = saferoom.load_policy(folder / "saferoom.yaml")
    first = sync(policy, folder / "mirror", upstream.url)
    upstream.break_downloads = True
    shutil.rmtree(folder / "mirror" / ".cache", ignore_errors=True)
    with pytest.raises(PackagesError):
        sync(policy, folder / "mirror", upstream.url)
    assert os.readlink(folder / "mirror" / "latest") == first.snapshot
    assert not [p for p in (folder / "mirror").iterdir() if p.name.startswith(".")]


def test_unresolvable_requirement_is_a_clear_error(world) -> None:
    folder, upstream = world
    (folder / "saferoom.yaml").write_text(POLICY.replace(*ONE_TARGET).replace("epsilon]", "epsilon, zeta]"))
    with pytest.raises(PackagesError, match="`zeta` cannot be resolved") as raised:
        sync(saferoom.load_policy(folder / "saferoom.yaml"), folder / "mirror", upstream.url)
    assert not (folder / "mirror" / "latest").exists()
    kept = next((folder / "mirror" / "failed").iterdir())
    assert str(kept) in str(raised.value) and json.loads(kept.read_text())["status"] == "failed"


def test_corrupt_osv_export_is_a_clear_error(world) -> None:
    folder, upstream = world
    (folder / "osv" / "broken.json").write_text("{not json")
    with pytest.raises(UsageError, match="broken.json"):
        sync(saferoom.load_policy(folder / "saferoom.yaml"), folder / "mirror", upstream.url)


def test_check_reaudits_without_downloading(world) -> None:
    folder, upstream = world
    sync(saferoom.load_policy(folder / "saferoom.yaml"), folder / "mirror", upstream.url)
    upstream.close()
    newer = folder / "osv-newer"
    newer.mkdir()
    (newer / "GHSA.json").write_text(json.dumps(NEWER))
    findings, _ = check(folder / "mirror", newer)
    assert [(f.project, f.version, f.advisories) for f in findings] == [("alpha", "1.0", ("GHSA-xxxx-2026",))]
    assert check(folder / "mirror", folder / "osv")[0] == []
    done = subprocess.run([sys.executable, "-c", "from saferoom.cli import main; main()", "packages", "check",
                           str(folder / "mirror"), "--vulnerabilities", str(newer)], capture_output=True, text=True, check=False)
    assert done.returncode == 1 and "GHSA-xxxx-2026" in done.stdout
    by_policy = subprocess.run([sys.executable, "-c", "from saferoom.cli import main; main()", "packages", "check",
                                str(folder / "mirror"), "--policy", str(folder / "saferoom.yaml")],
                               capture_output=True, text=True, check=False)
    assert by_policy.returncode == 0 and "checked against 1 PyPI advisories" in by_policy.stdout, by_policy.stderr


@pytest.mark.parametrize(("policy", "given", "expected"), [
    (POLICY, "newer", ("newer", False)),                                 # the export given wins
    (POLICY, None, ("osv", False)),                                      # else the policy's, from its folder
    (POLICY.replace("  vulnerabilities: osv/\n", "  allow_empty_vulnerabilities: true\n"), None, (None, True)),
])
def test_the_vulnerability_export_to_check_against(tmp_path: Path, policy: str, given: str | None,
                                                   expected: tuple[str | None, bool]) -> None:
    (tmp_path / "saferoom.yaml").write_text(policy)
    export, allow_empty = vulnerability_export(tmp_path / given if given else None, tmp_path / "saferoom.yaml")
    assert (export.name if export else None, allow_empty) == expected
    if export is not None:
        assert export.parent == tmp_path


def test_no_vulnerability_export_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="give --vulnerabilities"):
        vulnerability_export(None, tmp_path / "no-such-policy.yaml")
    (tmp_path / "saferoom.yaml").write_text(POLICY.replace("  vulnerabilities: osv/\n", ""))
    with pytest.raises(UsageError, match="has none"):
        vulnerability_export(None, tmp_path / "saferoom.yaml")


def test_cli_sync_and_snapshots_side_by_side(world) -> None:
    folder, upstream = world
    run = [sys.executable, "-c", "from saferoom.cli import main; main()", "packages", "sync", "--policy",
           str(folder / "saferoom.yaml"), "--dest", str(folder / "mirror"), "--index-url", upstream.url]
    first = subprocess.run(run, capture_output=True, text=True, check=False)
    assert first.returncode == 12, first.stderr  # published, but a top-level requirement (gamma) was refused
    assert "published without gamma" in first.stderr and "alpha" in first.stdout
    assert "beta 1.0 was chosen instead of 1.1: known vulnerabilities: PYSEC-2026-1" in first.stdout
    second = subprocess.run(run, capture_output=True, text=True, check=False)
    assert second.returncode == 12
    snapshots = sorted(p.name for p in (folder / "mirror").iterdir() if not p.name.startswith(".") and p.name != "latest")
    assert len(snapshots) == 2 and os.readlink(folder / "mirror" / "latest") == snapshots[-1]


def test_the_gateway_serves_the_index_to_authenticated_pip(world, room, tmp_path: Path) -> None:
    from tests.gateway_helpers import Server, free_port, gateway_policy

    folder, upstream = world
    sync(saferoom.load_policy(folder / "saferoom.yaml"), folder / "mirror", upstream.url)
    upstream.close()
    server = Server(gateway_policy(room, tmp_path), tmp_path / "state", free_port(), tmp_path / "server.log")
    server.extra = ["--packages", str(folder / "mirror")]
    server.start()
    try:
        token = server.token("alice")
        host = f"127.0.0.1:{server.port}"
        done = pip("install", "--index-url", f"http://__token__:{token}@{host}/simple/", "--target", str(tmp_path / "site"), "alpha")
        assert done.returncode == 0, done.stdout + done.stderr
        assert (tmp_path / "site" / "alpha" / "__init__.py").exists()
        anonymous = pip("install", "--index-url", f"http://{host}/simple/", "--target", str(tmp_path / "no"), "alpha")
        assert anonymous.returncode != 0
        import httpx

        sneaky = httpx.get(f"http://{host}/files/..%2f..%2fsaferoom.yaml", headers={"Authorization": f"Bearer {token}"})
        assert sneaky.status_code in (400, 404)
    finally:
        server.stop()
    assert '"event": "package"' in (tmp_path / "state" / "audit.log").read_text()


def test_a_full_disk_keeps_the_previous_snapshot(world) -> None:
    """A sync whose files cannot grow (RLIMIT_FSIZE, as on a full disk) fails clearly; `latest` is untouched."""
    folder, upstream = world
    first = sync(saferoom.load_policy(folder / "saferoom.yaml"), folder / "mirror", upstream.url)
    shutil.rmtree(folder / "mirror" / ".cache", ignore_errors=True)  # the wheels must be fetched again
    before = sorted(p.name for p in (folder / "mirror").iterdir())
    limit = 200  # smaller than any wheel or index page
    code = f"import resource; resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); from saferoom.cli import main; main()"
    done = subprocess.run([sys.executable, "-c", code, "packages", "sync", "--policy", str(folder / "saferoom.yaml"),
                           "--dest", str(folder / "mirror"), "--index-url", upstream.url], capture_output=True, text=True, check=False)
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    assert "the disk is full" in done.stderr and "previous snapshot is untouched" in done.stderr, done.stderr
    assert os.readlink(folder / "mirror" / "latest") == first.snapshot
    assert sorted(p.name for p in (folder / "mirror").iterdir()) == before  # no half-made snapshot left
    ok = pip("download", "--no-deps", "--index-url", f"file://{folder / 'mirror' / 'latest' / 'simple'}",
             "--dest", str(folder / "got"), "epsilon")
    assert ok.returncode == 0, ok.stderr


def test_two_syncs_of_one_mirror_do_not_race(world) -> None:
    folder, upstream = world
    policy = saferoom.load_policy(folder / "saferoom.yaml")
    first = sync(policy, folder / "mirror", upstream.url)
    with (folder / ".mirror.sync.lock").open("a") as held:  # as a sync running in another process holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(PackagesError, match="another `saferoom packages sync`"):
            sync(policy, folder / "mirror", upstream.url)
    assert os.readlink(folder / "mirror" / "latest") == first.snapshot
    assert sync(policy, folder / "mirror", upstream.url).snapshot != first.snapshot  # free again once it ends


@pytest.mark.parametrize("content", [
    b"[1, 2]", b'{"id": "X", "affected": [{"package": null}]}', b'{"id": "X", "affected": [{"package": '
    b'{"ecosystem": "PyPI", "name": "beta"}, "ranges": "x"}]}', b'{"id": "X", "affected": [{"package": '
    b'{"ecosystem": "PyPI", "name": "beta"}, "ranges": [{"type": "ECOSYSTEM", "events": [5]}]}]}', b"\xff\xfe\x00",
], ids=["a-list", "null-package", "ranges-as-text", "events-as-numbers", "not-utf8"])
def test_any_malformed_advisory_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    from saferoom.errors import UsageError
    from saferoom.packages.osv import Vulnerabilities

    (tmp_path / "osv").mkdir()
    (tmp_path / "osv" / "bad.json").write_bytes(content)
    with pytest.raises(UsageError, match="not valid OSV JSON: bad.json"):
        Vulnerabilities.load(tmp_path / "osv")


def test_malformed_wheels_are_refused_not_crashed_on(tmp_path: Path) -> None:
    import zipfile

    from saferoom.packages import wheels as wheel_info

    (tmp_path / "notzip-1.0-py3-none-any.whl").write_bytes(b"not a zip")
    with zipfile.ZipFile(tmp_path / "nometa-1.0-py3-none-any.whl", "w") as archive:
        archive.writestr("nometa/__init__.py", "")
    with zipfile.ZipFile(tmp_path / "bomb-1.0-py3-none-any.whl", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("bomb-1.0.dist-info/METADATA", "A" * (wheel_info.MAX_METADATA + 1))  # 16 MiB of 'A' zips to KBs
    (tmp_path / "bad name.whl").write_bytes(b"x")
    for wheel in sorted(tmp_path.iterdir()):
        with pytest.raises(PackagesError, match="nothing was admitted"):
            wheel_info.read(wheel)


def test_a_refused_newest_version_is_reported_not_replaced(world) -> None:
    """Without `fallback`, beta 1.1 (vulnerable) is not swapped for 1.0: alpha, which needs beta, is refused."""
    folder, upstream = world
    (folder / "saferoom.yaml").write_text(POLICY.replace(*ONE_TARGET).replace("  fallback: previous-clean\n", ""))
    report = sync(saferoom.load_policy(folder / "saferoom.yaml"), folder / "mirror", upstream.url)
    assert {(e["project"], e["version"]) for e in report.admitted} == {("delta", "2.0"), ("epsilon", "1.0")}
    refused = {r["requirement"]: r["reason"] for r in report.refused_requirements}
    assert refused["alpha"] == "needs beta 1.1, which is refused: known vulnerabilities: PYSEC-2026-1"
    assert [(f["project"], f["chosen"]) for f in report.fallbacks] == [("delta", "2.0")]  # deny: the policy's own word


def test_a_fallback_older_than_the_limit_is_refused(world) -> None:
    folder, upstream = world
    files = folder / "upstream" / "files"
    write_upstream(folder / "upstream", sorted(files.iterdir()), ages={"beta-1.0-py3-none-any.whl": 1000})
    report = sync(saferoom.load_policy(folder / "saferoom.yaml"), folder / "mirror", upstream.url)
    refused = {r["requirement"]: r["reason"] for r in report.refused_requirements}
    assert "alpha" in refused and "past fallback_max_age_days (365)" in refused["alpha"]
    assert "beta" not in {e["project"] for e in report.admitted}


CAPTURED = Path(__file__).parent / "fixtures" / "pypi" / "pycrypto-2.6.1.json"  # pypi.org's JSON API, trimmed


def captured_vulnerabilities() -> list[dict[str, object]]:
    return json.loads(CAPTURED.read_text())["vulnerabilities"]


def test_an_index_advisory_refuses_a_release_as_a_feed_advisory_does(world) -> None:
    folder, upstream = world
    write_release(folder / "upstream", "epsilon", "1.0", captured_vulnerabilities())
    also = {"id": "GHSA-beta-2026", "aliases": ["PYSEC-2026-1"], "fixed_in": ["1.2"], "withdrawn": None}
    write_release(folder / "upstream", "beta", "1.1", [also])
    report = sync(saferoom.load_policy(folder / "saferoom.yaml"), folder / "mirror", upstream.url)
    refused = {r["project"]: r for r in report.refused_versions}
    assert refused["epsilon"]["reason"] == "known vulnerabilities: PYSEC-2017-94, PYSEC-2018-97"
    assert refused["epsilon"]["kind"] == "vulnerable"
    assert refused["epsilon"]["advisories"] == [{"id": "PYSEC-2017-94", "fixed_in": [], "sources": ["index"]},
                                                {"id": "PYSEC-2018-97", "fixed_in": [], "sources": ["index"]}]
    assert refused["beta"]["reason"] == "known vulnerabilities: PYSEC-2026-1 (fixed in 1.2)"
    assert refused["beta"]["advisories"] == [{"id": "PYSEC-2026-1", "fixed_in": ["1.2"], "sources": ["osv-export", "index"]}]
    assert {r["requirement"] for r in report.refused_requirements} == {"gamma", "epsilon"}
    asked = report.provenance["index_vulnerabilities"]
    assert asked["source"] == upstream.url.removesuffix("/simple") + "/pypi"  # type: ignore[index]
    assert asked["advisories"] == 3 and asked["withdrawn_skipped"] == 0 and asked["asked_at"]  # type: ignore[index]
    assert asked["releases"] == 7  # type: ignore[index]  # every release chosen in any round, each asked once
    assert report.provenance["vulnerabilities"]["advisories"] == 1  # type: ignore[index]


def test_a_withdrawn_index_advisory_does_not_refuse(world) -> None:
    folder, upstream = world
    withdrawn = [{**v, "withdrawn": "2024-06-01T00:00:00Z"} for v in captured_vulnerabilities()]
    write_release(folder / "upstream", "epsilon", "1.0", withdrawn)
    report = sync(saferoom.load_policy(folder / "saferoom.yaml"), folder / "mirror", upstream.url)
    assert ("epsilon", "1.0") in {(e["project"], e["version"]) for e in report.admitted}
    asked = report.provenance["index_vulnerabilities"]
    assert asked["advisories"] == 0 and asked["withdrawn_skipped"] == 2  # type: ignore[index]


@pytest.mark.parametrize(("failure", "said"), [("500", "answered HTTP 500"), ("slow", "no answer within 0.5 s"),
                                               ("garbage", "not the JSON API's release page")])
def test_an_index_that_cannot_answer_fails_the_sync_closed(world, monkeypatch: pytest.MonkeyPatch, failure: str,
                                                           said: str) -> None:
    from saferoom.packages import advisories

    folder, upstream = world
    first = sync(saferoom.load_policy(folder / "saferoom.yaml"), folder / "mirror", upstream.url)
    monkeypatch.setattr(advisories, "TIMEOUT", 0.5)
    upstream.release_pages = failure  # each sync asks afresh: yesterday's answer is not today's
    with pytest.raises(PackagesError, match=r"the index's vulnerability data for [a-z]+ [\d.]+ could not be read: "
                       r"http://127\.0\.0\.1:\d+/pypi/[a-z]+/[\d.]+/json ") as raised:
        sync(saferoom.load_policy(folder / "saferoom.yaml"), folder / "mirror", upstream.url)
    assert said in str(raised.value) and "set `index_vulnerabilities: false`" in str(raised.value)
    assert os.readlink(folder / "mirror" / "latest") == first.snapshot
    kept = json.loads(next((folder / "mirror" / "failed").iterdir()).read_text())
    assert kept["status"] == "failed" and said in kept["error"]


def test_opting_out_of_the_index_advisories_is_explicit_and_recorded(world) -> None:
    folder, upstream = world
    upstream.release_pages = "500"
    policy = folder / "saferoom.yaml"
    policy.write_text(policy.read_text().replace("  vulnerabilities: osv/\n", "  vulnerabilities: osv/\n  index_vulnerabilities: false\n"))
    report = sync(saferoom.load_policy(policy), folder / "mirror", upstream.url)
    assert report.admitted and report.provenance["index_vulnerabilities"] == {
        "source": None, "skipped": "index_vulnerabilities: false in the policy: the local OSV feed alone was consulted"}
    assert "PYSEC-2026-1" in {r["project"]: r["reason"] for r in report.refused_versions}["beta"]


@pytest.mark.parametrize(("index", "api"), [
    ("https://pypi.org/simple", "https://pypi.org/pypi"), ("https://pypi.org/simple/", "https://pypi.org/pypi"),
    ("https://u:secret@proxy.internal/repo/simple/", "https://u:secret@proxy.internal/repo/pypi"),
    ("file:///srv/packages/latest/simple", None), ("https://proxy.internal/root/pypi/+simple/", None),
])
def test_the_json_api_is_found_beside_the_simple_index(index: str, api: str | None) -> None:
    from saferoom.packages.advisories import api_base

    if api is None:
        with pytest.raises(UsageError, match="`index_vulnerabilities: false`"):
            api_base(index)
    else:
        assert api_base(index) == api
