"""Check a policy against the live source catalogs."""

from __future__ import annotations

from dataclasses import dataclass

from saferoom.engines import registry
from saferoom.engines.base import Catalog
from saferoom.policy import Policy
from saferoom.split.manifest import META_TABLE

ERROR, WARNING = "error", "warning"


@dataclass(frozen=True)
class Finding:
    level: str
    table: str
    column: str | None
    message: str
    line: int | None = None  # of the policy file, where it lists the table or column this is about


def lint_sources(policy: Policy) -> list[Finding]:
    """Lint against the live catalog of every engine the policy's sources use."""
    from saferoom.session import open_engine  # the engine factory lives above this module

    findings: list[Finding] = []
    for family in registry.families(policy):
        engine = open_engine(policy, family.name)
        try:
            findings += lint(policy, engine.catalog(), engine.spec.default_schema, family.name)
        finally:
            engine.close()
    return findings


def lint(policy: Policy, catalog: Catalog, default_schema: str, engine: str | None = None) -> list[Finding]:
    """Listed tables and columns missing from the source, and source columns nobody classified; with ``engine``,
    only the tables of the sources that engine's family serves (the catalog is that engine's)."""
    findings: list[Finding] = []
    listed: set[tuple[str, str, str]] = set()
    for key, ref in policy.tables.items():
        if engine and not registry.serves(policy, ref.source, registry.spec_for(engine)):
            continue
        address = (ref.source.lower(), (ref.schema or default_schema).lower(), ref.name.lower())
        listed.add(address)
        findings += _compare(policy, key, _expected(policy, key), catalog.get(address))
    for address, columns in catalog.items():
        if address[0] in policy.model.sources and address not in listed and not _manifest(address, default_schema):
            name = ".".join(address)
            findings.append(Finding(WARNING, name, None, f"table {name} ({len(columns)} columns) is not classified, so nobody can query it"))
    return findings


def _manifest(address: tuple[str, str, str], default_schema: str) -> bool:
    """The table a build writes into its target to record itself: saferoom's own, not data to classify."""
    return address[1:] == (default_schema.lower(), META_TABLE)


def _expected(policy: Policy, table: str) -> dict[str, tuple[str, ...]]:
    """Listed columns that should exist: not those a build removed (listed only to explain their absence)."""
    columns = policy.columns(table)
    removed = {c for c, tags in columns.items() if tags and all(policy.model.tags[t].removed_by for t in tags)}
    return {c: tags for c, tags in columns.items() if c not in removed}


def _compare(policy: Policy, table: str, listed: dict[str, tuple[str, ...]], actual: dict[str, str] | None) -> list[Finding]:
    at = _line(policy, table)
    if actual is None:
        return [Finding(ERROR, table, None, f"table {table} is in the policy but not in the source", at)]
    missing = [Finding(ERROR, table, c, f"column {table}.{c} is classified but does not exist in the source", _line(policy, table, c))
               for c in listed if c not in actual]
    unclassified = [  # pointed at the table's line: that is where the column is to be added
        Finding(WARNING, table, c, f"column {table}.{c} ({kind}) is not classified, so it does not exist for anyone; tag it or mark it public", at)
        for c, kind in actual.items()
        if c not in listed
    ]
    return missing + unclassified


def _line(policy: Policy, table: str, column: str | None = None) -> int | None:
    """The line listing the table or column (as the file spells it: lint compares lower-cased names)."""
    if column is None:
        return policy.lines.exact(("tables", table))
    written = next((c for c in policy.model.tables[table] if c.lower() == column), column)
    return policy.lines.exact(("tables", table, written))
