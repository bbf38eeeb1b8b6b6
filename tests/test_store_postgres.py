"""PostgreSQL state, several stores at once (as several gateways hold them): one chain, shared tokens and slots."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest

from saferoom.audit import AuditKey
from saferoom.errors import AuditError, AuthError
from saferoom.secrets import Secret
from saferoom.store.postgres import PostgresStore
from tests.gateway_helpers import eventually

KEY = AuditKey(Secret("a-test-audit-key-of-enough-length-0123456789"))


@pytest.fixture
def stores(state_url: str) -> Iterator[list[PostgresStore]]:
    opened = [PostgresStore(state_url) for _ in range(3)]
    try:
        yield opened
    finally:
        for store in opened:
            store.close()


def _hammer(writers: list, per_thread: int) -> None:
    def write(writer: object, n: int) -> None:
        for i in range(per_thread):
            writer.append({"event": "decision", "n": n, "i": i})  # type: ignore[attr-defined]
            writer.append_later({"event": "result", "n": n, "i": i})  # type: ignore[attr-defined]

    threads = [threading.Thread(target=write, args=(w, n)) for n, w in enumerate(writers * 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_several_writers_make_one_chain(state_url: str) -> None:
    stores = [PostgresStore(state_url) for _ in range(3)]
    writers = [store.open_audit() for store in stores]
    _hammer(writers, 20)
    for writer, store in zip(writers, stores, strict=True):
        writer.close()
        store.close()
    store = PostgresStore(state_url)
    records = store.read_audit()
    assert [r["seq"] for r in records] == list(range(1, 241))  # none duplicated, none skipped
    assert sorted((r["event"], r["n"], r["i"]) for r in records) == sorted(
        (e, n, i) for e in ("decision", "result") for n in range(6) for i in range(20))
    result = store.verify_audit()
    assert result.ok and result.records == 240, result
    store.close()


def test_a_sealed_chain_stays_sealed_across_gateways(stores: list[PostgresStore]) -> None:
    first, second = stores[0].open_audit(KEY), stores[1].open_audit(KEY)
    _hammer([first, second], 5)
    second.close()
    with pytest.raises(AuditError, match="sealed with an audit key"):
        stores[2].open_audit()  # without the key it would write unsealed records after sealed ones
    with pytest.raises(AuditError, match="without this audit key"):
        stores[2].open_audit(AuditKey(Secret("another-audit-key-of-enough-length-98765")))
    first.close()  # a last signed checkpoint
    records = stores[2].read_audit()
    assert all("hmac" in r for r in records) and records[-1]["event"] == "checkpoint"
    assert stores[2].verify_audit(KEY).ok
    assert stores[2].verify_audit(public_key=KEY.public).ok is False  # sealed: the head needs the key or a copy


def test_verify_finds_an_edited_record(stores: list[PostgresStore]) -> None:
    writer = stores[0].open_audit()
    for i in range(5):
        writer.append({"event": "decision", "i": i})
    writer.close()
    with stores[0].db.transaction() as db:
        line = db.execute("SELECT line FROM saferoom_audit WHERE seq = 3").fetchone()[0]
        edited = json.dumps({**json.loads(line), "i": 99}, sort_keys=True)
        db.execute("UPDATE saferoom_audit SET line = %s WHERE seq = 3", (edited,))
    result = stores[1].verify_audit()
    assert not result.ok and result.line == 3 and "edited" in (result.problem or "")


def test_a_deleted_tail_refuses_to_go_on(stores: list[PostgresStore]) -> None:
    writer = stores[0].open_audit()
    for i in range(3):
        writer.append({"event": "decision", "i": i})
    writer.close()
    with stores[0].db.transaction() as db:
        db.execute("DELETE FROM saferoom_audit WHERE seq = 3")
    with pytest.raises(AuditError, match="does not end where its head says"):
        stores[1].open_audit()
    assert not stores[1].verify_audit().ok


def test_a_token_revoked_on_one_gateway_is_refused_by_the_others(stores: list[PostgresStore]) -> None:
    token, record = stores[0].tokens.create("alice")
    assert all(store.tokens.verify(token).user == "alice" for store in stores)  # each has it cached now
    stores[0].tokens.revoke(record.id)

    def refused(store: PostgresStore) -> bool:
        try:
            store.tokens.verify(token)
        except AuthError:
            return True
        return False

    for store in stores:
        eventually(lambda s=store: refused(s), "the revoked token is refused")  # within TOKEN_CACHE_SECONDS


def test_the_concurrent_query_limit_holds_across_gateways(stores: list[PostgresStore]) -> None:
    a, b, c = stores
    assert a.take_slot("alice", "q1", 2) and b.take_slot("alice", "q2", 2)
    assert not c.take_slot("alice", "q3", 2) and not a.take_slot("alice", "q3", 2)
    assert c.take_slot("bob", "q4", 2)
    b.give_slot("alice", "q2")
    assert c.take_slot("alice", "q3", 2)


def test_threads_racing_for_slots_never_pass_the_limit(stores: list[PostgresStore]) -> None:
    taken: list[str] = []

    def take(store: PostgresStore, n: int) -> None:
        if store.take_slot("alice", f"q{n}", 3):
            taken.append(f"q{n}")

    threads = [threading.Thread(target=take, args=(stores[n % 3], n)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(taken) == 3


def test_a_dead_gateways_slots_are_freed_when_their_lease_runs_out(state_url: str) -> None:
    dead, alive = PostgresStore(state_url, lease=1.0), PostgresStore(state_url)
    try:
        assert dead.take_slot("alice", "q1", 1)
        dead.db.close()  # it stops renewing, as a killed gateway would
        assert not alive.take_slot("alice", "q2", 1)
        eventually(lambda: alive.take_slot("alice", "q2", 1), "the dead gateway's slot is free again")
    finally:
        dead.close()
        alive.close()


def test_bytes_per_day_are_counted_across_gateways(stores: list[PostgresStore]) -> None:
    stores[0].add_bytes("alice", 1000)
    stores[1].add_bytes("alice", 500)
    assert stores[2].bytes_today("alice") == 1500 and stores[2].bytes_today("bob") == 0


def test_a_slot_not_given_back_while_the_database_was_away_frees_by_its_lease(state_url: str, state_server) -> None:
    store = PostgresStore(state_url, lease=1.0)
    writer = store.open_audit()  # the gateway lives on, renewing the leases of its running queries
    try:
        assert store.take_slot("bob", "running", 1) and store.take_slot("alice", "ending", 1)  # taken without
        writer.append({"event": "decision"})  # waiting for the disk, but this commit waits for the WAL up to them
        state_server.crash()
        try:
            with pytest.raises(AuditError):
                store.end_query("alice", "ending", 10)  # the query ends while PostgreSQL is away
        finally:
            state_server.resume()
        other = PostgresStore(state_url)
        try:
            back = other.db.run("SELECT now()")[0][0]
            renewed = "SELECT expires >= %s + interval '1 second' FROM saferoom_slots WHERE slot = %s"
            eventually(lambda: other.db.run(renewed, (back, "running")) == [(True,)], "bob's lease renewed since")
            assert other.db.run(renewed, (back, "ending")) == [(False,)]  # alice's, not given back, was not
            eventually(lambda: other.take_slot("alice", "next", 1), "alice's slot free again once its lease ran out")
        finally:
            other.close()
    finally:
        writer.close()
        store.close()
