"""What a store keeps for the gateway, as one protocol both implementations follow.

- ``tokens``: personal tokens (hashes only), :class:`~saferoom.identity.Tokens`.
- the audit chain: :meth:`Store.open_audit` gives the one writer a gateway holds, :meth:`Store.read_audit`
  the newest records, :meth:`Store.verify_audit` the whole check.
- limits: a user's concurrent queries (:meth:`Store.take_slot`, :meth:`Store.give_slot`) and today's bytes
  (:meth:`Store.bytes_today`, :meth:`Store.add_bytes`); :meth:`Store.end_query` gives a query's slot back and
  counts its bytes at once (one round trip to a shared store).
- generic records for later capabilities (requests, grants, budgets): a value per namespace and key with
  a version for compare-and-set (:meth:`Store.get`, :meth:`Store.put`), and an atomic counter that refuses
  to pass a limit (:meth:`Store.spend`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from saferoom.audit import AuditKey, PublicKey, Verification
from saferoom.audit.commits import Pending
from saferoom.errors import UsageError
from saferoom.identity import Tokens

_NAMESPACE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


@dataclass(frozen=True)
class Versioned:
    """A record's value and its version: 1 when first written, one more on each change."""

    version: int
    value: dict[str, Any]


class AuditWriter(Protocol):
    """The audit chain's writer: ``append`` returns once the record is durable, with its seq, prev and hash."""

    def append(self, record: dict[str, Any]) -> dict[str, Any]: ...
    def submit(self, record: dict[str, Any]) -> Pending: ...
    def settled(self, pending: Pending) -> dict[str, Any]: ...
    def append_later(self, record: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


class Store(Protocol):
    @property
    def tokens(self) -> Tokens: ...

    def open_audit(self, key: AuditKey | None = None, forward: Sequence[str] = ()) -> AuditWriter: ...
    def read_audit(self, limit: int | None = None) -> list[dict[str, Any]]: ...
    def verify_audit(self, key: AuditKey | None = None, public_key: PublicKey | None = None,
                     checkpoints: Path | None = None) -> Verification: ...
    def results_folder(self) -> Path: ...

    def take_slot(self, user: str, slot: str, limit: int | None) -> bool: ...
    def give_slot(self, user: str, slot: str) -> None: ...
    def bytes_today(self, user: str) -> int: ...
    def add_bytes(self, user: str, size: int) -> None: ...
    def end_query(self, user: str, slot: str, size: int) -> None: ...

    def get(self, namespace: str, key: str) -> Versioned | None: ...
    def put(self, namespace: str, key: str, value: dict[str, Any], version: int) -> Versioned: ...
    def spend(self, namespace: str, key: str, amount: float, limit: float | None = None) -> float: ...
    def close(self) -> None: ...


def checked_namespace(namespace: str) -> str:
    """Namespaces are names a capability picks (``requests``, ``budgets``), never user input: a narrow shape."""
    if not _NAMESPACE.match(namespace):
        raise UsageError(f"state namespace {namespace!r}: use lower-case letters, digits, - and _ (a name, not a path)")
    return namespace
