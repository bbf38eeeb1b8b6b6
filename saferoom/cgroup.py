"""A room's own cgroup (v2): the bound on the room as a whole, where the per-process limits bound each process.

Started as root on a host whose cgroup2 hierarchy is writable, each room gets ``<cgroup2>/saferoom/room-…``:
``memory.max`` (and no swap), ``pids.max`` and ``cpu.max`` from the policy's ``rooms:`` limits, for whichever
of those controllers the hierarchy has (a controller bound to a cgroup v1 hierarchy is not there to use). bwrap
is moved into it before it starts, so everything in the room is counted; when the room ends, ``cgroup.kill``
ends whatever is left and the cgroup is removed. A starter killed with SIGKILL cannot clean up: its room's
cgroup is named for the starter's process id and start time, and the next room's start removes every cgroup
whose starter is gone.

Elsewhere (started by another account, no cgroup2, or a read-only one), :func:`hierarchy` says why, and a
room is bounded per process only (``prlimit``), which ``saferoom doctor`` reports.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from saferoom.policy.limits import RoomBounds

FOLDER = "saferoom"  # under the cgroup2 mount, holds every room's cgroup
CONTROLLERS = ("memory", "pids", "cpu")
CPU_PERIOD = 100_000  # microseconds: cpu.max's quota is the room's CPUs times this
EMPTY_SECONDS = 30.0  # how long a killed room's cgroup may take to empty before it is left for the next sweep


@dataclass(frozen=True)
class Hierarchy:
    """Where rooms' cgroups are made, and the controllers that bound them there."""

    folder: Path
    controllers: tuple[str, ...]


def mount() -> Path | None:
    """The cgroup2 hierarchy's mount point (``/sys/fs/cgroup``, or ``/sys/fs/cgroup/unified`` on a hybrid host)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    found = [Path(line.split()[4]) for line in lines if " - cgroup2 " in line]
    return min(found, key=lambda p: len(p.parts)) if found else None


def unavailable() -> str | None:
    """Why rooms cannot have cgroups here, with what to do; None when they can."""
    where = mount()
    if where is None:
        return "no cgroup2 hierarchy is mounted (mount -t cgroup2 none /sys/fs/cgroup)"
    if os.geteuid() != 0:
        return "rooms get a cgroup of their own only when started by root"
    if not os.access(where, os.W_OK):
        return f"the cgroup2 hierarchy at {where} is read-only here (a container may mount it so)"
    return None


def missing(where: Path) -> list[str]:
    """The controllers a room would want that the cgroup2 hierarchy at ``where`` does not offer."""
    try:
        offered = (where / "cgroup.controllers").read_text().split()
    except OSError:
        offered = []
    return [name for name in CONTROLLERS if name not in offered]


def hierarchy() -> Hierarchy | None:
    """The rooms' folder, made, its controllers enabled where the host lets them be, stale rooms swept; None where
    :func:`unavailable` says why, or where the folder cannot be made."""
    where = mount()
    if where is None or unavailable() is not None:
        return None
    folder = where / FOLDER
    try:
        folder.mkdir(mode=0o755, exist_ok=True)
    except OSError:
        return None
    for level in (where, folder):
        _enable(level, tuple(name for name in CONTROLLERS if name not in missing(where)))
    sweep(folder)
    return Hierarchy(folder, tuple(name for name in CONTROLLERS if name not in missing(folder)))


def _enable(level: Path, controllers: tuple[str, ...]) -> None:
    """Offer the controllers to the cgroups below ``level``, each on its own: a container's own cgroup, which holds
    its processes, may refuse (EBUSY), and then the rooms are bounded by what was offered."""
    for name in controllers:
        with contextlib.suppress(OSError):
            (level / "cgroup.subtree_control").write_text(f"+{name}")


@contextlib.contextmanager
def room_group(bounds: RoomBounds) -> Iterator[Path | None]:
    """``with room_group(bounds) as procs:`` a new room's cgroup, bounded, whose ``cgroup.procs`` is ``procs``
    (None where rooms get no cgroup); killed and removed on the way out."""
    found = hierarchy()
    if found is None:
        yield None
        return
    group = found.folder / f"room-{os.getpid()}-{_started(os.getpid())}-{secrets.token_hex(3)}"
    group.mkdir(mode=0o755)
    try:
        _bound(group, bounds, found.controllers)
        yield group / "cgroup.procs"
    finally:
        remove(group)


def _bound(group: Path, bounds: RoomBounds, controllers: tuple[str, ...]) -> None:
    """Write the room's totals for the controllers there are: memory (swap too), tasks, CPU share of the host."""
    limits = {
        "memory": {"memory.max": str(bounds.memory_bytes), "memory.swap.max": "0"},
        "pids": {"pids.max": str(bounds.processes)},
        "cpu": {"cpu.max": f"{max(1000, int(bounds.cpus * CPU_PERIOD))} {CPU_PERIOD}"},
    }
    for controller in controllers:
        for name, value in limits[controller].items():
            if (group / name).exists():  # memory.swap.max is absent on a host without swap accounting
                (group / name).write_text(value)


def entering(procs: Path | None, command: list[str]) -> list[str]:
    """``command``, started in the cgroup whose ``cgroup.procs`` is ``procs``: the shell moves itself in, then
    becomes the command, so bwrap and everything it starts are counted from their first instruction."""
    if procs is None:
        return command
    return ["/bin/sh", "-c", 'echo 0 > "$0" && exec "$@"', str(procs), *command]


def remove(group: Path) -> None:
    """End every process left in ``group`` and remove it; one that will not empty is left for the next sweep."""
    kill = group / "cgroup.kill"
    with contextlib.suppress(OSError):
        if kill.exists():
            kill.write_text("1")
        else:
            _kill_each(group)
    deadline = time.monotonic() + EMPTY_SECONDS
    while time.monotonic() < deadline:
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                return
            time.sleep(0.01)


def _kill_each(group: Path) -> None:
    for pid in (group / "cgroup.procs").read_text().split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), 9)


def sweep(folder: Path) -> list[Path]:
    """Remove the cgroups of rooms whose starter is gone (killed before it could clean up); return them."""
    stale = [group for group in folder.glob("room-*") if group.is_dir() and not _starter_alive(group.name)]
    for group in stale:
        remove(group)
    return stale


def _starter_alive(name: str) -> bool:
    """Whether the process that made the cgroup ``name`` (room-PID-START-…) still runs: same id, same start time."""
    parts = name.split("-")
    if len(parts) < 4 or not parts[1].isdigit():
        return False
    return _started(int(parts[1])) == parts[2]


def _started(pid: int) -> str:
    """A process's start time in clock ticks since boot (field 22 of /proc/PID/stat); '' when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def status() -> str:
    """One sentence for ``saferoom doctor``: how rooms are bounded as a whole on this host, and what to do if not."""
    found = hierarchy()
    if found is None:
        why = unavailable() or f"{mount()}/{FOLDER} cannot be made"
        return f"Rooms are bounded per process only (memory, CPU time, the account's processes): {why}."
    lacking = [name for name in CONTROLLERS if name not in found.controllers]
    if not lacking:
        return f"Each room is bounded as a whole by a cgroup of its own ({', '.join(CONTROLLERS)}) under {found.folder}."
    return (f"Each room gets a cgroup under {found.folder}, ended as a whole when it stops, but the cgroup2 hierarchy "
            f"there offers no {', '.join(lacking)} controller (a host may keep them in cgroup v1 hierarchies, a "
            "container may not pass them on), so those totals are not bounded: each process's limits are; on a "
            "systemd host, boot with systemd.unified_cgroup_hierarchy=1 (cgroup v2 only) to bound the room as a whole.")
