"""What one user's queries may take at the gateway: a role's limits, with safe defaults for those it leaves out.

A policy that sets no limits (like the demo's) still gets bounded queries at the
gateway, where one analyst's query shares a process with everyone else's. The
embedded session applies only what the role sets: there, a runaway query costs
nobody but the person who ran it.

>>> from saferoom.policy.model import Role
>>> gateway_limits(Role(timeout_seconds=30)).timeout_seconds
30.0
>>> gateway_limits(Role()).max_concurrent
4
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from saferoom.policy.model import Role


@dataclass(frozen=True)
class Limits:
    """Per-user bounds; ``None`` means unbounded (only ever in an embedded session)."""

    timeout_seconds: float | None = None
    max_concurrent: int | None = None
    memory_limit: str | None = None
    threads: int | None = None
    temp_limit: str | None = None


GATEWAY_DEFAULTS = Limits(timeout_seconds=300, max_concurrent=4, memory_limit="2GB", threads=2, temp_limit="4GB")


def role_limits(role: Role) -> Limits:
    """Only what the role sets."""
    return Limits(**{f.name: getattr(role, f.name) for f in fields(Limits)})


def gateway_limits(role: Role, defaults: Limits = GATEWAY_DEFAULTS) -> Limits:
    """What the role sets, and the gateway's defaults for the rest."""
    configured = role_limits(role)
    return replace(defaults, **{f.name: getattr(configured, f.name) for f in fields(Limits) if getattr(configured, f.name) is not None})
