"""The audit chain's group commit in PostgreSQL: one statement per commit, one chain whoever writes and whatever fails."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from saferoom.errors import AuditError
from saferoom.store import pgaudit
from saferoom.store.postgres import PostgresStore
from tests.gateway_helpers import eventually


@pytest.fixture
def store(state_url: str) -> Iterator[PostgresStore]:
    opened = PostgresStore(state_url)
    try:
        yield opened
    finally:
        opened.close()


def _seqs(store: PostgresStore) -> list[int]:
    return [int(r["seq"]) for r in store.read_audit()]


def test_a_writer_chains_after_records_another_gateway_wrote(store: PostgresStore, state_url: str) -> None:
    other = PostgresStore(state_url)
    mine, theirs = store.open_audit(), other.open_audit()
    try:
        assert mine.append({"event": "decision", "i": 0})["seq"] == 1
        assert theirs.append({"event": "decision", "i": 1})["seq"] == 2  # its head (0) was stale: chained after 1
        written = mine.append({"event": "decision", "i": 2})  # and now this one's is
        assert (written["seq"], written["prev"]) == (3, store.read_audit()[1]["hash"])
    finally:
        mine.close()
        theirs.close()
        other.close()
    assert _seqs(store) == [1, 2, 3] and store.verify_audit().ok


def test_writers_that_always_wait_for_the_lock_make_one_chain(state_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pgaudit, "OPTIMISTIC_TRIES", 0)  # every commit takes the path of a writer that lost thrice
    stores = [PostgresStore(state_url) for _ in range(2)]
    writers = [s.open_audit() for s in stores]
    threads = [threading.Thread(target=lambda w=w, n=n: [w.append({"event": "decision", "n": n, "i": i}) for i in range(15)])
               for n, w in enumerate(writers * 2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for writer, opened in zip(writers, stores, strict=True):
        writer.close()
        opened.close()
    check = PostgresStore(state_url)
    try:
        assert _seqs(check) == list(range(1, 61)) and check.verify_audit().ok
    finally:
        check.close()


def _commit(store: PostgresStore, seen: tuple[int, str], seqs: list[int], prevs: list[str]) -> Any:
    hashes = [f"{n:064x}" for n in seqs]
    return store.db.run(pgaudit.COMMIT_SQL, (pgaudit.CHAIN_LOCK, *seen, None, seqs, prevs, hashes,
                                             ['{"event": "forged"}'] * len(seqs), None, 0, 0))


@pytest.mark.parametrize(("seqs", "prevs"), [
    ([2], ["0" * 64]),  # a seq skipped
    ([1, 3], ["0" * 64, f"{1:064x}"]),  # a gap inside the batch
    ([1, 2], ["0" * 64, "f" * 64]),  # a record that does not link to the one before
    ([], []),  # nothing
])
def test_the_commit_function_refuses_a_batch_that_does_not_continue_the_chain(
        store: PostgresStore, seqs: list[int], prevs: list[str]) -> None:
    with pytest.raises(AuditError):
        _commit(store, (0, "0" * 64), seqs, prevs)
    assert _seqs(store) == []


def test_the_commit_function_writes_nothing_after_a_head_that_moved(store: PostgresStore) -> None:
    writer = store.open_audit()
    head = writer.append({"event": "decision"})
    writer.close()
    row = _commit(store, (0, "0" * 64), [1], ["0" * 64])[0]  # a writer that still believes the chain is empty
    assert tuple(row[:2]) == (1, head["hash"]) and row[5] is False  # told the head, nothing written
    assert _seqs(store) == [1]


def test_a_group_commit_is_one_chain_across_a_database_restart(store: PostgresStore, state_server: Any) -> None:
    writer = store.open_audit()
    committed: list[dict[str, Any]] = []
    refused: list[AuditError] = []
    stop = threading.Event()

    def write(n: int) -> None:
        while not stop.is_set():
            try:
                committed.append(writer.append({"event": "decision", "n": n}))
            except AuditError as exc:  # fail closed while PostgreSQL is away
                refused.append(exc)
            writer.append_later({"event": "result", "n": n})

    threads = [threading.Thread(target=write, args=(n,)) for n in range(6)]
    [t.start() for t in threads]
    try:
        eventually(lambda: len(committed) > 50, "group commits before the restart")
        state_server.crash()  # mid-batch: commits in flight are cut off
        eventually(lambda: len(refused) > 0, "an append refused while PostgreSQL is down")
        state_server.resume()
        before = len(committed)
        eventually(lambda: len(committed) > before + 50, "group commits again once PostgreSQL is back")
    finally:
        stop.set()
        [t.join() for t in threads]
    writer.close()
    records = store.read_audit()
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))  # none duplicated, none skipped
    held = {r["seq"]: r["hash"] for r in records}
    assert all(held[r["seq"]] == r["hash"] for r in committed)  # every append that returned is in the chain
    assert store.verify_audit().ok


def test_a_commit_is_durable_before_append_returns(store: PostgresStore, state_url: str) -> None:
    writer = store.open_audit()
    written = writer.append({"event": "decision"})
    with psycopg.connect(state_url, autocommit=True) as other:  # another session sees it at once: committed
        row = other.execute("SELECT hash FROM saferoom_audit WHERE seq = %s", (written["seq"],)).fetchone()
    writer.close()
    assert row == (written["hash"],)


def test_a_commit_waits_for_the_disk_even_where_the_database_says_not_to(store: PostgresStore) -> None:
    with store.db.transaction() as connection:  # synchronous_commit off: COMMIT would answer before the WAL is flushed
        connection.execute("SET LOCAL synchronous_commit = off")
        connection.execute(pgaudit.COMMIT_SQL, (pgaudit.CHAIN_LOCK, 0, "0" * 64, None, [1], ["0" * 64], ["a" * 64],
                                                ['{"event": "decision"}'], None, 0, 0))
        setting = connection.execute("SHOW synchronous_commit").fetchone()
    assert setting == ("on",) and store.db.run("SELECT seq FROM saferoom_audit") == [(1,)]
