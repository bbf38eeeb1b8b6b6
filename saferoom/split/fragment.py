"""The policy fragment a build writes, so the built database can be served as a source."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import yaml

from saferoom.split.plan import REMOVED

if TYPE_CHECKING:
    from saferoom.policy import Policy
    from saferoom.split.manifest import Manifest, TableResult
    from saferoom.split.plan import BuildPlan


def fragment(policy: Policy, plan: BuildPlan, manifest: Manifest) -> str:
    """Tables of the built database, classified for what they now hold.

    Columns the build transformed (tokens, coarsened values, masks, constants)
    are public: the build was the control. Columns it copied raw keep their tags,
    so the gateway still governs them. Columns it removed are listed under a tag
    of their own that no role is given, so a query naming one is refused with the
    reason, as the guard refuses a denied column, instead of failing on a name the
    database does not know.
    """
    tables = {f"{plan.name}.{t.name}": {c["name"]: _tags(plan, c) for c in t.columns if _listed(c)} for t in manifest.tables}
    source = {"engine": plan.engine, "path": plan.target.name}  # the target as what it is: a DuckDB file, a Parquet folder
    removed = _removed_tags(policy, plan, manifest.tables)
    body: dict[str, Any] = {"sources": {plan.name: source}}
    if removed:
        body["threats"] = {name: text for name, (text, _) in removed.items()}
        body["tags"] = {name: tag for name, (_, tag) in removed.items()}
    body["tables"] = tables
    return "\n".join(_header(plan, manifest)) + "\n" + yaml.safe_dump(body, sort_keys=False, width=1000)


def _header(plan: BuildPlan, manifest: Manifest) -> list[str]:
    left = [f"#   {plan.name}.{t.name}: \"{t.row_filter_left_to_policy}\"" for t in manifest.tables if t.row_filter_left_to_policy]
    notes = ["# Row filters that need a user, for the roles that read this database:", *left] if left else []
    return [
        f"# Written by `saferoom build {plan.name}` (build {manifest.build_id}). Do not edit: the next build rewrites it.",
        f"# Serve it by adding `includes: [{plan.fragment_path.name}]` to the policy.",
        *notes,
    ]


def removed_tag(plan: BuildPlan, tag: str) -> str:
    """The fragment's tag for columns the build removed that carried ``tag`` in the sources."""
    return f"{plan.name}-removed-{tag}"


def _listed(column: dict[str, Any]) -> bool:
    """Columns the build wrote, and those it removed for a tag; not those the policy never listed (which do not
    exist for anyone, in production either)."""
    return column["fate"] != REMOVED or bool(column["tag"])


def _tags(plan: BuildPlan, column: dict[str, Any]) -> str | list[str]:
    if column["fate"] == REMOVED:
        return removed_tag(plan, str(column["tag"]))
    if column["action"] != "allow" or not column["tag"]:
        return "public"
    return str(column["tag"])


def _removed_tags(policy: Policy, plan: BuildPlan, tables: list[TableResult]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Per source tag of a removed column: the threat that says why it is gone, and the tag that names it."""
    tags = sorted({str(c["tag"]) for t in tables for c in t.columns if c["fate"] == REMOVED and c["tag"]})
    out = {}
    for tag in tags:
        why = "; ".join(f"{t}: {policy.threat(t)}" for t in policy.model.tags[tag].threats) if tag in policy.model.tags else ""
        text = (f"`saferoom build {plan.name}` removed this column (tag {tag}{f', {why}' if why else ''}): role "
                f"{plan.role} is denied it, so its values are not in this database")
        name = removed_tag(plan, tag)
        out[name] = (text, {"threats": [name], "removed_by": plan.name})
    return out
