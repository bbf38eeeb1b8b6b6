"""The leak fingerprint index: keyed 64-bit hashes of every value a build removed or changed.

Format (``NAME.fingerprints``)::

    b"SRFP1\\n" | u32 header length | JSON header | per table: sorted little-endian u64 hashes

The header names the tables and columns, the count per table and a key id
(a hash of the key, so a checker can tell it holds the right one). The file
holds no cleartext value. Each hash is the first 8 bytes of HMAC-SHA256
under a key derived one way from ``secrets.token_key``, of the value's text
trimmed and lower-cased; values shorter than 4 characters are left out.

Size: 8 bytes per distinct value (8 MB per million). False positives: a
value that is not in the index matches with probability n / 2**64 per
lookup (5.4e-14 for a million values).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from saferoom.errors import UsageError
from saferoom.secrets import Secret

MAGIC = b"SRFP1\n"


@dataclass(frozen=True)
class Section:
    table: str
    columns: tuple[str, ...]
    hashes: np.ndarray  # sorted uint64


def key_id(key: Secret) -> str:
    return hmac.new(key.reveal().encode(), b"key id", hashlib.sha256).hexdigest()[:16]


def fingerprint(key: Secret, values: list[str]) -> np.ndarray:
    """Hashes of values as the index stores them (for checking text outside the engine)."""
    secret = key.reveal().encode()
    digests = [hmac.new(secret, v.strip().lower().encode(), hashlib.sha256).digest()[:8] for v in values]
    return np.frombuffer(b"".join(digests), dtype=">u8").astype(np.uint64)


def as_uint64(column: pa.ChunkedArray) -> np.ndarray:
    """A column of non-null 64-bit hashes as numpy (without the pandas import ``to_numpy`` brings)."""
    parts = [np.frombuffer(c.buffers()[1], dtype=np.uint64, count=len(c), offset=c.offset * 8) for c in column.chunks]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)


def unique_sorted(hashes: np.ndarray) -> np.ndarray:
    """Drop repeats from sorted hashes (two values can share a 64-bit hash)."""
    if len(hashes) < 2:
        return hashes
    return hashes[np.concatenate(([True], hashes[1:] != hashes[:-1]))]


def write(path: Path, key: Secret, sections: list[Section]) -> int:
    """Write the index beside ``path`` and swap it in; returns the number of hashes."""
    header = {
        "key_id": key_id(key),
        "tables": [{"table": s.table, "columns": list(s.columns), "count": int(len(s.hashes))} for s in sections],
    }
    blob = json.dumps(header).encode()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as out:
        out.write(MAGIC + struct.pack("<I", len(blob)) + blob)
        for section in sections:
            out.write(np.ascontiguousarray(section.hashes, dtype="<u8").tobytes())
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    return sum(len(s.hashes) for s in sections)


def read(path: Path) -> tuple[dict[str, object], list[Section]]:
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        raise UsageError(f"{path.name} is not a saferoom fingerprint index")
    (size,) = struct.unpack_from("<I", data, len(MAGIC))
    start = len(MAGIC) + 4
    header = json.loads(data[start : start + size])
    offset, sections = start + size, []
    for entry in header["tables"]:
        hashes = np.frombuffer(data, dtype="<u8", count=entry["count"], offset=offset).astype(np.uint64)
        sections.append(Section(entry["table"], tuple(entry["columns"]), hashes))
        offset += 8 * entry["count"]
    return header, sections


def contains(sections: list[Section], hashes: np.ndarray) -> np.ndarray:
    """Which of ``hashes`` are in the index (vectorised binary search)."""
    found = np.zeros(len(hashes), dtype=bool)
    for section in sections:
        if len(section.hashes):
            at = np.searchsorted(section.hashes, hashes).clip(0, len(section.hashes) - 1)
            found |= section.hashes[at] == hashes
    return found
