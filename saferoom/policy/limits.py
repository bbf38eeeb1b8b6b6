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

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from saferoom.policy.model import Role, RoomLimits


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


@dataclass(frozen=True)
class RoomBounds:
    """A room's limits, resolved: each is set on every process in the room before its command starts."""

    memory_bytes: int
    processes: int
    cpu_seconds: int
    tmp_bytes: int
    cpus: float = 2.0  # the room's share of the host's CPUs at once, where it has a cgroup (cpu.max)


# A notebook with pandas needs a few GB of address space and tens of threads; a fork bomb or a leak does not
# get much further than that before the limit stops it, and the host's other rooms keep running.
# /tmp is a tmpfs, held in the host's memory outside any process's address space: it needs a bound of its own.
ROOM_DEFAULTS = RoomBounds(memory_bytes=8 * 1024**3, processes=256, cpu_seconds=8 * 3600, tmp_bytes=1024**3)
_UNITS = {"B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
          "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}


def size_bytes(text: str) -> int:
    """A size as the policy writes it (``4GB``, ``512 MiB``; KB is 1000 bytes, KiB 1024), in bytes.

    >>> size_bytes("1.5 KiB")
    1536
    """
    number = text.rstrip("BKMGTi ")
    return int(float(number) * _UNITS[text[len(number):].strip()])


def room_bounds(rooms: Mapping[str, RoomLimits], role: str | None, defaults: RoomBounds = ROOM_DEFAULTS) -> RoomBounds:
    """The role's room limits, then the policy's `default` entry, then saferoom's own, limit by limit."""
    bounds = defaults
    for entry in (rooms.get("default"), rooms.get(role) if role else None):
        if entry is not None:
            bounds = replace(bounds, **_given(entry))
    return bounds


def _given(entry: RoomLimits) -> dict[str, Any]:
    """The limits an entry sets, in the units the room applies them in."""
    sizes = {"memory_bytes": entry.memory, "tmp_bytes": entry.tmp}
    counts: dict[str, int | float | None] = {"processes": entry.processes, "cpu_seconds": entry.cpu_seconds, "cpus": entry.cpus}
    return {**{k: size_bytes(v) for k, v in sizes.items() if v is not None}, **{k: v for k, v in counts.items() if v is not None}}
