"""The names a user may write for a policy table: ``t``, ``source.t``, ``source.schema.t``.

Names compare case-insensitively, quoted or not, as DuckDB does.
"""

from __future__ import annotations

from sqlglot import exp

from saferoom.engines import registry
from saferoom.engines.base import EngineSpec
from saferoom.errors import QueryRejected, did_you_mean
from saferoom.policy import Policy, TableRef


class Resolver:
    """Maps the names a user may write to policy tables."""

    def __init__(self, policy: Policy, default_schema: str, engine: EngineSpec | None = None) -> None:
        self._names: dict[tuple[str, ...], list[str]] = {}
        for key, ref in policy.tables.items():
            if engine is not None and not registry.serves(policy, ref.source, engine):
                continue  # a session reads the sources of one engine's family
            schema = (ref.schema or default_schema).lower()
            for name in _spellings(ref, schema, default_schema):
                self._names.setdefault(name, []).append(key)

    def resolve(self, table: exp.Table) -> str:
        parts = tuple(p.name.lower() for p in table.parts)
        keys = self._names.get(parts, [])
        if len(keys) == 1:
            return keys[0]
        written = ".".join(p.name for p in table.parts)
        if keys:
            raise QueryRejected(f"table `{written}` is ambiguous: write one of {', '.join(sorted(keys))}")
        raise QueryRejected(f"unknown table `{written}`.{self._suggest(written)} Run `saferoom tables` to list what you can query.")

    def names_table(self, column: exp.Column) -> bool:
        parts = tuple(p.name.lower() for p in column.parts[:-1])
        return len(self._names.get(parts, [])) == 1

    def _suggest(self, written: str) -> str:
        return did_you_mean(written, {".".join(n) for n in self._names})


def _spellings(ref: TableRef, schema: str, default_schema: str) -> list[tuple[str, ...]]:
    source, name = ref.source.lower(), ref.name.lower()
    spellings = [(source, schema, name), (name,)]
    if schema == default_schema.lower():
        spellings.append((source, name))
    return spellings
