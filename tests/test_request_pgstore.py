"""Requests in PostgreSQL state, as the library sees it: several gateways (stores) on one database share
requests, their files (in chunks, brought to each gateway's disk by content hash), one lock and grants."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from saferoom.identity import Identity
from saferoom.policy import parse_policy
from saferoom.requests import Requests, State, Verdict
from saferoom.requests.pgstore import CHUNK, PgRequests
from saferoom.store.postgres import PostgresStore
from tests.requests_helpers import POLICY

BIG = os.urandom(CHUNK * 2 + 12345)  # three chunks, the last one short


def who(user: str) -> Identity:
    return Identity(user, None, "token")


class Gateways:
    """``n`` gateways' request engines on one PostgreSQL state, each with a cache of its own, one outbox."""

    def __init__(self, url: str, folder: Path, n: int) -> None:
        policy = parse_policy(POLICY.format(database=folder / "prod.duckdb"), folder / "saferoom.yaml")
        self.outbox = folder / "outbox"
        self.stores = [PostgresStore(url) for _ in range(n)]
        self.audits = [store.open_audit() for store in self.stores]
        self.engines = [Requests(folder / f"cache{i}", audit, lambda: policy, outbox=self.outbox,
                                 store=PgRequests(store, folder / f"cache{i}"))
                        for i, (store, audit) in enumerate(zip(self.stores, self.audits, strict=True))]

    def close(self) -> None:
        for opened in (*self.engines, *self.audits, *self.stores):
            opened.close()


@pytest.fixture()
def gateways(state_url: str, tmp_path: Path) -> Iterator[Gateways]:
    made = Gateways(state_url, tmp_path, 3)
    try:
        yield made
    finally:
        made.close()


def test_a_release_made_on_one_gateway_is_reviewed_on_two_others_and_lands_whole(gateways: Gateways, state_url: str) -> None:
    one, two, three = gateways.engines
    asked = one.release.request(who("ana"), "a model")
    one.release.upload(asked.id, who("ana"), "model.bin", [BIG[i:i + 70000] for i in range(0, len(BIG), 70000)])
    submitted = one.release.submit(asked.id, who("ana"))
    assert two.engine.show(asked.id, who("rev1")).state is State.SUBMITTED
    assert two.release.path(submitted, "model.bin").read_bytes() == BIG  # brought from PostgreSQL to gateway 2's disk
    assert two.release.report(submitted)["files"] == 1  # the check's report too
    two.engine.review(asked.id, who("rev1"), Verdict.APPROVE, submitted.hashes)
    done = three.engine.review(asked.id, who("rev2"), Verdict.APPROVE, submitted.hashes)
    assert done.state is State.RELEASED
    assert (gateways.outbox / asked.id / "model.bin").read_bytes() == BIG
    assert not three.store.folder(asked.id).exists()  # the gateway that released it keeps no copy
    import psycopg

    with psycopg.connect(state_url) as db:
        chunks = db.execute("SELECT n, length(chunk) FROM saferoom_request_files WHERE request_id = %s AND name = %s "
                            "ORDER BY n", (asked.id, "model.bin")).fetchall()
    assert chunks == [(0, CHUNK), (1, CHUNK), (2, 12345)]


def test_a_file_replaced_on_one_gateway_is_never_read_in_its_old_version_on_another(gateways: Gateways) -> None:
    one, two, _ = gateways.engines
    asked = one.release.request(who("ana"), "a table")
    one.release.upload(asked.id, who("ana"), "t.csv", [b"a\n1\n"])
    first = one.release.submit(asked.id, who("ana"))
    assert two.release.path(first, "t.csv").read_bytes() == b"a\n1\n"  # gateway 2 holds a copy now
    one.release.upload(asked.id, who("ana"), "t.csv", [b"a\n2\n"])
    second = one.release.submit(asked.id, who("ana"))
    shown = two.engine.show(asked.id, who("rev1"))
    assert shown.hashes == second.hashes != first.hashes
    assert two.release.path(shown, "t.csv").read_bytes() == b"a\n2\n"
    assert hashlib.sha256(b"a\n2\n").hexdigest() == second.hashes["t.csv"]


def test_reviews_on_two_gateways_at_once_are_both_kept(gateways: Gateways) -> None:
    one, two, three = gateways.engines
    asked = one.release.request(who("ana"), "a table")
    one.release.upload(asked.id, who("ana"), "t.csv", [b"a\n1\n"])
    submitted = one.release.submit(asked.id, who("ana"))
    start = threading.Barrier(2)

    def review(requests: Requests, user: str) -> None:
        start.wait()
        requests.engine.review(asked.id, who(user), Verdict.APPROVE, submitted.hashes)

    threads = [threading.Thread(target=review, args=(r, u)) for r, u in ((two, "rev1"), (three, "rev2"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done = one.engine.show(asked.id, who("ana"))
    assert done.state is State.RELEASED and sorted(r.reviewer for r in done.reviews) == ["rev1", "rev2"]


def test_a_grant_approved_on_one_gateway_is_taken_in_by_anothers_sweep(gateways: Gateways) -> None:
    one, two, _ = gateways.engines
    asked = one.access.request(who("ana"), "a fraud case", "1h", column="prod.people.email")
    before = two.store.stamp()
    two.engine.review(asked.id, who("boss"), Verdict.APPROVE, {})
    assert two.store.stamp() > before
    assert one.access.grants("ana") == []  # not seen yet
    one.sweep()
    assert [g.id for g in one.access.grants("ana")] == [asked.id]


def test_approved_packages_are_read_from_postgresql_for_the_next_sync(gateways: Gateways, state_url: str) -> None:
    from saferoom.requests.pgstore import approved_packages

    one, two, _ = gateways.engines
    wanted = one.packages.request(who("ana"), "Zeta_Lib==1.0", "for models")
    one.packages.request(who("bob"), "other", "not yet reviewed")
    assert approved_packages(state_url) == []
    two.engine.review(wanted.id, who("boss"), Verdict.APPROVE, {})
    assert approved_packages(state_url) == ["zeta-lib==1.0"]


def test_a_file_past_the_cap_is_refused_as_it_arrives_and_nothing_reaches_postgresql(gateways: Gateways, state_url: str) -> None:
    import psycopg

    from saferoom.errors import TooLarge
    from saferoom.requests import Limits

    one = gateways.engines[0]
    one.engine.limits = Limits(max_file_bytes=CHUNK)
    asked = one.release.request(who("ana"), "a model")
    with pytest.raises(TooLarge):
        one.release.upload(asked.id, who("ana"), "model.bin", iter([BIG[:CHUNK], BIG[CHUNK:CHUNK + 1]]))
    with psycopg.connect(state_url) as db:
        assert db.execute("SELECT count(*) FROM saferoom_request_files").fetchone() == (0,)
    assert one.engine.show(asked.id, who("ana")).files == []
    assert os.listdir(one.store.folder(asked.id)) == []  # the part file is gone too
