"""Test policies as data: a policy's YAML loaded into dicts, changed where a test means to, written back.

Editing the text by string replacement misses silently when the text changes (a "Spark" policy whose source
stayed DuckDB would run the Spark tests on DuckDB); a dict edit that misses fails, and ``write`` checks which
engines the written policy really has.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

import saferoom


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


def demo(room: Any) -> dict[str, Any]:
    """The demo room's policy without its builds, its token key named by an absolute path."""
    policy = load(room.policy)
    del policy["builds"]
    policy["secrets"]["token_key"] = f"file:{room.folder / 'token.key'}"
    return policy


def move_tables(policy: dict[str, Any], old: str, new: str) -> None:
    """The tables of source ``old`` (and the row filters on them) become source ``new``'s."""
    policy["tables"] = {_moved(key, old, new): columns for key, columns in policy["tables"].items()}
    for role in policy["roles"].values():
        if "rows" in role:
            role["rows"] = {_moved(key, old, new): predicate for key, predicate in role["rows"].items()}


def _moved(key: str, old: str, new: str) -> str:
    source, _, rest = key.partition(".")
    return f"{new}.{rest}" if source == old else key


def write(policy: dict[str, Any], path: Path, engine: str | None = None) -> Path:
    """Write the policy; with ``engine``, check that it loads and every source is of that engine."""
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    if engine is not None:
        loaded = saferoom.load_policy(path)
        engines = {source.engine for source in loaded.model.sources.values()}
        assert engines == {engine}, f"{path.name} was meant to read {engine} and reads {', '.join(sorted(engines))}"
    return path
