"""An approved release the outbox does not take (an outbox that cannot be written, a folder in the way) is
neither lost nor half-written: the request says its delivery failed, and delivering again is idempotent."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from saferoom.audit import read
from saferoom.errors import RequestRefused
from saferoom.identity import Identity
from saferoom.requests import Request, Requests, State, Verdict
from tests.test_request_engine import make

CSV = b"region,total\nEU,1200\nUS,3400\n"


def who(user: str) -> Identity:
    return Identity(user, None, "token")


@pytest.fixture()
def requests(tmp_path: Path):
    made, audit = make(tmp_path)
    yield made
    made.close()
    audit.close()


def approved(requests: Requests, requester: str = "ana", content: bytes = CSV) -> Request:
    asked = requests.release.request(who(requester), "q3 report")
    requests.release.upload(asked.id, who(requester), "summary.csv", [content])
    submitted = requests.release.submit(asked.id, who(requester))
    requests.engine.review(asked.id, who("rev1"), Verdict.APPROVE, submitted.hashes)
    return requests.engine.review(asked.id, who("rev2"), Verdict.APPROVE, submitted.hashes)


def trail(requests: Requests, request_id: str) -> list[dict]:
    state = requests.release.outbox.parent / "state"  # where `make` keeps the audit log
    return [r for r in read(state) if r.get("request_id") == request_id and r["action"] == "state"]


def test_an_outbox_that_cannot_be_written_leaves_the_release_delivery_failed_then_delivered(requests: Requests) -> None:
    outbox = requests.release.outbox
    shutil.rmtree(outbox)
    outbox.write_bytes(b"not a folder")  # what root cannot write past either
    request = approved(requests)
    assert request.state is State.DELIVERY_FAILED
    assert requests.engine.store.get(request.id).state is State.DELIVERY_FAILED  # type: ignore[union-attr]
    assert outbox.read_bytes() == b"not a folder"
    failed = trail(requests, request.id)[-1]
    assert failed["state"] == "delivery-failed" and failed["problem"] == "Not a directory"

    with pytest.raises(RequestRefused, match="reviewer of releases"):
        requests.release.deliver(request.id, who("ana"))  # the requester does not push their own release out
    with pytest.raises(RequestRefused, match="still not delivered"):
        requests.release.deliver(request.id, who("rev1"))  # still failing: said so, nothing written
    assert requests.engine.store.get(request.id).state is State.DELIVERY_FAILED  # type: ignore[union-attr]

    outbox.unlink()
    outbox.mkdir()
    delivered = requests.release.deliver(request.id, who("rev1"))
    assert delivered.state is State.RELEASED
    assert (outbox / request.id / "summary.csv").read_bytes() == CSV
    assert json.loads((outbox / request.id / "manifest.json").read_text())["request"] == request.id
    assert [r["state"] for r in trail(requests, request.id)][-3:] == ["delivery-failed", "delivery-failed", "released"]
    with pytest.raises(RequestRefused, match="released"):
        requests.release.deliver(request.id, who("rev1"))
    assert sorted(os.listdir(outbox)) == [request.id]


def test_a_failure_after_the_files_were_written_leaves_nothing_half_written(requests: Requests) -> None:
    outbox = requests.release.outbox
    asked = requests.release.request(who("ana"), "q3 report")
    in_the_way = outbox / asked.id
    in_the_way.mkdir()
    (in_the_way / "someone-else.csv").write_bytes(b"x")  # the rename into place fails: the folder is not empty
    requests.release.upload(asked.id, who("ana"), "summary.csv", [CSV])
    submitted = requests.release.submit(asked.id, who("ana"))
    requests.engine.review(asked.id, who("rev1"), Verdict.APPROVE, submitted.hashes)
    request = requests.engine.review(asked.id, who("rev2"), Verdict.APPROVE, submitted.hashes)
    assert request.state is State.DELIVERY_FAILED
    assert sorted(os.listdir(outbox)) == [asked.id]  # the staging folder is gone
    assert os.listdir(in_the_way) == ["someone-else.csv"]  # and what was there is untouched


def test_delivering_what_the_outbox_already_holds_only_records_it(requests: Requests) -> None:
    outbox = requests.release.outbox
    shutil.rmtree(outbox)
    outbox.write_bytes(b"")
    request = approved(requests)
    outbox.unlink()
    outbox.mkdir()
    target = requests.release._write_outbox(request, request.approvals())  # a delivery that stopped before recording
    written = (target / "summary.csv").stat()
    assert requests.release.deliver(request.id, who("rev2")).state is State.RELEASED
    assert (target / "summary.csv").stat().st_ino == written.st_ino  # not written twice


def test_a_reviewer_does_not_deliver_their_own_release(requests: Requests) -> None:
    outbox = requests.release.outbox
    shutil.rmtree(outbox)
    outbox.write_bytes(b"")
    request = approved(requests, requester="rev3")  # rev3 reviews releases too
    outbox.unlink()
    outbox.mkdir()
    with pytest.raises(RequestRefused, match="not its requester"):
        requests.release.deliver(request.id, who("rev3"))
    assert os.listdir(outbox) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_outbox(requests: Requests) -> None:
    outbox = requests.release.outbox
    outbox.chmod(0o500)
    try:
        request = approved(requests)
        assert request.state is State.DELIVERY_FAILED and os.listdir(outbox) == []
    finally:
        outbox.chmod(0o700)
    assert requests.release.deliver(request.id, who("rev1")).state is State.RELEASED


@contextmanager
def full_disk(folder: Path, size: str) -> Iterator[None]:
    """A tmpfs of ``size`` mounted on ``folder`` (root only, as CI runs), unmounted however the block ends."""
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(folder)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip("mounting a tmpfs needs root: " + mounted.stderr.decode(errors="replace")[:200])
    try:
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_under_the_outbox(requests: Requests) -> None:
    outbox = requests.release.outbox
    big = b"region,total\n" + b"EU,1200\n" * 40_000  # 320 kB, onto a 64 kB disk
    with full_disk(outbox, "64k"):
        request = approved(requests, content=big)
        assert request.state is State.DELIVERY_FAILED
        assert os.listdir(outbox) == []  # the part written before the disk filled is gone
        assert trail(requests, request.id)[-1]["problem"] == "No space left on device"
    delivered = requests.release.deliver(request.id, who("rev1"))  # the disk has room again
    assert delivered.state is State.RELEASED and (outbox / request.id / "summary.csv").read_bytes() == big
