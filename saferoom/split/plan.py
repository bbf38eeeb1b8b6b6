"""What a build will do, table by table, before anything is written."""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sqlglot import exp

from saferoom.engines import registry
from saferoom.engines.base import Catalog, EngineSpec
from saferoom.errors import BuildError, UsageError
from saferoom.explain import ColumnInfo, column_info
from saferoom.guard.views import build_view
from saferoom.policy import Action, ColumnRule, Policy
from saferoom.policy.filters import placeholders
from saferoom.policy.model import Build, KAnonymity
from saferoom.split.sources import sources_catalog

KEPT, CHANGED, REMOVED = "kept", "changed", "removed"


@dataclass(frozen=True)
class ColumnPlan(ColumnInfo):
    """A column as the build's role sees it: kept as it is, changed by its action, or removed (denied);
    and whether its raw values go into the fingerprint index."""

    fate: str = KEPT
    fingerprinted: bool = False


@dataclass(frozen=True)
class TablePlan:
    table: str
    name: str
    select: exp.Select
    columns: tuple[ColumnPlan, ...]  # every column of the source, removed ones too, in source order
    k_columns: tuple[str, ...]
    row_filter: str | None
    row_filter_left: str | None
    recipe: str = field(compare=False)
    types: dict[str, str] = field(default_factory=dict, compare=False)
    engine: str = "duckdb"  # where the policy view runs: the source's engine

    @property
    def sql(self) -> str:
        return self.select.sql("duckdb")

    @property
    def removed(self) -> list[str]:
        return [c.name for c in self.columns if c.fate == REMOVED]

    @property
    def fingerprinted(self) -> list[str]:
        """Text columns the build changed or removed; their raw values go into the fingerprint index."""
        return [c.name for c in self.columns if c.fingerprinted]


@dataclass(frozen=True)
class BuildPlan:
    name: str
    role: str
    engine: str
    target: Path
    tables: tuple[TablePlan, ...]
    k_anonymity: KAnonymity | None

    @property
    def manifest_path(self) -> Path:
        return self.beside("manifest.json")

    @property
    def fingerprints_path(self) -> Path:
        return self.beside("fingerprints")

    @property
    def fragment_path(self) -> Path:
        return self.beside("saferoom.yaml")

    def beside(self, suffix: str) -> Path:
        """A file beside the target, named after it: two builds of one name in one folder have two targets."""
        return self.target.with_name(f"{self.target.name}.{suffix}")


def make_plan(policy: Policy, name: str) -> BuildPlan:
    """What ``build`` would do, without writing anything."""
    from saferoom import __version__

    return plan_from_catalog(policy, name, sources_catalog(policy), __version__)


def plan_from_catalog(policy: Policy, name: str, catalog: Catalog, version: str) -> BuildPlan:
    build = _build(policy, name)
    target = _resolve(policy, build.target.path)
    _check_target(policy, target)
    keys = _tables(policy, name, build)
    base = f"{version}|{_key_id(policy)}"  # a new saferoom or a new token key makes every table new
    tables = [_table(policy, build, key, _target_name(policy, keys, key), catalog, base) for key in keys]
    return BuildPlan(name, build.role, build.target.engine, target, tuple(tables), build.k_anonymity)


def _build(policy: Policy, name: str) -> Build:
    if name not in policy.model.builds:
        known = ", ".join(sorted(policy.model.builds)) or "none are defined"
        raise UsageError(f"no build named `{name}` in {policy.path.name} (builds: {known}); add it under `builds:`")
    return policy.model.builds[name]


def _tables(policy: Policy, name: str, build: Build) -> list[str]:
    """The tables a build reads: its list, or every table of a source that is not a build's output."""
    if not build.tables:
        return [key for key, ref in policy.tables.items() if ref.source not in policy.model.builds]
    for key in build.tables:
        if policy.tables[key].source in policy.model.builds:
            raise UsageError(f"build `{name}` lists {key}, a table of build `{policy.tables[key].source}`'s output; "
                             "a build reads sources only: list the source table instead")
    return list(build.tables)


def _key_id(policy: Policy) -> str:
    """Which token key the tokens are under (a one-way id, as the manifest shows it)."""
    from saferoom.keyed import fingerprint_key
    from saferoom.split.fingerprints import key_id

    return key_id(fingerprint_key(policy.token_key)) if policy.token_key is not None else ""


def _resolve(policy: Policy, path: str) -> Path:
    """Absolute, without following a final symlink (a Parquet target is one)."""
    candidate = Path(path).expanduser()
    return Path(os.path.abspath(candidate if candidate.is_absolute() else policy.base / candidate))


def _check_target(policy: Policy, target: Path) -> None:
    for name in policy.model.sources:
        path = policy.source_path(name)
        if path is not None and _resolve(policy, str(path)) == target and name not in policy.model.builds:
            raise BuildError(f"the build target {target.name} is source `{name}`; a build never overwrites a source")
    if not target.parent.is_dir():
        raise BuildError(f"the folder for the build target does not exist: {target.parent}")


def _table(policy: Policy, build: Build, key: str, name: str, catalog: Catalog, base: str) -> TablePlan:
    ref = policy.tables[key]
    engine = policy.model.sources[ref.source].engine
    spec = registry.spec_for(engine)
    address = (ref.source.lower(), (ref.schema or spec.default_schema).lower(), ref.name.lower())
    if address not in catalog:
        raise BuildError(f"table {key} is in the policy but not in source `{ref.source}`; run `saferoom lint`")
    types = catalog[address]
    select = build_view(policy, build.role, {}, ref, types, spec, user_filters=False)
    columns = _columns(policy, build.role, key, types, spec)
    names = {c.name for c in columns if c.fate != REMOVED}
    k = build.k_anonymity
    k_columns = tuple(c.lower() for c in k.columns) if k and all(c.lower() in names for c in k.columns) else ()
    text = policy.model.roles[build.role].rows.get(key)
    predicate = policy.row_filter(build.role, key)  # None when there is no text
    user_dependent = predicate is not None and bool(placeholders(predicate))
    recipe = hashlib.sha256(f"{base}|{engine}|{select.sql(spec.dialect)}|{k_columns}|{k.k if k else 0}|{k.on_violation if k else ''}".encode())
    return TablePlan(
        key, name, select, columns, k_columns,
        None if user_dependent else text, text if user_dependent else None, recipe.hexdigest(), types, engine,
    )


def _columns(policy: Policy, role: str, key: str, types: dict[str, str], spec: EngineSpec) -> tuple[ColumnPlan, ...]:
    """Every column of the source, with its fate under the build's role; one the policy does not list is removed."""
    listed = policy.columns(key)
    return tuple(_column(policy.rule(role, key, name), kind, spec) if name in listed else _unlisted(name, kind)
                 for name, kind in types.items())


def _column(rule: ColumnRule, kind: str, spec: EngineSpec) -> ColumnPlan:
    return ColumnPlan(**asdict(column_info(rule, kind)), fate=_fate(rule.action),
                      fingerprinted=_fingerprinted(rule.action, spec.type_class(kind)))


def _unlisted(name: str, kind: str) -> ColumnPlan:
    return ColumnPlan(name, kind, Action.DENY.value, None, (), "not classified in the policy, so no role sees it", REMOVED)


def _fate(action: Action) -> str:
    return REMOVED if action is Action.DENY else KEPT if action is Action.ALLOW else CHANGED


def _fingerprinted(action: Action, type_class: str) -> bool:
    """Text the build removed or changed: names, emails, SSNs, card numbers. Numbers and dates are everywhere."""
    return action is not Action.ALLOW and type_class == "text"


def _target_name(policy: Policy, keys: list[str], key: str) -> str:
    """A table's name in the target: its own, or prefixed by its source where two tables the build reads
    share it. Only the build's own tables count: its output, served beside the sources, never does."""
    ref = policy.tables[key]
    clashes = [k for k in keys if policy.tables[k].name.lower() == ref.name.lower()]
    return ref.name.lower() if len(clashes) == 1 else f"{ref.source}_{ref.name}".lower()
