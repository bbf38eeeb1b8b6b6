"""The state store's generic records: compare-and-set and spend, the same on files and on PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from saferoom.errors import LimitExceeded, StateConflict, UsageError
from saferoom.store import FileStore, Store, open_store


@pytest.fixture(params=["files", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    opened: Store = FileStore(tmp_path / "state") if request.param == "files" else open_store(request.getfixturevalue("state_url"))
    try:
        yield opened
    finally:
        opened.close()


def test_put_is_compare_and_set(store: Store) -> None:
    assert store.get("requests", "r1") is None
    first = store.put("requests", "r1", {"state": "open"}, version=0)
    assert first.version == 1
    with pytest.raises(StateConflict):
        store.put("requests", "r1", {"state": "other"}, version=0)  # someone wrote it meanwhile
    second = store.put("requests", "r1", {"state": "approved"}, version=1)
    assert (second.version, store.get("requests", "r1")) == (2, second)
    with pytest.raises(StateConflict):
        store.put("requests", "r1", {"state": "stale"}, version=1)
    assert store.get("requests", "r1") == second


def test_spend_refuses_past_its_limit_and_changes_nothing(store: Store) -> None:
    assert store.spend("budgets", "alice", 0.4, limit=1.0) == pytest.approx(0.4)
    assert store.spend("budgets", "alice", 0.5, limit=1.0) == pytest.approx(0.9)
    with pytest.raises(LimitExceeded):
        store.spend("budgets", "alice", 0.2, limit=1.0)
    assert store.spend("budgets", "alice", 0.1, limit=1.0) == pytest.approx(1.0)
    assert store.spend("budgets", "bob", 5) == 5  # another key, no limit


def test_concurrent_spends_are_never_lost(store: Store) -> None:
    def spend() -> None:
        for _ in range(25):
            store.spend("budgets", "shared", 1)

    threads = [threading.Thread(target=spend) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.spend("budgets", "shared", 0) == 100


@pytest.mark.parametrize("namespace", ["../tokens", "Budgets", "", "a/b", "x" * 64])
def test_a_namespace_is_a_name_not_a_path(store: Store, namespace: str) -> None:
    with pytest.raises(UsageError):
        store.get(namespace, "k")


def test_file_slots_hold_the_limit(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    assert store.take_slot("alice", "q1", 2) and store.take_slot("alice", "q2", 2)
    assert not store.take_slot("alice", "q3", 2)
    assert store.take_slot("bob", "q4", 2)
    store.give_slot("alice", "q1")
    assert store.take_slot("alice", "q3", 2)


def test_a_query_that_ends_gives_its_slot_back_and_counts_its_bytes(store: Store) -> None:
    assert store.take_slot("alice", "q1", 1) and not store.take_slot("alice", "q2", 1)
    store.end_query("alice", "q1", 700)
    store.end_query("alice", "q-gone", 300)  # a slot already given back (or whose lease ran out): still counted
    assert store.take_slot("alice", "q2", 1)
    assert store.bytes_today("alice") == 1000 and store.bytes_today("bob") == 0
