"""The policy file's format (version 1), as typed models.

These models check shape only; cross-references (a tag that names a threat, a
role that names a tag) are checked in :mod:`saferoom.policy.loader`, where the
line numbers live.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from saferoom.policy.aggregate import Aggregate, Disclosure

PUBLIC = "public"
SIZE = r"^[0-9]+(\.[0-9]+)? ?(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$"


class Action(StrEnum):
    """What a role gets for a tag. Ordered from strictest to most open."""

    DENY = "deny"
    NULL = "null"
    REDACT = "redact"
    TOKENIZE = "tokenize"
    MASK = "mask"
    GENERALIZE = "generalize"
    ALLOW = "allow"

    @property
    def strictness(self) -> int:
        return list(Action).index(self)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Each source declares the SQL dialect its row filters are written in: the policy checks a filter's shape when
# it loads, knowing no engine (the engine registry, saferoom.engines.registry, runs the same dialect).
class DuckDBSource(Strict):
    dialect: ClassVar[str] = "duckdb"
    engine: Literal["duckdb"]
    path: str = Field(description="Database file; relative paths resolve against the policy file's folder.")


class ParquetSource(Strict):
    dialect: ClassVar[str] = "duckdb"
    engine: Literal["parquet"]
    path: str = Field(description="A folder of Parquet files, one table each (a file, or a folder of part files), as "
                      "`saferoom build` writes it; read by DuckDB. Relative paths resolve against the policy file's folder.")


class PostgresSource(Strict):
    dialect: ClassVar[str] = "postgres"
    engine: Literal["postgres"]
    url: str = Field(description="postgresql://user@host:5432/db (no password here; libpq options as query parameters).")
    password: str | None = Field(default=None, description="A reference: env:NAME or file:PATH.")


class SparkTable(Strict):
    format: Literal["parquet", "delta", "orc", "csv", "json"] = "parquet"
    path: str | None = Field(default=None, description="Where the table's files are; relative paths resolve against the policy's folder.")
    table: str | None = Field(default=None, description="Or a table of the session's catalog (Hive metastore, Delta, …): `db.name`.")

    @model_validator(mode="after")
    def _one_place(self) -> SparkTable:
        if (self.path is None) == (self.table is None):
            raise ValueError("give a Spark table either `path` (files) or `table` (a catalog table), not both or neither")
        return self


class SparkSource(Strict):
    dialect: ClassVar[str] = "spark"
    engine: Literal["spark"]
    master: str | None = Field(default="local[2]", description="local[N] or spark://host:7077.")
    connect: str | None = Field(default=None, description="A Spark Connect endpoint, sc://host:15002 (instead of master).")
    connect_timeout: float = Field(default=10.0, gt=0, description="Seconds Spark Connect has to answer at start "
                                   "before the session fails with an error naming the endpoint.")
    tables: dict[str, SparkTable] = Field(default_factory=dict, description="Tables by path (files) or by name in the session's catalog.")


Source = Annotated[DuckDBSource | ParquetSource | PostgresSource | SparkSource, Field(discriminator="engine")]


class Tag(Strict):
    threats: list[str] = Field(default_factory=list, description="Threat names from `threats:`.")
    description: str | None = None
    removed_by: str | None = Field(
        default=None, description="Written by a build: columns with this tag were removed from its database and are "
        "listed only so that a query naming one is told why (lint does not look for them).")


class ActionSpec(Strict):
    """An action with its options, e.g. ``{action: generalize, bucket: 1000, prefix: 2}``."""

    action: Action
    bucket: float | None = Field(default=None, gt=0, description="generalize: width of a numeric bucket.")
    prefix: int | None = Field(default=None, ge=0, description="generalize: characters of a string kept.")
    date_unit: Literal["year", "quarter", "month", "week", "day"] | None = Field(
        default=None, description="generalize: dates and timestamps truncate to this unit (month)."
    )
    text: str | None = Field(default=None, description="redact: the constant shown instead (REDACTED).")


class Role(Strict):
    description: str | None = None
    columns: dict[str, Action | ActionSpec] = Field(
        default_factory=dict, description="tag -> action; a tag not listed is denied."
    )
    rows: dict[str, str] = Field(
        default_factory=dict, description="table -> SQL predicate over the raw table; {user.attr} binds a literal."
    )
    max_rows: int | None = Field(default=None, gt=0, description="Results are cut after this many rows.")
    max_bytes_per_day: int | None = Field(default=None, gt=0, description="Gateway: result bytes per user per day.")
    max_concurrent: int | None = Field(default=None, gt=0, description="Gateway: queries at once per user.")
    timeout_seconds: float | None = Field(default=None, gt=0, description="A query running longer is stopped.")
    memory_limit: str | None = Field(default=None, pattern=SIZE, description="DuckDB: memory one user's queries may hold, e.g. 2GB.")
    threads: int | None = Field(default=None, gt=0, le=256, description="DuckDB: threads one user's queries may use.")
    temp_limit: str | None = Field(default=None, pattern=SIZE, description="DuckDB: disk one user's queries may spill, e.g. 4GB.")
    audit: bool = Field(default=False, description="May read the gateway's audit log.")
    aggregate: Aggregate | None = Field(default=None, description="Statistics only: see docs/aggregate.md.")
    disclosure: Disclosure | None = Field(default=None, description="Count result rows unique on quasi-identifiers.")


class RoomLimits(Strict):
    """What one room may use; each limit left out takes saferoom's default (saferoom/policy/limits.py)."""

    memory: str | None = Field(default=None, pattern=SIZE, description="Address space each process in the room may map, e.g. 4GB; the room's total where it has a cgroup.")
    processes: int | None = Field(default=None, gt=0, description="Processes and threads the room's account may run at once (the room's, where it has a cgroup).")
    cpu_seconds: int | None = Field(default=None, gt=0, description="CPU time each process in the room may use.")
    tmp: str | None = Field(default=None, pattern=SIZE, description="The room's private /tmp, held in memory, e.g. 1GB.")
    cpus: float | None = Field(default=None, gt=0, description="CPUs the room as a whole may keep busy at once, e.g. 1.5 (where rooms get a cgroup).")


Attribute = str | int | float | bool | list[str | int | float | bool]


class User(Strict):
    roles: list[str] = Field(min_length=1)
    attributes: dict[str, Attribute] = Field(default_factory=dict)


class Target(Strict):
    engine: Literal["duckdb", "parquet"]
    path: str = Field(description="A DuckDB file, or a folder of Parquet files; relative to the policy's folder.")


class KAnonymity(Strict):
    columns: list[str] = Field(min_length=1, description="Output columns that together could single a person out.")
    k: int = Field(ge=2, description="Every combination of those columns must occur at least k times.")
    on_violation: Literal["suppress", "fail", "report"] = "suppress"
    max_suppressed: float | None = Field(
        default=None, ge=0, le=1, description="suppress: the largest share of a table's rows suppression may drop; "
        "more fails the build. Default: anything short of every row (a table emptied by suppression fails); 1 accepts even that.")


class Build(Strict):
    """A closed analytics database made from the sources through one role's eyes."""

    role: str = Field(description="Column actions come from this role; its row filters without {user.*} apply.")
    target: Target
    tables: list[str] | None = Field(default=None, description="Tables to build (default: every table).")
    k_anonymity: KAnonymity | None = None


class LicenseOverride(Strict):
    """A reviewed license decision for a project whose wheels do not say it in a form saferoom can read."""

    expression: str = Field(min_length=1, description="The SPDX expression that applies, e.g. BSD-3-Clause.")
    reason: str = Field(min_length=1, description="Who reviewed what, and why this expression is right.")


class Packages(Strict):
    """The curated package index for rooms without internet."""

    requirements: list[str] = Field(min_length=1, description="The approved top-level set, as pip requirements.")
    python: list[str] = Field(default_factory=lambda: ["3.11"], description="Python versions to resolve for.")
    platforms: list[str] = Field(default_factory=lambda: ["manylinux_2_17_x86_64"], description="Wheel platform tags.")
    licenses: list[str] = Field(min_length=1, description="SPDX ids; a package under any other license is refused.")
    deny: list[str] = Field(default_factory=list, description="Requirements that must never be admitted, e.g. requests<2.31.")
    vulnerabilities: str | None = Field(default=None, description="A local OSV export: a folder of JSON files, or its zip.")
    allow_empty_vulnerabilities: bool = Field(
        default=False, description="Sync without a vulnerability feed, or with one that holds no PyPI advisory.")
    index_vulnerabilities: bool = Field(
        default=True, description="Also ask the index's JSON API for each release's known vulnerabilities during a sync; "
        "false for a mirror that cannot reach one (the local OSV feed alone then decides, and the report says so).")
    license_overrides: dict[str, LicenseOverride] = Field(
        default_factory=dict, description="Project -> reviewed SPDX expression and the reason; replaces what its wheels say.")
    bundled: Literal["review", "refuse"] = Field(
        default="review", description="Licences a wheel bundles beyond its own: list them for review, or refuse the wheel "
        "when one is not in `licenses`.")
    fallback: Literal["none", "previous-clean"] = Field(
        default="none", description="When the newest version is refused: refuse it (none), or take the newest older "
        "version that passes, if it is no older than `fallback_max_age_days`.")
    fallback_max_age_days: int = Field(default=365, ge=1, description="How old a fallback release may be.")


class ReviewRule(Strict):
    """Who reviews one kind of request, and how many must approve."""

    roles: list[str] = Field(min_length=1, description="Roles whose users may review (approve, reject, return) this kind.")
    approvals: int | None = Field(default=None, ge=1, le=10, description="Approvals needed, each from a different "
                                  "reviewer, never the requester (default: 2 for release, 1 for access and packages).")
    max_duration: str | None = Field(default=None, pattern=r"^[0-9]+[smhdw]$",
                                     description="access: the longest grant that may be asked for, e.g. 8h (default 7d).")


class Reviews(Strict):
    """The request engine's reviewers; a kind not listed here has no reviewers, so its requests wait (fail closed)."""

    release: ReviewRule | None = None
    access: ReviewRule | None = None
    packages: ReviewRule | None = None


class PolicyModel(Strict):
    """A saferoom policy: sources, threat model, classification, users and roles."""

    version: Literal[1]
    sources: dict[str, Source]
    secrets: dict[str, str] = Field(default_factory=dict, description="name -> env:NAME or file:PATH")
    threats: dict[str, str] = Field(default_factory=dict)
    tags: dict[str, Tag] = Field(default_factory=dict)
    tables: dict[str, dict[str, str | list[str]]] = Field(
        description="source.table or source.schema.table -> column -> tag(s); 'public' means untagged."
    )
    users: dict[str, User] = Field(default_factory=dict)
    roles: dict[str, Role] = Field(default_factory=dict)
    builds: dict[str, Build] = Field(default_factory=dict)
    packages: Packages | None = None
    rooms: dict[str, RoomLimits] = Field(
        default_factory=dict, description="role (or `default`, for every role) -> the limits of its rooms.")
    reviews: Reviews = Field(default_factory=Reviews, description="Who reviews release, access and package requests.")
    includes: list[str] = Field(
        default_factory=list, description="Policy fragments (sources, tags, threats, tables) to merge, e.g. from a build."
    )
