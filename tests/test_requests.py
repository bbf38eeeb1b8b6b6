"""Release requests end to end on a real gateway: upload, check, two reviews, the outbox; and every refusal."""

from __future__ import annotations

import json

import pytest

from tests.requests_helpers import Gateway, start

CSV = b"region,total\nEU,1200\nUS,3400\n"
LEAKY = b"name,email,ssn\nZed Canary,zed.canary@gmail.com,212-45-6789\n"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    running = start(tmp_path_factory.mktemp("requests"))
    yield running
    running.server.stop()


def audit(gateway: Gateway, request_id: str) -> list[dict]:
    return [r for r in gateway.ok("boss", "GET", "/v1/audit", params={"limit": 10000}) if r.get("request_id") == request_id]


def test_a_release_with_two_approvals_lands_in_the_outbox_with_its_manifest(gateway) -> None:
    folder = gateway.server.state.parent / "work"
    folder.mkdir()
    (folder / "summary.csv").write_bytes(CSV)
    done = gateway.cli("ana", "release", "request", str(folder / "summary.csv"), "--reason", "q3 report", "--json")
    assert done.returncode == 0, done.stderr
    request = json.loads(done.stdout)
    assert request["state"] == "submitted" and request["check"]["files"] == 1
    assert gateway.review("rev1", request).json()["state"] == "submitted"  # one of two
    assert not (gateway.outbox / request["id"]).exists()
    assert gateway.review("rev2", request).json()["state"] == "released"
    released = gateway.outbox / request["id"]
    assert (released / "summary.csv").read_bytes() == CSV
    manifest = json.loads((released / "manifest.json").read_text())
    assert manifest["files"] == request["files"] and {r["user"] for r in manifest["reviewers"]} == {"rev1", "rev2"}
    assert json.loads((released / "check.json").read_text())["files"] == 1
    trail = audit(gateway, request["id"])
    assert [r["state"] for r in trail if r["action"] == "state"] == ["submitted", "submitted", "approved", "released"]
    assert all(r["files"] == {"summary.csv": request["files"][0]["sha256"]} for r in trail if r["action"] == "state")


def test_findings_are_attached_and_reviewers_see_them_first(gateway) -> None:
    request = gateway.release("ana", {"people.csv": LEAKY})
    shown = gateway.ok("rev1", "GET", f"/v1/requests/{request['id']}")
    assert shown["findings"] >= 1 and any(f["file"] == "people.csv" and f["kind"] == "email" for f in shown["check"]["findings"])
    assert "zed.canary@gmail.com" not in json.dumps(shown) and "212-45-6789" not in json.dumps(shown)  # a finding shows a masked preview, never the value


def test_the_requester_never_approves_their_own_request(gateway) -> None:
    request = gateway.release("rev3", {"mine.csv": CSV})
    refused = gateway.review("rev3", request)
    assert refused.status_code == 409 and "own request" in refused.json()["error"]["message"]


def test_one_reviewer_approves_once(gateway) -> None:
    request = gateway.release("ana", {"twice.csv": CSV})
    assert gateway.review("rev1", request).status_code == 200
    again = gateway.review("rev1", request)
    assert again.status_code == 409 and "already approved" in again.json()["error"]["message"]
    assert gateway.ok("ana", "GET", f"/v1/requests/{request['id']}")["state"] == "submitted"


def test_a_changed_file_needs_review_again(gateway) -> None:
    request = gateway.release("ana", {"table.csv": CSV})
    assert gateway.review("rev1", request).status_code == 200  # rev1 approved version one
    gateway.ok("ana", "PUT", f"/v1/requests/{request['id']}/files/table.csv", content=CSV + b"ASIA,9\n")
    stale = gateway.review("rev2", request)  # rev2 looked at version one; the file has changed since
    assert stale.status_code == 409
    resubmitted = gateway.ok("ana", "POST", f"/v1/requests/{request['id']}/submit")
    stale = gateway.review("rev2", request)
    assert stale.status_code == 409 and "changed since you looked" in stale.json()["error"]["message"]
    assert gateway.review("rev2", resubmitted).json()["state"] == "submitted"  # rev1's approval was of another version
    assert not (gateway.outbox / request["id"]).exists()
    assert gateway.review("rev1", resubmitted).json()["state"] == "released"
    assert (gateway.outbox / request["id"] / "table.csv").read_bytes() == CSV + b"ASIA,9\n"


def test_a_file_altered_behind_the_reviewers_back_is_never_released(gateway) -> None:
    request = gateway.release("ana", {"model.txt": b"weights 1 2 3\n"})
    assert gateway.review("rev1", request).status_code == 200
    (gateway.server.state / "requests" / "files" / request["id"] / "model.txt").write_bytes(b"weights and a secret\n")
    refused = gateway.review("rev2", request)
    assert refused.status_code == 409 and "not the version its reviewers approved" in refused.json()["error"]["message"]
    assert not (gateway.outbox / request["id"]).exists()


def test_a_rejected_request_never_reaches_the_outbox(gateway) -> None:
    request = gateway.release("ana", {"rows.csv": LEAKY})
    assert gateway.review("rev1", request, "reject", comment="row level data").json()["state"] == "rejected"
    late = gateway.review("rev2", request)
    assert late.status_code == 409
    assert not (gateway.outbox / request["id"]).exists()


def test_a_returned_request_carries_comments_per_file(gateway) -> None:
    request = gateway.release("ana", {"a.csv": CSV, "b.csv": CSV})
    returned = gateway.review("rev1", request, "return", comments={"b.csv": "round the totals"}).json()
    assert returned["state"] == "returned" and returned["reviews"][-1]["comments"] == {"b.csv": "round the totals"}
    assert gateway.review("rev2", request).status_code == 409  # not before it is submitted again


def test_someone_elses_request_is_not_found_as_if_it_did_not_exist(gateway) -> None:
    request = gateway.release("ana", {"private.csv": CSV})
    theirs = gateway.call("bob", "GET", f"/v1/requests/{request['id']}")
    missing = gateway.call("bob", "GET", "/v1/requests/rq_00000000000000000000")
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["error"]["message"].replace(request["id"], "X") == missing.json()["error"]["message"].replace(
        "rq_00000000000000000000", "X")
    assert gateway.call("bob", "GET", f"/v1/requests/{request['id']}/files/private.csv").status_code == 404
    assert gateway.call("bob", "PUT", f"/v1/requests/{request['id']}/files/x.csv", content=b"1").status_code == 404
    assert request["id"] not in json.dumps(gateway.ok("bob", "GET", "/v1/requests"))


def test_a_forged_reviewer_identity_counts_for_nothing(gateway) -> None:
    request = gateway.release("ana", {"forged.csv": CSV})
    seen = {f["name"]: f["sha256"] for f in request["files"]}
    for body in ({"verdict": "approve", "files": seen, "reviewer": "rev1"}, {"verdict": "approve", "files": seen, "user": "rev2"}):
        forged = gateway.call("ana", "POST", f"/v1/requests/{request['id']}/review", json=body,
                              headers={"X-Saferoom-User": "rev1", "X-Forwarded-User": "rev1"})
        assert forged.status_code in (409, 422)
    bob = gateway.call("bob", "POST", f"/v1/requests/{request['id']}/review", json={"verdict": "approve", "files": seen})
    assert bob.status_code == 404  # not a reviewer, not the requester: the request does not exist for him
    assert gateway.ok("ana", "GET", f"/v1/requests/{request['id']}")["reviews"] == []


@pytest.mark.parametrize("name", ["../escape.csv", "..", ".hidden", "a/b.csv", "/etc/passwd", "bad\x00.csv", "x" * 300,
                                  "manifest.json", "line\nbreak.csv"])
def test_unsafe_file_names_are_refused(gateway, name: str) -> None:
    request = gateway.ok("ana", "POST", "/v1/requests/release", json={"reason": "names"})
    response = gateway.call("ana", "PUT", f"/v1/requests/{request['id']}/files/{httpx_quote(name)}", content=b"data")
    assert response.status_code in (400, 404, 405, 409), response.text
    assert not list((gateway.server.state / "requests" / "files").glob(f"{request['id']}/*"))
    assert not (gateway.server.state.parent / "escape.csv").exists()


def httpx_quote(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")


def test_a_link_planted_in_the_request_area_is_not_followed(gateway) -> None:
    request = gateway.ok("ana", "POST", "/v1/requests/release", json={"reason": "links"})
    folder = gateway.server.state / "requests" / "files" / request["id"]
    folder.mkdir(parents=True)
    target = gateway.server.state.parent / "outside.txt"
    target.write_text("untouched")
    (folder / ".x.csv.part").symlink_to(target)
    gateway.ok("ana", "PUT", f"/v1/requests/{request['id']}/files/x.csv", content=b"new")
    assert target.read_text() == "untouched" and (folder / "x.csv").read_bytes() == b"new"


def test_the_client_refuses_to_release_a_link(gateway, tmp_path) -> None:
    (tmp_path / "secret").write_text("not for release")
    (tmp_path / "innocent.csv").symlink_to(tmp_path / "secret")
    done = gateway.cli("ana", "release", "request", str(tmp_path / "innocent.csv"), "--reason", "x")
    assert done.returncode != 0 and "not a regular file" in done.stderr


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A gateway whose request area takes little: 1,000 bytes a file, 1,500 a request."""
    running = start(tmp_path_factory.mktemp("small"), "--max-upload-bytes", "1000", "--max-request-bytes", "1500")
    yield running
    running.server.stop()


def _chunked(size: int):
    for _ in range(size // 100):
        yield b"x" * 100


def test_huge_files_are_refused_while_they_arrive(small) -> None:
    request = small.ok("ana", "POST", "/v1/requests/release", json={"reason": "big"})
    path = f"/v1/requests/{request['id']}/files/big.csv"
    declared = small.call("ana", "PUT", path, content=b"x" * 5000)  # refused on its declared length
    streamed = small.call("ana", "PUT", path, content=_chunked(50_000))  # no length declared: refused past the cap
    assert declared.status_code == streamed.status_code == 413, streamed.text
    assert "at most 1,000 bytes a file" in streamed.json()["error"]["message"]
    assert small.ok("ana", "PUT", path, content=b"x" * 900)["size"] == 900
    over = small.call("ana", "PUT", f"/v1/requests/{request['id']}/files/second.csv", content=b"x" * 900)
    assert over.status_code == 413  # the request as a whole is over 1,500
    folder = small.server.state / "requests" / "files" / request["id"]
    assert sorted(p.name for p in folder.iterdir()) == ["big.csv"]  # no part file left behind
    assert [f["name"] for f in small.ok("ana", "GET", f"/v1/requests/{request['id']}")["files"]] == ["big.csv"]


def test_a_user_cannot_flood_the_request_area_with_open_requests(small) -> None:
    made = [small.call("bob", "POST", "/v1/requests/release", json={"reason": f"flood {i}"}) for i in range(21)]
    assert [r.status_code for r in made] == [200] * 20 + [429]
    assert "withdraw one" in made[-1].json()["error"]["message"]
    small.ok("bob", "POST", f"/v1/requests/{made[0].json()['id']}/withdraw")
    assert small.call("bob", "POST", "/v1/requests/release", json={"reason": "room again"}).status_code == 200
    assert small.call("ana", "POST", "/v1/requests/release", json={"reason": "others unaffected"}).status_code == 200


def test_an_oversized_reason_is_refused(small) -> None:
    assert small.call("ana", "POST", "/v1/requests/release", json={"reason": "r" * 5000}).status_code == 422


def test_a_release_the_outbox_refused_is_delivered_again_by_a_reviewer(gateway) -> None:
    outbox = gateway.outbox
    aside = outbox.with_name("outbox-aside")
    outbox.rename(aside)
    outbox.write_bytes(b"")  # a file where the outbox should be: nobody writes into it, root included
    try:
        request = gateway.release("ana", {"late.csv": CSV})
        assert gateway.review("rev1", request).json()["state"] == "submitted"
        failed = gateway.review("rev2", request)
        assert failed.status_code == 200 and failed.json()["state"] == "delivery-failed"  # the approval is kept
        again = gateway.cli("rev1", "requests", "deliver", request["id"])
        assert again.returncode == 14 and "still not delivered" in " ".join((again.stdout + again.stderr).split())
        assert gateway.call("ana", "POST", f"/v1/requests/{request['id']}/deliver").status_code == 409  # reviewers only
    finally:
        outbox.unlink()
        aside.rename(outbox)
    done = gateway.cli("rev1", "requests", "deliver", request["id"], "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["state"] == "released"
    assert (outbox / request["id"] / "late.csv").read_bytes() == CSV
    assert not [p for p in outbox.iterdir() if p.name.startswith(".")]  # no staging left behind
    trail = [r for r in audit(gateway, request["id"]) if r["action"] == "state"]
    assert [r["state"] for r in trail][-4:] == ["approved", "delivery-failed", "delivery-failed", "released"]
    assert trail[-2]["problem"] == "Not a directory"
