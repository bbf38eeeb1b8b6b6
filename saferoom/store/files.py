"""The embedded store: a state folder on the gateway's own disk, for one gateway at a time.

Tokens are ``tokens.json``, the audit chain ``audit.log`` with its head (:mod:`saferoom.audit`), records
``records/<namespace>.json`` (replaced whole under a lock, so a compare-and-set or a spend is atomic across
processes). Query slots and today's bytes are counted in memory: only one gateway writes a folder (the
audit log's lock refuses a second), and the bytes are counted again from the log's tail when it starts.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from saferoom.audit import AuditKey, AuditLog, PublicKey, Verification, newest_first, read, verify
from saferoom.errors import LimitExceeded, StateConflict
from saferoom.files import atomic_write, locked
from saferoom.identity import TokenStore
from saferoom.store.base import Versioned, checked_namespace

RECORDS = "records"


class FileStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._tokens: TokenStore | None = None
        self._lock = threading.Lock()
        self._slots: dict[str, set[str]] = defaultdict(set)
        self._bytes: dict[tuple[str, str], int] = defaultdict(int)

    def __str__(self) -> str:
        return str(self.folder)

    @property
    def tokens(self) -> TokenStore:
        """Made on first use: a gateway refused at its start has written nothing."""
        if self._tokens is None:
            self._tokens = TokenStore(self.folder)
        return self._tokens

    # the audit chain ----------------------------------------------------------
    def open_audit(self, key: AuditKey | None = None, forward: Sequence[str] = ()) -> AuditLog:
        audit = AuditLog(self.folder, key=key, forward=forward)  # refuses a second gateway on this folder
        self._count_bytes_today()
        return audit

    def read_audit(self, limit: int | None = None) -> list[dict[str, Any]]:
        return read(self.folder, limit)

    def verify_audit(self, key: AuditKey | None = None, public_key: PublicKey | None = None,
                     checkpoints: Path | None = None) -> Verification:
        return verify(self.folder, key=key, public_key=public_key, checkpoints=checkpoints)

    def results_folder(self) -> Path:
        return self.folder / "results"

    # limits ---------------------------------------------------------------------
    def take_slot(self, user: str, slot: str, limit: int | None) -> bool:
        with self._lock:
            if limit and len(self._slots[user]) >= limit:
                return False
            self._slots[user].add(slot)
            return True

    def give_slot(self, user: str, slot: str) -> None:
        with self._lock:
            self._slots[user].discard(slot)

    def bytes_today(self, user: str) -> int:
        return self._bytes[(user, today())]

    def add_bytes(self, user: str, size: int) -> None:
        with self._lock:
            self._bytes[(user, today())] += size

    def end_query(self, user: str, slot: str, size: int) -> None:
        self.give_slot(user, slot)
        self.add_bytes(user, size)

    def _count_bytes_today(self) -> None:
        """Today's bytes per user, from the log's tail: records are in time order, so reading stops at yesterday
        (a day back, in case a record was queued across midnight)."""
        day, yesterday = today(), (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%d")
        for record in newest_first(self.folder):
            written = str(record.get("time", ""))[:10]
            if written < yesterday:
                break
            if record.get("event") == "result" and written == day:
                self._bytes[(record["user"], day)] += record.get("bytes") or 0

    # generic records --------------------------------------------------------------
    def get(self, namespace: str, key: str) -> Versioned | None:
        item = self._records(namespace).get(key)
        return None if item is None else Versioned(item["version"], item["value"])

    def put(self, namespace: str, key: str, value: dict[str, Any], version: int) -> Versioned:
        with self._changing(namespace) as records:
            current = records.get(key, {}).get("version", 0)
            if current != version:
                raise StateConflict(f"{namespace}/{key} is at version {current}, not {version}: read it again")
            records[key] = {"version": version + 1, "value": value}
        return Versioned(version + 1, value)

    def spend(self, namespace: str, key: str, amount: float, limit: float | None = None) -> float:
        with self._changing(namespace) as records:
            total = records.get(key, {}).get("value", {}).get("total", 0) + amount
            if limit is not None and total > limit:
                raise LimitExceeded(f"{namespace}/{key} would reach {total:g}, past its limit of {limit:g}")
            records[key] = {"version": records.get(key, {}).get("version", 0) + 1, "value": {"total": total}}
        return float(total)

    def _path(self, namespace: str) -> Path:
        return self.folder / RECORDS / f"{checked_namespace(namespace)}.json"

    def _records(self, namespace: str) -> dict[str, Any]:
        try:
            return dict(json.loads(self._path(namespace).read_text()))
        except FileNotFoundError:
            return {}

    @contextmanager
    def _changing(self, namespace: str) -> Iterator[dict[str, Any]]:
        """The namespace's records to change in place, written back whole when the block ends without error."""
        path = self._path(namespace)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, locked(path.parent / f".{namespace}.lock"):
            records = self._records(namespace)
            yield records
            atomic_write(path, json.dumps(records).encode())

    def close(self) -> None:
        """Nothing is held open between calls."""


def today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")
