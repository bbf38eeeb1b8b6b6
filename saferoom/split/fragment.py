"""The policy fragment a build writes, so the built database can be served as a source."""

from __future__ import annotations

from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from saferoom.split.manifest import Manifest
    from saferoom.split.plan import BuildPlan


def fragment(plan: BuildPlan, manifest: Manifest) -> str:
    """Tables of the built database, classified for what they now hold.

    Columns the build transformed (tokens, coarsened values, masks, constants)
    are public: the build was the control. Columns it copied raw keep their tags,
    so the gateway still governs them.
    """
    tables = {f"{plan.name}.{t.name}": {c["name"]: _tags(c) for c in t.columns} for t in manifest.tables}
    source = {"engine": plan.engine if plan.engine == "duckdb" else "duckdb", "path": plan.target.name}
    body = yaml.safe_dump({"sources": {plan.name: source}, "tables": tables}, sort_keys=False, width=1000)
    left = [f"#   {plan.name}.{t.name}: \"{t.row_filter_left_to_policy}\"" for t in manifest.tables if t.row_filter_left_to_policy]
    notes = ["# Row filters that need a user, for the roles that read this database:", *left] if left else []
    header = [
        f"# Written by `saferoom build {plan.name}` (build {manifest.build_id}). Do not edit: the next build rewrites it.",
        f"# Serve it by adding `includes: [{plan.fragment_path.name}]` to the policy.",
        *notes,
    ]
    return "\n".join(header) + "\n" + body


def _tags(column: dict[str, object]) -> str | list[str]:
    if column["action"] != "allow" or not column["tag"]:
        return "public"
    return str(column["tag"])
