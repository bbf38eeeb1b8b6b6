"""The manifest: what a build did, table by table and column by column, as JSON beside the target."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

META_TABLE = "saferoom_build"  # the table a build writes into its target: its id, policy hash and time


@dataclass
class TableResult:
    table: str
    name: str
    source_identity: str
    recipe: str
    rows_in: int
    rows_out: int
    carried_over: bool
    row_filter: str | None
    row_filter_left_to_policy: str | None
    columns: list[dict[str, Any]]
    k_anonymity: dict[str, Any] | None = None
    fingerprinted_values: int = 0


@dataclass
class Manifest:
    build: str
    build_id: str
    saferoom_version: str
    policy_hash: str
    role: str
    target: dict[str, str]
    started_at: str
    finished_at: str = ""
    source_snapshot: str = ""
    tables: list[TableResult] = field(default_factory=list)
    fingerprints: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_manifest(path: Path) -> Manifest | None:
    """The manifest at ``path``; None if there is none or it cannot be read."""
    try:
        data = json.loads(path.read_text())
        tables = [TableResult(**t) for t in data.pop("tables")]
        return Manifest(**data, tables=tables)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def write_manifest(path: Path, manifest: Manifest) -> None:
    write_json(path, manifest.to_dict())


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Written beside ``path`` and renamed over it: a reader sees the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def snapshot(tables: list[TableResult]) -> str:
    """One hash over every source table's content hash."""
    return "sha256:" + hashlib.sha256("|".join(f"{t.table}={t.source_identity}" for t in tables).encode()).hexdigest()


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
