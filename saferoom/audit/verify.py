"""`saferoom audit verify`: the chain, the seals, the head and, given a forwarded copy, that nothing is missing.

What each input lets the verifier see:

- the log alone: every hash is recomputed, so an edit, a deletion or a reordering that was not followed by
  re-chaining is found; the head catches records cut off the end unless it was rewritten too.
- with the audit key (``key``): each record's ``hmac`` and the head's are checked, so re-chaining and a
  rewritten head are found; a log sealed earlier cannot be passed off as unsealed. Still unseen: the end
  cut back to a point whose head was kept (an old copy of audit.head put back), or the log emptied with
  its head deleted.
- with the forwarded copy (``checkpoints``) and the public key: every signed checkpoint and every record the
  copy holds must be in the log, unchanged; that catches the last two, and needs no secret.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saferoom.audit.checkpoints import CHECKPOINT, Anchor, Copy, load_copy, signature_problem
from saferoom.audit.head import Slot, head_problem, head_sealed, hmac_equal, read_slot
from saferoom.audit.keys import AuditKey, PublicKey
from saferoom.audit.records import GENESIS, LOG, _digest
from saferoom.errors import UsageError


@dataclass(frozen=True)
class Verification:
    ok: bool
    records: int
    problem: str | None = None
    line: int | None = None
    sealed: int = 0  # records whose hmac was checked with the audit key
    checkpoints: int = 0  # signed checkpoints in the forwarded copy, all found in the log
    notes: tuple[str, ...] = ()  # what was checked, and what could not be


def verify(folder: Path, *, key: AuditKey | None = None, public_key: PublicKey | None = None,
           checkpoints: Path | None = None) -> Verification:
    """Check the whole log; the first problem is reported with its line."""
    public = public_key or (key.public if key else None)
    if checkpoints is not None and public is None:
        raise UsageError("checking a forwarded copy needs the public key (--public-key) or the audit key (--key)")
    copy = load_copy(checkpoints, public) if checkpoints is not None and public is not None else None
    path = folder / LOG
    if not path.exists() and copy is None:
        return Verification(False, 0, f"no audit log in {folder}")
    slot = read_slot(folder, key)  # before the log: a gateway may be writing both (see head_problem)
    walk = _Walk(key, public, copy.anchors if copy else {}, slot)
    if path.exists():
        with path.open(encoding="utf-8") as lines:
            for number, text in enumerate(lines, 1):
                problem = walk.step(text)
                if problem:
                    return walk.result(problem, copy, number)
    return walk.result(walk.end(folder, copy), copy)


@dataclass
class _Walk:
    key: AuditKey | None
    public: PublicKey | None
    anchors: dict[int, Anchor]
    head: Slot | None
    prev: str = GENESIS
    seq: int = 0
    head_hash: str | None = None
    sealed: int = 0  # hmac checked
    unchecked: int = 0  # hmac present, no key to check it
    unsealed: int = 0  # no hmac: written before the log had a key
    matched: int = 0  # records the copy holds too
    unfinished: set[str] = field(default_factory=set)  # allowed queries whose result record has not come (yet)

    def step(self, text: str) -> str | None:
        try:
            record = json.loads(text)
        except ValueError:
            return "not a JSON record (edited or corrupted)"
        problem = _chain(record, self.prev, self.seq + 1)
        problem = problem or self._seal(record) or self._anchored(record) or self._checkpoint(record)
        if problem:
            return problem
        self.prev, self.seq = record["hash"], record["seq"]
        self._follow(record)
        if self.head is not None and self.seq == self.head.seq:
            self.head_hash = self.prev
        return None

    def _follow(self, record: dict[str, Any]) -> None:
        if record.get("event") == "decision" and record.get("decision") == "allowed":
            self.unfinished.add(str(record.get("request_id")))
        elif record.get("event") == "result":
            self.unfinished.discard(str(record.get("request_id")))

    def _seal(self, record: dict[str, Any]) -> str | None:
        mac = record.get("hmac")
        if mac is None:
            self.unsealed += 1
            if self.sealed or self.unchecked:
                return "it carries no hmac though the records before it do (its seal was stripped: re-chained)"
            return None
        if self.key is None:
            self.unchecked += 1
        elif hmac_equal(mac, self.key.seal(record["hash"])):
            self.sealed += 1
        else:
            return "its hmac does not match (altered and re-chained, or sealed with another audit key)"
        return None

    def _anchored(self, record: dict[str, Any]) -> str | None:
        anchor = self.anchors.get(record["seq"])
        if anchor is None:
            return None
        if anchor.hash != record["hash"]:
            return f"it is not the record {anchor.source} holds (altered or re-chained)"
        self.matched += 1
        return None

    def _checkpoint(self, record: dict[str, Any]) -> str | None:
        if record.get("event") != CHECKPOINT or self.public is None:
            return None
        problem = signature_problem(self.public, record)
        if problem:
            return problem
        body = record["checkpoint"]
        if (body["seq"], body["hash"]) != (self.seq, self.prev):
            return f"checkpoint {body.get('n')} does not cover the record before it (moved or re-chained)"
        return None

    def end(self, folder: Path, copy: Copy | None) -> str | None:
        beyond = max((a for a in self.anchors.values() if a.seq > self.seq), key=lambda a: a.seq, default=None)
        if beyond is not None:
            emptied = ", or the log emptied and its head deleted" if self.seq == 0 else ""
            return f"the log ends at record {self.seq} but {beyond.source} shows record {beyond.seq} (records cut off the end{emptied})"
        if copy is not None and copy.problem:
            return copy.problem
        return self._head(folder, copy)

    def _head(self, folder: Path, copy: Copy | None) -> str | None:
        sealed_head = head_sealed(folder)
        if self.key is None and (self.unchecked or sealed_head):
            if copy is None:
                return ("this log is sealed with an audit key: verify it with --key, or with --public-key and "
                        "--checkpoints (its forwarded copy)")
            return None  # the head's seal cannot be checked without the key; the copy stands in for it
        problem = head_problem(None if self.head is None else (self.head.seq, self.head.hash), self.seq, self._hash_at)
        if problem or self.key is None or self.seq == 0:
            return problem
        if self.head is not None and self.head.sealed:
            return None
        if self.sealed:
            return "the head is not sealed with the audit key (replaced)"
        return ("nothing in this log is sealed with this audit key: it was written without --audit-key, or its "
                "hmacs and head were stripped and replaced")

    def _hash_at(self, at: int) -> str | None:
        return GENESIS if at == 0 else self.head_hash if self.head is not None and at == self.head.seq else None

    def result(self, problem: str | None, copy: Copy | None, line: int | None = None) -> Verification:
        signed = copy.checkpoints if copy is not None and problem is None else 0
        return Verification(problem is None, self.seq, problem, line, self.sealed, signed, tuple(self._notes(copy)))

    def _notes(self, copy: Copy | None) -> list[str]:
        notes = [f"{self.seq} records chained, every hash recomputed"]
        if self.sealed:
            before = f"; the first {self.unsealed} were written before the log had a key" if self.unsealed else ""
            notes.append(f"{self.sealed} records' hmac checked with the audit key{before}")
        elif self.unchecked:
            notes.append(f"{self.unchecked} records' hmac not checked (no --key)")
        elif self.seq:
            notes.append("no record is sealed (written without --audit-key): whoever can write the state folder "
                         "could have rewritten the log and its head")
        if self.unfinished:
            notes.append(f"{len(self.unfinished)} allowed queries have a decision but no result record: a gateway "
                         "stopped mid-query (killed, or its state unreachable), or the query still runs; each "
                         "decision was durable before any of its result left")
        notes.extend(_copy_notes(copy, self.seq, self.matched))
        return notes


def _chain(record: object, prev: str, seq: int) -> str | None:
    if not isinstance(record, dict) or record.get("seq") != seq:
        found = record.get("seq") if isinstance(record, dict) else "?"
        return f"expected record {seq}, found {found} (deleted or reordered)"
    if record.get("prev") != prev:
        return "does not follow the record before it (deleted or reordered)"
    body = {k: v for k, v in record.items() if k not in ("hash", "hmac")}
    if _digest(prev, body) != record.get("hash"):
        return "its hash does not match its content (edited)"
    return None


def _copy_notes(copy: Copy | None, seq: int, matched: int) -> list[str]:
    if copy is None:
        return ["no forwarded copy given (--checkpoints): records cut off the end with an earlier head put back, "
                "or the log emptied with its head deleted, would not show"]
    notes = [f"{copy.checkpoints} signed checkpoints and {matched} records of the forwarded copy found in the log"]
    if copy.last is None or copy.last.seq < seq - 1:  # a checkpoint is the record after the one it covers
        after = copy.last.seq if copy.last else 0
        notes.append(f"records after {after} are not covered by a signed checkpoint yet")
    if copy.unreadable:
        notes.append(f"{copy.unreadable} lines of the copy are not records (skipped)")
    return notes
