"""Records on disk: the chain's hash, reading the log forwards and backwards, and the per-user report."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from itertools import accumulate
from pathlib import Path
from typing import Any

from saferoom.errors import AuditError

GENESIS = "0" * 64
LOG, HEAD = "audit.log", "audit.head"


def canonical(value: dict[str, Any]) -> bytes:
    """The bytes a hash or a signature is computed over: sorted keys, no spaces."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()


def _digest(prev: str, record: dict[str, Any]) -> str:
    """SHA-256 of the previous hash and the record (without its own ``hash`` and ``hmac``)."""
    return hashlib.sha256(prev.encode() + canonical(record)).hexdigest()


def line(record: dict[str, Any]) -> str:
    """A record as the log holds it: one line of JSON."""
    return json.dumps(record, sort_keys=True, default=str)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def parse_record(text: str | bytes) -> dict[str, Any]:
    """One record of the log; a line that is not one means the log was edited or damaged."""
    try:
        record = json.loads(text)
        if isinstance(record, dict) and "seq" in record and "hash" in record:
            return record
    except ValueError:
        pass
    raise AuditError("the audit log holds a line that is not a record (edited or damaged); run "
                     "`saferoom audit verify` to find it and keep the file as evidence")


def repair(path: Path) -> None:
    """A crash can leave a last line half-written: it was never acknowledged, so drop it."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as out:
            out.truncate(data.rfind(b"\n") + 1)


def last_line(path: Path) -> str | None:
    if not path.exists() or path.stat().st_size == 0:
        return None
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - 65536))
        lines = f.read().splitlines()
    return lines[-1].decode() if lines else None


def read(folder: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Every record, oldest first; with ``limit``, only the last ``limit``, read from the end of the file."""
    path = folder / LOG
    if not path.exists():
        return []
    if limit:
        newest: list[dict[str, Any]] = []
        for record in newest_first(folder):
            if len(newest) == limit:
                break
            newest.append(record)
        return newest[::-1]
    with path.open(encoding="utf-8") as lines:
        return [parse_record(text) for text in lines if text.strip()]


def newest_first(folder: Path, block: int = 1 << 20) -> Iterator[dict[str, Any]]:
    """Records from the end of the log backwards, a block at a time: the cost is what is read, not the log's size."""
    for _, text in lines_backwards(folder / LOG, block):
        yield parse_record(text)


def lines_backwards(path: Path, block: int = 1 << 20) -> Iterator[tuple[int, bytes]]:
    """Each non-empty line of ``path`` from the last, with the byte offset where it starts."""
    if not path.exists():
        return
    with path.open("rb") as handle:
        end = handle.seek(0, os.SEEK_END)
        carry = b""
        while end > 0:
            start = max(0, end - block)
            handle.seek(start)
            pieces = (handle.read(end - start) + carry).split(b"\n")
            offsets = list(accumulate((len(p) + 1 for p in pieces[:-1]), initial=start))
            first = 1 if start > 0 else 0  # the first piece may begin in the block before: carried there
            carry = pieces[0] if first else b""
            for index in range(len(pieces) - 1, first - 1, -1):
                if pieces[index].strip():
                    yield offsets[index], pieces[index]
            end = start


def report(source: Path | Iterable[dict[str, Any]], jump: float = 10.0) -> dict[str, Any]:
    """Per user and per tag: queries, refusals, rows and bytes; flags a user whose last day jumps above their own baseline.
    ``source`` is a state folder, or the records themselves (read from any store)."""
    users: dict[str, Counter[str]] = defaultdict(Counter)
    tags: Counter[str] = Counter()
    daily: dict[str, Counter[str]] = defaultdict(Counter)
    for record in read(source) if isinstance(source, Path) else source:
        user = record.get("user") or "?"
        if record.get("event") == "decision":
            users[user]["queries"] += 1
            users[user]["refused"] += record.get("decision") == "refused"
            tags.update(record.get("tags") or [])
        elif record.get("event") == "result":
            users[user]["refused"] += record.get("error_type") == "QueryRejected"
            users[user]["rows"] += record.get("rows") or 0
            users[user]["bytes"] += record.get("bytes") or 0
            daily[user][str(record.get("time", ""))[:10]] += record.get("bytes") or 0
    flags = [_jump(user, days, jump) for user, days in daily.items()]
    return {"users": {u: dict(c) for u, c in users.items()}, "tags": dict(tags), "flags": [f for f in flags if f]}


def _jump(user: str, days: Counter[str], factor: float) -> str | None:
    if len(days) < 2:
        return None
    ordered = [days[d] for d in sorted(days)]
    baseline = sum(ordered[:-1]) / len(ordered[:-1])
    if baseline and ordered[-1] > factor * baseline:
        return f"{user}: {ordered[-1]:,} bytes on {sorted(days)[-1]}, {ordered[-1] / baseline:.0f}× their daily average"
    return None
