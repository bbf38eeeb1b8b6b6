"""The room: a command run in a sandbox whose only way to data is the gateway's Unix socket.

A room is built with bubblewrap (``bwrap``) from a typed :class:`RoomSpec`; :func:`bwrap_args`
turns the spec into bwrap's argument list and :func:`environment` into the command's
environment, both pure, so what a room exposes can be read and tested without starting one.

Inside: its own network namespace with only loopback (no route anywhere), its own PID, IPC and
UTS namespaces, a read-only view of /usr, a filtered /etc and the Python environment, one
writable workspace, a private /tmp, the gateway's socket, and nothing else: not the policy, the
state folder, source databases, keys or anyone's home. Limits (address space, processes, CPU
time) are set by ``prlimit`` before the command starts, as hard limits it cannot raise; /tmp has a size.
A system-call filter (saferoom/seccomp.py) refuses namespaces, mounts, ptrace and the rest of the kernel a
program has no need for; where the host allows, a cgroup of its own (saferoom/cgroup.py) bounds the room's
totals. The workspace is checked and mounted as one open descriptor, and the gateway's socket must be one
no other account could have made (files.socket_path_problem). The room's token is a lease its starter
renews (:class:`Lease`), so it dies soon after a starter killed with SIGKILL.

Started as root (a gateway host), bwrap runs privileged, without a user namespace, and the
command drops to the person's own account with ``setpriv`` inside the sandbox. The other ways
were tried and are wrong: ``bwrap --unshare-user --uid N`` as root maps N inside to root
outside, so the room could read root's 0600 files and writes files as root; dropping to N
before bwrap cannot bind what N cannot reach (the interpreter under /root/.pyenv, say), and
``--ro-bind-fd`` of a directory opened by root is refused the same way. Started by anyone else,
bwrap makes an unprivileged user namespace and the command keeps that person's uid.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from saferoom import cgroup, seccomp
from saferoom.client import RemoteSession
from saferoom.errors import RoomError, SaferoomError, UsageError
from saferoom.files import socket_path_problem
from saferoom.identity import TokenStore
from saferoom.policy.limits import ROOM_DEFAULTS, RoomBounds, room_bounds
from saferoom.secrets import Secret

if TYPE_CHECKING:
    from saferoom.policy import Policy

SOCKET = "/run/saferoom/gateway.sock"  # where the gateway's socket is inside every room
HUB = "/run/saferoom/hub.sock"  # a JupyterHub's API, for a notebook server in the room
PUBLISHED = "/run/saferoom/published"  # the folder where a server in the room makes the socket it is reached on
WORKSPACE = "/workspace"
PACKAGES = "/packages"
INSTALLED = f"{WORKSPACE}/.python-packages"  # where pip installs in a room: the environment itself is read-only
TOKEN_TTL = timedelta(hours=12)  # the longest a room's token lives, however long its room runs
LEASE = timedelta(seconds=60)  # how long a room's token outlives a starter that stopped renewing it (SIGKILL)
NAMESPACES = ("--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try")
# /etc holds the host's keys and configuration; a program needs only these to load libraries and name users
ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "passwd", "group", "nsswitch.conf",
       "localtime", "os-release", "mime.types")
TOP_LINKS = ("bin", "sbin", "lib", "lib64", "lib32", "libx32")  # /usr-merged systems make these links into /usr


@dataclass(frozen=True)
class Account:
    """The host account a room's command runs as when the room is started by root."""

    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class Host:
    """What bwrap's arguments depend on in the host's layout, read once by :func:`host`."""

    links: Mapping[str, str]  # /bin -> usr/bin and the like
    top: tuple[str, ...]  # the same names where they are real directories
    etc: tuple[str, ...]  # the entries of ETC this host has
    root: bool  # started by root: no user namespace, and setpriv drops to the room's account


@dataclass(frozen=True)
class RoomSpec:
    """One room: what runs, the one writable folder, the way to the gateway, and the bounds."""

    command: tuple[str, ...]
    socket: Path
    workspace: Path
    readonly: tuple[Path, ...] = ()  # host paths seen read-only at the same place: the Python environment
    packages: Path | None = None
    bounds: RoomBounds = ROOM_DEFAULTS
    account: Account | None = None
    python_bin: str | None = None  # the environment's bin folder, first on PATH
    user: str = "room"  # whom the room is for, as the gateway names them
    hub: Path | None = None  # a socket to a JupyterHub's API (a relay), seen at HUB
    published: Path | None = None  # a folder seen writable at PUBLISHED, whose socket a port outside reaches
    passed: Mapping[str, str] = field(default_factory=dict)  # variables given to the command besides the room's own


def python_paths() -> tuple[Path, ...]:
    """The folders this interpreter needs: its installation, the virtual environment, and saferoom itself
    (an editable install lives in a source tree, of which only the package is shown)."""
    package = Path(__file__).resolve().parent
    found = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(), package}
    return tuple(sorted(p for p in found if not any(p != q and p.is_relative_to(q) for q in found)))


def host() -> Host:
    links = {name: os.readlink(f"/{name}") for name in TOP_LINKS if os.path.islink(f"/{name}")}
    top = tuple(name for name in TOP_LINKS if name not in links and os.path.isdir(f"/{name}"))
    etc = tuple(name for name in ETC if os.path.exists(f"/etc/{name}"))
    return Host(links, top, etc, os.geteuid() == 0)


@dataclass(frozen=True)
class Opened:
    """What bwrap is handed open rather than by name: the workspace, checked on this very descriptor (a name could
    be swapped for a symbolic link between the check and the mount), and the system-call filter."""

    workspace: int
    seccomp: int

    def fds(self) -> tuple[int, int]:
        return (self.workspace, self.seccomp)

    def close(self) -> None:
        for fd in self.fds():
            os.close(fd)


def bwrap_args(spec: RoomSpec, layout: Host, opened: Opened) -> list[str]:
    """bwrap's command line for ``spec`` on a host laid out as ``layout``: the sandbox, then the limits, then the command.

    No secret is in it (a command line is visible to every account on the host): the token is in the environment.
    """
    return ["bwrap", *NAMESPACES, *(() if layout.root else ("--unshare-user",)), "--die-with-parent", "--new-session",
            *_system(layout), *_python(spec.readonly), *_doors(spec, opened.workspace),
            "--seccomp", str(opened.seccomp), "--",
            *_bounded(spec.bounds), *_as_account(spec.account), *spec.command]


def _system(layout: Host) -> list[str]:
    """/usr and the links into it, read-only, and of /etc only what programs need to start."""
    args = ["--ro-bind", "/usr", "/usr"]
    for name, target in sorted(layout.links.items()):
        args += ["--symlink", target, f"/{name}"]
    for name in layout.top:
        args += ["--ro-bind", f"/{name}", f"/{name}"]
    args += ["--perms", "0755", "--dir", "/etc"]
    for name in layout.etc:
        args += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    return args


def _python(paths: Sequence[Path]) -> list[str]:
    """The Python environment, read-only where it is on the host (a virtual environment names absolute paths)."""
    outside = [str(p) for p in paths if not p.is_relative_to("/usr")]  # under /usr it is there already
    return _parents(outside) + [arg for path in outside for arg in ("--ro-bind", path, path)]


def _doors(spec: RoomSpec, workspace: int) -> list[str]:
    """The packages (read-only), the workspace (the one writable folder), the gateway's socket, a private /tmp."""
    packages = ["--ro-bind", str(spec.packages), PACKAGES] if spec.packages else []
    hub = ["--ro-bind", str(spec.hub), HUB] if spec.hub else []
    published = ["--bind", str(spec.published), PUBLISHED] if spec.published else []
    return [*packages, "--bind-fd", str(workspace), WORKSPACE, *_parents([SOCKET]), "--ro-bind", str(spec.socket), SOCKET,
            *hub, *published,
            *_scratch("/tmp", spec.bounds.tmp_bytes), "--proc", "/proc", "--dev", "/dev",
            *_scratch("/dev/shm", spec.bounds.tmp_bytes), *_sealed(), "--chdir", WORKSPACE]


def _sealed() -> list[str]:
    """The sandbox's own root, read-only once everything is mounted on it: in a user namespace its folders
    (/etc, /run) belong to the room's user, who could otherwise fill them, unbounded, in the host's memory."""
    return ["--remount-ro", "/"]


def _scratch(path: str, size: int) -> list[str]:
    """A private tmpfs anyone in the room may write, of a bounded size: it is held in the host's memory.
    /dev/shm is one too (bwrap's is root's alone), for multiprocessing's semaphores and shared arrays."""
    return ["--perms", "1777", "--size", str(size), "--tmpfs", path]


def _parents(paths: Sequence[str]) -> list[str]:
    """Folders above mount points, made world-readable: bwrap as root makes them 0700, and the room's account
    could not reach the interpreter under /root/.pyenv. Only the path is there, not the rest of /root."""
    folders = sorted({str(parent) for p in paths for parent in Path(p).parents if str(parent) != "/"})
    return [arg for folder in folders for arg in ("--perms", "0755", "--dir", folder)]


def _bounded(bounds: RoomBounds) -> list[str]:
    """prlimit sets each limit soft and hard, so nothing in the room can raise it again."""
    return ["prlimit", f"--as={bounds.memory_bytes}", f"--nproc={bounds.processes}", f"--cpu={bounds.cpu_seconds}",
            "--core=0", "--"]


def _as_account(account: Account | None) -> list[str]:
    """Root inside a privileged sandbox becomes the account, with no capabilities left and none to gain."""
    if account is None:
        return []
    return ["setpriv", f"--reuid={account.uid}", f"--regid={account.gid}", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]


def environment(spec: RoomSpec, token: Secret) -> dict[str, str]:
    """The command's whole environment: nothing of the starter's leaks in (its SAFEROOM_POLICY, its tokens)."""
    path = ":".join([*([spec.python_bin] if spec.python_bin else []), "/usr/local/bin", "/usr/bin", "/bin"])
    return {**spec.passed, "PATH": path, "HOME": WORKSPACE, "TMPDIR": "/tmp", "LANG": "C.UTF-8",
            "USER": spec.account.name if spec.account else spec.user,
            "SAFEROOM_SOCKET": SOCKET, "SAFEROOM_TOKEN": token.reveal(), **_pip(spec.packages)}


def _pip(packages: Path | None) -> dict[str, str]:
    """pip reads the snapshot's index (a folder `saferoom packages sync` wrote), or no index at all, and installs
    into the workspace, which Python searches first: the room's environment is read-only, and a virtual
    environment has no user site for ``pip install --user``."""
    index = {"PIP_INDEX_URL": f"file://{PACKAGES}/simple/"} if packages else {"PIP_NO_INDEX": "1"}
    return {**index, "PIP_TARGET": INSTALLED, "PYTHONPATH": INSTALLED}


def account(name: str) -> Account:
    """The host account named ``name``; root's own is refused, since a room as root is no room."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise RoomError(f"there is no account named {name!r} on this host: a room started as root runs as the "
                        f"person's own account; create it (useradd --system {name}) or give --account") from None
    if entry.pw_uid == 0:
        raise RoomError(f"account {name!r} is root: a room runs as an unprivileged account; give --account")
    return Account(name, entry.pw_uid, entry.pw_gid)


def problems(layout: Host | None = None) -> list[str]:
    """What this host lacks for rooms, each with the way to fix it; empty when a sandbox can be made."""
    return list(_problems((layout or host()).root, os.environ.get("PATH", "")))


@functools.cache
def _problems(root: bool, path: str) -> tuple[str, ...]:
    """Asked once a process (a room's start asks at each step, and a probe is a sandbox made and ended)."""
    missing = [tool for tool in ("bwrap", "prlimit", *(("setpriv",) if root else ())) if not shutil.which(tool, path=path)]
    if missing:
        return tuple(f"{tool} is not installed: apt-get install {'bubblewrap' if tool == 'bwrap' else 'util-linux'}"
                     for tool in missing)
    filtering = seccomp.problem()
    if filtering:
        return (filtering,)
    probe = ["bwrap", *NAMESPACES, *(() if root else ("--unshare-user",)), "--ro-bind", "/", "/", "--", "true"]
    done = subprocess.run(probe, check=False, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        return (f"bwrap cannot make a sandbox here ({done.stderr.strip() or f'exit {done.returncode}'}): user "
                "namespaces may be off (sysctl kernel.unprivileged_userns_clone=1, or on Ubuntu "
                "kernel.apparmor_restrict_unprivileged_userns=0), or the container forbids them",)
    return ()


def open_workspace(workspace: Path, private: Sequence[Path], owner: Account | None = None) -> int:
    """The workspace, opened once (a symbolic link is not followed) and checked on that descriptor, which bwrap
    then mounts (``--bind-fd``): swapping the name for a link to another folder after the check changes nothing.

    Refused: not a folder, a folder holding the policy, the state folder or another private path (the room could
    read and write them there), and, started as root, a folder the room's account does not own.
    """
    try:
        fd = os.open(workspace, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        raise RoomError(f"the workspace {workspace} is not a folder (a symbolic link is not followed): give the "
                        "folder itself, owned by the room's account") from None
    try:
        inside = Path(os.readlink(f"/proc/self/fd/{fd}"))  # where the descriptor is, whatever the name says now
        for path in private:
            if path.resolve().is_relative_to(inside):
                raise RoomError(f"the workspace {workspace} holds {path}, which a room must not see; "
                                "give a workspace folder of its own")
        if owner is not None:
            owned_by(fd, owner, workspace)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_workspace(workspace: Path, private: Sequence[Path]) -> None:
    """Refuse a workspace :func:`open_workspace` would refuse."""
    os.close(open_workspace(workspace, private))


def check_socket(path: Path) -> None:
    """Refuse a gateway socket another account could have made or could replace (see files.socket_path_problem)."""
    found = socket_path_problem(path, listening=False)
    if found:
        raise RoomError(f"the gateway's socket {path} cannot be trusted: {found}; put it in a folder only the "
                        "gateway's account (or root) can write, such as /run/saferoom")


def possible() -> None:
    """Refuse, saying what to fix, when this host cannot make a sandbox: nothing runs unconfined instead."""
    found = problems()
    if found:
        raise RoomError("no room can be made on this host: " + "; ".join(found) + " (`saferoom doctor` checks a host)")


def run(spec: RoomSpec, token: Secret, workspace: int) -> int:
    """Run the room's command to its end, in a cgroup of its own where the host allows one, and return its exit
    status; refuse if no sandbox can be made. ``workspace`` is the descriptor :func:`open_workspace` checked."""
    possible()
    if host().root and spec.account is None:
        raise RoomError("a room started as root needs an account to run as: give --account")
    with cgroup.room_group(spec.bounds) as procs:
        return _waited(_started(spec, token, workspace, procs))


def _started(spec: RoomSpec, token: Secret, workspace: int, procs: Path | None) -> subprocess.Popen[bytes]:
    """bwrap started (in the room's cgroup, when there is one) with the workspace and the filter handed to it
    open; this process's copies are closed once bwrap has its own."""
    filtered = seccomp.room_filter()
    opened = Opened(os.dup(workspace), filtered)
    try:
        command = cgroup.entering(procs, bwrap_args(spec, host(), opened))
        return subprocess.Popen(command, env=environment(spec, token), pass_fds=opened.fds())
    finally:
        opened.close()


def _waited(process: subprocess.Popen[bytes]) -> int:
    with _stopped_by_sigterm():
        try:
            return process.wait()
        finally:
            if process.poll() is None:  # interrupted: killing bwrap ends everything in its PID namespace
                process.kill()
                process.wait()


@contextlib.contextmanager
def _stopped_by_sigterm() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the sandbox is ended and the room's token revoked on the way out
    (by default it would end this process on the spot, leaving the token valid until it expires)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; its owner decides what SIGTERM does
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(sig: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {sig}")


@contextlib.contextmanager
def minted(state: Path, user: str, role: str | None, ttl: timedelta = TOKEN_TTL,
           lease: timedelta = LEASE) -> Iterator[Secret]:
    """A token for one room, revoked when the room ends; and since a starter killed with SIGKILL revokes
    nothing, the token lives only ``lease`` at a time, renewed while the starter runs (never past ``ttl``)."""
    store = TokenStore(state)
    token, record = store.create(user, role, min(ttl, lease))
    renewing = Lease(store, record.id, datetime.now(UTC) + ttl, lease)
    try:
        yield Secret(token)
    finally:
        renewing.stop()
        store.revoke(record.id)


class Lease:
    """A thread that pushes a token's expiry ``lease`` ahead every third of ``lease``, up to ``until``: the token
    dies at most ``lease`` after its starter does, whatever killed it."""

    def __init__(self, store: TokenStore, token_id: str, until: datetime, lease: timedelta) -> None:
        self.store, self.token_id, self.until, self.lease = store, token_id, until, lease
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="saferoom-room-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.lease.total_seconds() / 3):
            with contextlib.suppress(OSError, ValueError, SaferoomError):  # a failed renewal lets the token lapse
                self.store.renew(self.token_id, min(self.until, datetime.now(UTC) + self.lease))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def start(command: Sequence[str], socket: Path, workspace: Path, token: Secret, *, role: str | None = None,
          policy: Policy | None = None, packages: Path | None = None, account_name: str | None = None,
          private: Sequence[Path] = (), hub: Path | None = None, published: Path | None = None,
          passed: Mapping[str, str] | None = None) -> int:
    """Run ``command`` in a room for whoever ``token`` belongs to, and return its exit status.

    The gateway says whose token it is before anything starts (a token it refuses opens no room); the
    policy, when given, says the room's limits for that role; started as root, the room runs as the
    account named ``account_name``, or else the one named for the user.
    """
    if not command:
        raise UsageError("say what to run in the room, after --: saferoom room --socket PATH -- python")
    possible()
    check_socket(socket)
    private = [*private, *(kept_out(policy) if policy else ())]
    check_workspace(workspace, private)  # before the gateway is asked anything
    with RemoteSession(None, token.reveal(), role, socket=socket) as session:
        user, acting = session.user, session.role
    spec = RoomSpec(
        command=tuple(command), socket=socket.resolve(), workspace=workspace.resolve(), readonly=python_paths(),
        packages=_snapshot(packages), bounds=room_bounds(policy.model.rooms, acting) if policy else ROOM_DEFAULTS,
        account=account(account_name or user) if host().root else None, python_bin=str(Path(sys.executable).parent),
        user=user, hub=hub, published=published, passed=dict(passed or {}),
    )
    fd = open_workspace(workspace, private, spec.account)
    try:
        if spec.account is not None and published is not None:
            os.chown(published, spec.account.uid, spec.account.gid)  # the room's server makes its socket there
        return run(spec, token, fd)
    finally:
        os.close(fd)


def owned_by(workspace: int | Path, owner: Account, shown: Path | None = None) -> None:
    """Started as root, a room writes only a folder its account owns: a folder of root's (the current one, by
    default) would be shown to the account with whatever root keeps in it. ``workspace``: a path or descriptor."""
    found = os.stat(workspace).st_uid
    if found != owner.uid:
        raise RoomError(f"the workspace {shown or workspace} belongs to uid {found}, not to the room's account "
                        f"{owner.name}: give the account a folder of its own (chown {owner.name} FOLDER)")


def kept_out(policy: Policy) -> list[Path]:
    """What a policy names that no room may see: the policy file, its sources' files, its secrets' files."""
    sources = [policy.source_path(name) for name in policy.model.sources]
    files = [policy.local_path(ref.removeprefix("file:")) for ref in policy.model.secrets.values() if ref.startswith("file:")]
    return [policy.path, *(p for p in sources if p is not None), *files]


def _snapshot(packages: Path | None) -> Path | None:
    """A snapshot folder's `latest`, as the gateway serves it, or the folder itself."""
    if packages is None:
        return None
    if not packages.is_dir():
        raise UsageError(f"the package snapshot {packages} is not a folder; give what `saferoom packages sync` wrote")
    return (packages / "latest" if (packages / "latest").exists() else packages).resolve()
