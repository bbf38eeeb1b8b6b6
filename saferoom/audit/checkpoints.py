"""Signed checkpoints, and the copy of the log that was forwarded off the gateway's host.

A checkpoint is a record of its own in the chain (``"event": "checkpoint"``) holding
``{n, seq, hash, time, key}`` — the n-th checkpoint, the seq and hash of the record just before it, when,
and which key — and an Ed25519 ``signature`` over that body. Once forwarded, it pins the log up to
``seq``: a copy made later that differs anywhere before it, ends before it, or is empty, disagrees with a
signature nobody but the gateway could make.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saferoom.audit.keys import AuditKey, PublicKey
from saferoom.audit.records import canonical, now
from saferoom.errors import UsageError

CHECKPOINT = "checkpoint"


def checkpoint(key: AuditKey, n: int, seq: int, digest: str) -> dict[str, Any]:
    """The n-th checkpoint, over record ``seq`` whose hash is ``digest``; chained like any record."""
    body = {"n": n, "seq": seq, "hash": digest, "time": now(), "key": key.public.id}
    return {"event": CHECKPOINT, "time": body["time"], "checkpoint": body, "signature": key.sign(canonical(body))}


def signature_problem(public: PublicKey, record: dict[str, Any]) -> str | None:
    """Why a checkpoint record is not one this key signed; None when it is."""
    body = record.get("checkpoint")
    if not isinstance(body, dict) or not isinstance(body.get("seq"), int) or not isinstance(body.get("hash"), str):
        return "a checkpoint without its body (damaged or forged)"
    if body.get("key") != public.id:
        return f"a checkpoint signed with key {body.get('key')}, not {public.id} (another audit key, or forged)"
    if not public.verify(str(record.get("signature", "")), canonical(body)):
        return f"checkpoint {body.get('n')} does not carry a valid signature (forged or altered)"
    return None


@dataclass(frozen=True)
class Anchor:
    """What an outside copy says record ``seq``'s hash is, and where that comes from."""

    seq: int
    hash: str
    source: str


@dataclass
class Copy:
    """The forwarded copy: its signed checkpoints and the records it holds, by seq."""

    anchors: dict[int, Anchor] = field(default_factory=dict)
    signed: set[int] = field(default_factory=set)  # the seqs signed checkpoints cover (a line sent twice counts once)
    last: Anchor | None = None  # the newest signed checkpoint
    problem: str | None = None
    unreadable: int = 0

    @property
    def checkpoints(self) -> int:
        return len(self.signed)


def load_copy(path: Path, public: PublicKey) -> Copy:
    """Read a forwarded copy: the file destination, or lines extracted from syslog (anything before the
    first ``{`` on a line, such as a syslog header, is skipped)."""
    copy = Copy()
    try:
        with path.open(encoding="utf-8", errors="replace") as lines:
            for text in lines:
                _take(copy, text, public)
    except OSError as exc:
        raise UsageError(f"cannot read the checkpoints file {path}: {exc.strerror}") from None
    return copy


def _take(copy: Copy, text: str, public: PublicKey) -> None:
    record = _parse(text)
    if record is None:
        copy.unreadable += bool(text.strip())
        return
    seq, digest = record["seq"], record["hash"]
    _anchor(copy, Anchor(seq, digest, "the forwarded copy"))
    if record.get("event") != CHECKPOINT:
        return
    problem = signature_problem(public, record)
    if problem:
        copy.problem = copy.problem or f"the forwarded copy holds {problem}"
        return
    body = record["checkpoint"]
    signed = Anchor(body["seq"], body["hash"], f"checkpoint {body.get('n')} signed at {body.get('time')}")
    _anchor(copy, signed)
    copy.signed.add(signed.seq)
    copy.last = signed if copy.last is None or signed.seq >= copy.last.seq else copy.last


def _anchor(copy: Copy, anchor: Anchor) -> None:
    known = copy.anchors.get(anchor.seq)
    if known is None or known.source == "the forwarded copy":
        copy.anchors[anchor.seq] = anchor
    if known is not None and known.hash != anchor.hash and copy.problem is None:
        copy.problem = (f"the forwarded copy holds two different records numbered {anchor.seq} (the log was "
                        "emptied or cut and written again)")


def _parse(text: str) -> dict[str, Any] | None:
    start = text.find("{")
    if start < 0:
        return None
    try:
        record = json.loads(text[start:])
    except ValueError:
        return None
    if isinstance(record, dict) and isinstance(record.get("seq"), int) and isinstance(record.get("hash"), str):
        return record
    return None
