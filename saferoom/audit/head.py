"""The head: the last seq and hash, so that records cut off the end of the log are noticed.

Two fixed 128-byte slots written in place, in turn, each with a check: a write torn by a crash leaves the
other slot whole, and no file is created or renamed per commit. Without an audit key the check is a plain
checksum (``check``), which catches a torn slot and nothing more; with one it is a MAC (``hmac``) under the
chain key, which whoever can write the state folder cannot compute for a head of their own.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saferoom.audit.keys import AuditKey
from saferoom.audit.records import HEAD
from saferoom.files import fsync_dir

SLOT = 128


@dataclass(frozen=True, order=True)
class Slot:
    seq: int
    sealed: bool  # checked with the audit key
    hash: str


class Head:
    """Writes the head's slots in turn (see the module's docstring)."""

    def __init__(self, path: Path, key: AuditKey | None = None) -> None:
        created = not path.exists()
        self._key = key
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if created:
            fsync_dir(path.parent)
        slots = _slots(path, key)
        newest = max(slots, key=lambda position: slots[position], default=1)
        self._turn = 1 - newest  # never overwrite the newest whole slot first

    def write(self, seq: int, digest: str) -> None:
        os.pwrite(self._fd, _slot_bytes(seq, digest, self._key), SLOT * self._turn)
        os.fdatasync(self._fd)
        self._turn ^= 1

    def close(self) -> None:
        os.close(self._fd)


def _slot_bytes(seq: int, digest: str, key: AuditKey | None) -> bytes:
    return slot_bytes(seq, digest, None if key is None else key.head_mac(seq, digest))


def slot_bytes(seq: int, digest: str, mac: str | None) -> bytes:
    """A slot as the head file holds it: sealed with ``mac`` (the key's head MAC), or with a plain checksum."""
    if mac is None:
        body = json.dumps({"seq": seq, "hash": digest, "check": _slot_check(seq, digest)}).encode()
    else:
        body = json.dumps({"seq": seq, "hash": digest, "hmac": mac}, separators=(",", ":")).encode()
    return body.ljust(SLOT - 1) + b"\n"


def _slot_check(seq: int, digest: str) -> str:
    return hashlib.sha256(f"{seq}:{digest}".encode()).hexdigest()[:16]


def _parsed(data: bytes) -> dict[int, dict[str, Any]]:
    slots = {}
    for position in (0, 1):
        try:
            slot = json.loads(data[position * SLOT : (position + 1) * SLOT])
            if isinstance(slot, dict) and isinstance(slot.get("seq"), int) and isinstance(slot.get("hash"), str):
                slots[position] = slot
        except ValueError:
            continue
    return slots


def _slots(path: Path, key: AuditKey | None) -> dict[int, Slot]:
    """The whole slots of a head file by position, 0 or 1. A torn slot is left out, and so is a sealed one
    that cannot be checked (no key, or another key)."""
    try:
        data = path.read_bytes()
    except OSError:
        return {}
    slots = {}
    for position, slot in _parsed(data).items():
        seq, digest = slot["seq"], slot["hash"]
        if "hmac" in slot:
            if key is not None and hmac_equal(slot["hmac"], key.head_mac(seq, digest)):
                slots[position] = Slot(seq, True, digest)
        elif slot.get("check") == _slot_check(seq, digest):
            slots[position] = Slot(seq, False, digest)
    return slots or _whole_file_head(data)


def hmac_equal(given: object, expected: str) -> bool:
    return isinstance(given, str) and hmac.compare_digest(given, expected)


def _whole_file_head(data: bytes) -> dict[int, Slot]:
    """A head written by saferoom before slots: one JSON object, replaced whole on each commit."""
    try:
        head = json.loads(data)
        return {0: Slot(int(head["seq"]), False, str(head["hash"]))} if "check" not in head else {}
    except (ValueError, KeyError, TypeError):
        return {}


def head_sealed(folder: Path) -> bool:
    """Whether the head holds slots sealed with an audit key (checked or not)."""
    try:
        return any("hmac" in slot for slot in _parsed((folder / HEAD).read_bytes()).values())
    except OSError:
        return False


def read_slot(folder: Path, key: AuditKey | None = None) -> Slot | None:
    """The newest whole slot of the head: the last seq and hash the log had when it was flushed."""
    return max(_slots(folder / HEAD, key).values(), default=None)


def read_head(folder: Path, key: AuditKey | None = None) -> tuple[int, str] | None:
    slot = read_slot(folder, key)
    return None if slot is None else (slot.seq, slot.hash)


def head_problem(head: tuple[int, str] | None, seq: int, hash_at: Callable[[int], str | None]) -> str | None:
    """Why the log (ending at ``seq``) does not hold what its head (read before the log) saw; None when it does.

    The head is read first: a log read after it holds at least the records it saw, even while a gateway
    writes both."""
    if head is None:
        return None if seq == 0 else f"the log ends at record {seq} but its head is missing or unreadable"
    at, digest = head
    if at > seq:
        return f"the log ends at record {seq} but the head says {at} (records cut off the end)"
    if hash_at(at) != digest:
        return f"record {at} is not the record the head saw (records replaced at the end)"
    return None
