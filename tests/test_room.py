"""Rooms: real bubblewrap sandboxes around real commands, whose only way out is a real gateway's Unix socket.

As root (CI), each room runs as the unprivileged account `nobody`; as anyone else, as that person.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

import saferoom
from saferoom import room as rooms
from saferoom import seccomp
from saferoom.client import RemoteSession
from saferoom.errors import AuthError, PolicyError, RoomError
from saferoom.policy.limits import ROOM_DEFAULTS, RoomBounds, room_bounds, size_bytes
from saferoom.policy.model import RoomLimits
from saferoom.relay import Relay
from saferoom.secrets import Secret
from tests import policies
from tests.gateway_helpers import SERVE, Server, answers, eventually, free_port, gateway_policy, self_signed

ROOT = os.geteuid() == 0
ACCOUNT = "nobody"
ROOM_SECONDS = 120  # a room that runs longer than this hangs; the test ends it (and --die-with-parent the sandbox)
FORKS = 24  # processes a room may add to what its account already runs: enough for Python, far from a bomb
MEMORY = "1GiB"
CPU_SECONDS = 5
TMP = "32MB"

sandbox = pytest.mark.skipif(bool(rooms.problems()) and not os.environ.get("SAFEROOM_REQUIRE_SANDBOX"),
                             reason="no sandbox on this host: " + "; ".join(rooms.problems()) + " (`saferoom doctor`)")


def room_uid() -> int:
    return pwd.getpwnam(ACCOUNT).pw_uid if ROOT else os.getuid()


def tasks_of(uid: int) -> int:
    """Processes and threads ``uid`` runs now: RLIMIT_NPROC counts them all, host-wide."""
    count = 0
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and entry.stat().st_uid == uid:
                count += len(list((entry / "task").iterdir()))
        except OSError:
            continue
    return count


def started(room, folder: Path, on_socket: bool) -> Server:
    """A gateway over the demo data, on a Unix socket or on a port, its policy giving rooms small limits."""
    if rooms.problems() and os.environ.get("SAFEROOM_REQUIRE_SANDBOX"):
        raise RuntimeError("bubblewrap must make sandboxes here (apt-get install bubblewrap): " + "; ".join(rooms.problems()))
    policy = policies.demo(room)
    policy["sources"]["prod"]["path"] = str(room.database)
    policy["rooms"] = {"default": {"memory": MEMORY, "processes": tasks_of(room_uid()) + FORKS, "cpu_seconds": CPU_SECONDS, "tmp": TMP}}
    path = policies.write(policy, folder / "saferoom.yaml")
    return Server(path, folder / "state", free_port(), folder / "server.log",
                  socket=folder / "gateway.sock" if on_socket else None).start()


@pytest.fixture(scope="module")
def gateway(room, tmp_path_factory) -> Iterator[Server]:
    server = started(room, tmp_path_factory.mktemp("roomgw"), on_socket=True)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tcp_gateway(room, tmp_path_factory) -> Iterator[Server]:
    server = started(room, tmp_path_factory.mktemp("roomtcp"), on_socket=False)
    yield server
    server.stop()


@pytest.fixture
def workspace(tmp_path) -> Path:
    """A workspace the room's account owns, as an admin would make it."""
    folder = tmp_path / "workspace"
    folder.mkdir(mode=0o700)
    if ROOT:
        os.chown(folder, room_uid(), -1)
    return folder


def in_room(gateway: Server, workspace: Path, *args: str, code: str, user: str = "alice") -> subprocess.CompletedProcess[str]:
    """Run Python ``code`` in a room for ``user``, its token minted in the gateway's state and revoked after."""
    door = ["--socket", str(gateway.socket)] if gateway.socket else ["--gateway", gateway.url]
    command = [sys.executable, "-c", SERVE, "room", *door, "--state", str(gateway.state),
               "-u", user, "--policy", str(gateway.policy), "--workspace", str(workspace),
               *(["--account", ACCOUNT] if ROOT else []), *args, "--", sys.executable, "-c", textwrap.dedent(code)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEROOM_")}
    return subprocess.run(command, capture_output=True, text=True, timeout=ROOM_SECONDS, env=env, check=False)


def tokens(gateway: Server) -> dict[str, bool]:
    """Token id -> revoked, for every token in the gateway's state."""
    path = gateway.state / "tokens.json"
    return {t["id"]: t["revoked"] for t in json.loads(path.read_text())} if path.exists() else {}


def last_json(done: subprocess.CompletedProcess[str]) -> dict:
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the sandbox's command line, as data ------------------------------------------------------------

SPEC = rooms.RoomSpec(command=("python", "job.py"), socket=Path("/srv/saferoom/gateway.sock"),
                      workspace=Path("/srv/rooms/alice"), readonly=(Path("/opt/python"),),
                      bounds=RoomBounds(memory_bytes=2**30, processes=64, cpu_seconds=60, tmp_bytes=2**28))
AS_ROOT = rooms.Host(links={"lib": "usr/lib"}, top=(), etc=("passwd", "ld.so.cache"), root=True)
OPENED = rooms.Opened(workspace=7, seccomp=8)  # descriptors, as bwrap is given them
AS_USER = rooms.Host(links={"lib": "usr/lib"}, top=(), etc=("passwd",), root=False)


def binds(args: list[str]) -> dict[str, str]:
    """Mount point -> host path for every bind in a bwrap command line."""
    return {args[i + 2]: args[i + 1] for i, a in enumerate(args) if a in ("--bind", "--ro-bind", "--bind-fd")}


def test_the_sandbox_shows_only_the_system_python_workspace_and_socket() -> None:
    args = rooms.bwrap_args(rooms.RoomSpec(**{**SPEC.__dict__, "account": rooms.Account("alice", 1001, 1001)}), AS_ROOT, OPENED)
    assert set(binds(args)) == {"/usr", "/etc/passwd", "/etc/ld.so.cache", "/opt/python", rooms.WORKSPACE, rooms.SOCKET}
    assert args[args.index(rooms.WORKSPACE) - 2 :][:2] == ["--bind-fd", "7"]  # the only writable one, as checked
    assert "--bind" not in args and args[args.index("--seccomp") + 1] == "8"
    assert binds(args)[rooms.SOCKET] == "/srv/saferoom/gateway.sock"
    for namespace in ("--unshare-net", "--unshare-pid", "--unshare-ipc", "--new-session", "--die-with-parent"):
        assert namespace in args
    sized = [args[i + 1] for i, a in enumerate(args) if a == "--size"]
    assert sized == [str(2**28)] * 2 and args[args.index("--tmpfs") + 1] == "/tmp"
    assert "--unshare-user" not in args  # as root: setpriv drops to the account; a user namespace would map it to root
    tail = args[args.index("--", args.index("--chdir")) + 1:]
    assert tail[:5] == ["prlimit", f"--as={2**30}", "--nproc=64", "--cpu=60", "--core=0"]
    assert tail[tail.index("setpriv"):][:3] == ["setpriv", "--reuid=1001", "--regid=1001"]
    assert "--no-new-privs" in tail and "--bounding-set=-all" in tail and tail[-2:] == ["python", "job.py"]


def test_as_a_user_the_sandbox_has_a_user_namespace_and_no_setpriv() -> None:
    args = rooms.bwrap_args(SPEC, AS_USER, OPENED)
    assert "--unshare-user" in args and "setpriv" not in args


def test_the_token_is_in_the_environment_not_on_the_command_line() -> None:
    token = Secret("sr_0123456789ab_" + "s" * 43)
    args, env = rooms.bwrap_args(SPEC, AS_ROOT, OPENED), rooms.environment(SPEC, token)
    assert not [a for a in args if token.reveal() in a]
    assert env["SAFEROOM_TOKEN"] == token.reveal() and env["SAFEROOM_SOCKET"] == rooms.SOCKET
    assert env["HOME"] == rooms.WORKSPACE and env["PIP_NO_INDEX"] == "1"


def test_room_limits_come_from_the_role_then_default_then_saferoom() -> None:
    configured = {"default": RoomLimits(memory="2GB", processes=50), "analyst": RoomLimits(processes=10, tmp="100MiB")}
    assert room_bounds(configured, "analyst") == RoomBounds(2 * 10**9, 10, ROOM_DEFAULTS.cpu_seconds, 100 * 2**20)
    assert room_bounds(configured, "investigator") == RoomBounds(2 * 10**9, 50, ROOM_DEFAULTS.cpu_seconds, ROOM_DEFAULTS.tmp_bytes)
    assert room_bounds({}, None) == ROOM_DEFAULTS
    assert size_bytes("512 MiB") == 512 * 2**20


def test_a_rooms_entry_that_is_no_role_is_a_policy_problem(room, tmp_path) -> None:
    policy = policies.demo(room)
    policy["rooms"] = {"analyts": {"processes": 10}}
    with pytest.raises(PolicyError, match="did you mean `analyst`"):
        saferoom.load_policy(policies.write(policy, tmp_path / "saferoom.yaml"))


def test_a_workspace_holding_the_policy_its_database_or_its_key_is_refused(room, tmp_path) -> None:
    policy = saferoom.load_policy(room.policy)
    kept = rooms.kept_out(policy)
    assert {room.policy, room.database, room.folder / "token.key"} <= {p.resolve() for p in kept}
    with pytest.raises(RoomError, match="must not see"):
        rooms.check_workspace(room.folder, kept)
    for path in kept:  # a workspace beside them is fine
        rooms.check_workspace(tmp_path, [path])


def test_without_bubblewrap_no_room_starts(gateway, workspace) -> None:
    """Fail closed: with bwrap not on PATH, the command does not run at all (it would write a file)."""
    command = [sys.executable, "-c", SERVE, "room", "--socket", str(gateway.socket), "--state", str(gateway.state),
               "-u", "alice", "--workspace", str(workspace), "--", "/bin/sh", "-c", f"touch {workspace}/ran"]
    before = tokens(gateway)
    done = subprocess.run(command, capture_output=True, text=True, timeout=ROOM_SECONDS, check=False,
                          env={**os.environ, "PATH": "/nonexistent"})
    assert done.returncode == RoomError.exit_code, done.stderr
    assert "bubblewrap" in done.stderr and not (workspace / "ran").exists()
    assert tokens(gateway) == before  # no token is minted for a room that cannot be


def test_the_gateway_answers_on_its_unix_socket_to_anyone_with_a_token(gateway) -> None:
    assert gateway.socket is not None and gateway.socket.stat().st_mode & 0o777 == 0o666  # rooms run as other accounts
    with saferoom.connect(socket=gateway.socket, token=gateway.token("alice")) as session:
        assert (session.user, session.role) == ("alice", "analyst")
        assert session.query("select distinct region from prod.orders").to_arrow().column(0).to_pylist() == ["EU"]
    assert f"unix:{gateway.socket}" in gateway.log.read_text()


def test_the_command_line_reaches_the_socket_the_environment_names(gateway, tmp_path) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SAFEROOM_")},
           "SAFEROOM_SOCKET": str(gateway.socket), "SAFEROOM_TOKEN": gateway.token("alice")}
    done = subprocess.run([sys.executable, "-c", SERVE, "query", "select distinct region from prod.orders", "-f", "json"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=ROOM_SECONDS, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [{"region": "EU"}]


# --- real rooms ------------------------------------------------------------------------------------


def test_a_room_run_by_root_writes_only_a_folder_its_account_owns(tmp_path) -> None:
    owner = rooms.Account("alice", 4242, 4242)
    with pytest.raises(RoomError, match="chown alice"):
        rooms.owned_by(tmp_path, owner)  # the test's own folder: not alice's
    if ROOT:
        os.chown(tmp_path, owner.uid, owner.gid)
        rooms.owned_by(tmp_path, owner)


def test_a_notebook_rooms_doors_are_the_hubs_socket_and_a_folder_to_listen_in() -> None:
    spec = dataclasses.replace(SPEC, hub=Path("/tmp/relay/gateway.sock"), published=Path("/tmp/opening"),
                               passed={"JUPYTERHUB_API_TOKEN": "t", "PATH": "/evil", "SAFEROOM_SOCKET": "/evil"})
    args = rooms.bwrap_args(spec, AS_ROOT, OPENED)
    assert binds(args)[rooms.HUB] == "/tmp/relay/gateway.sock" and args[args.index(rooms.HUB) - 2] == "--ro-bind"
    assert binds(args)[rooms.PUBLISHED] == "/tmp/opening" and args[args.index(rooms.PUBLISHED) - 2] == "--bind"
    env = rooms.environment(spec, Secret("sr_x"))
    assert env["JUPYTERHUB_API_TOKEN"] == "t" and env["SAFEROOM_SOCKET"] == rooms.SOCKET and "/evil" not in env["PATH"]


def test_doctor_says_what_a_host_without_bubblewrap_lacks() -> None:
    done = subprocess.run([sys.executable, "-c", SERVE, "doctor"], capture_output=True, text=True, check=False,
                          env={**os.environ, "PATH": "/nonexistent"})
    assert done.returncode == RoomError.exit_code and "apt-get install bubblewrap" in done.stderr


@sandbox
def test_doctor_says_this_host_can_make_rooms() -> None:
    done = subprocess.run([sys.executable, "-c", SERVE, "doctor"], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "can make rooms" in done.stdout


@sandbox
def test_connect_with_no_arguments_queries_through_the_gateway_as_the_rooms_user(gateway, workspace, room) -> None:
    before = tokens(gateway)
    found = last_json(in_room(gateway, workspace, "--ttl", "90m", code="""
        import json, os, saferoom
        s = saferoom.connect()
        regions = s.query("select distinct region from prod.orders").to_arrow().column(0).to_pylist()
        memory = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                memory += [fd] if os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:saferoom-result") else []
            except OSError:  # the listing's own descriptor, closed by now
                pass
        print(json.dumps({"user": s.user, "role": s.role, "regions": regions, "uid": os.getuid(), "token": os.environ["SAFEROOM_TOKEN"], "memory": memory}))
    """))
    assert (found["user"], found["role"], found["regions"]) == ("alice", "analyst", ["EU"])  # her row filter applied
    assert found["memory"], "the result did not come through the door's memory files"  # the sandbox lets them pass
    assert len(room.raw("select distinct region from orders")) > 1  # the source holds other regions
    assert found["uid"] == room_uid()
    with pytest.raises(AuthError, match="revoked"):  # the room's token died with the room
        RemoteSession(None, found["token"], socket=gateway.socket)
    [minted] = [t for t in json.loads((gateway.state / "tokens.json").read_text()) if t["id"] not in before]
    assert found["token"].startswith(f"sr_{minted['id']}_") and minted["user"] == "alice"
    # a lease, renewed while the starter runs (--ttl, 90m, is only the longest it may be renewed to)
    assert datetime.fromisoformat(minted["expires"]) - datetime.fromisoformat(minted["created"]) == rooms.LEASE


@sandbox
def test_a_room_reaches_no_network(gateway, workspace) -> None:
    with socket.socket() as outside:
        outside.bind(("127.0.0.1", 0))
        outside.listen()
        outside.settimeout(0.5)
        port = outside.getsockname()[1]
        found = last_json(in_room(gateway, workspace, code=f"""
            import json, socket
            def attempt(fn):
                try:
                    fn()
                    return "connected"
                except OSError as exc:
                    return type(exc).__name__
            tcp = attempt(lambda: socket.create_connection(("127.0.0.1", {port}), timeout=5))
            dns = attempt(lambda: socket.getaddrinfo("example.com", 443))
            out = attempt(lambda: socket.create_connection(("1.1.1.1", 443), timeout=5))
            print(json.dumps({{"tcp": tcp, "dns": dns, "out": out}}))
        """))
        with pytest.raises(TimeoutError):
            outside.accept()  # nothing from the room arrived
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # while from outside the room the server is there
    assert found == {"tcp": "ConnectionRefusedError", "dns": "gaierror", "out": "OSError"}


@sandbox
def test_a_room_reads_no_policy_state_database_or_key_and_writes_only_its_workspace(gateway, workspace, room, tmp_path) -> None:
    neighbour = tmp_path / "bob-workspace" / "notes.txt"  # another person's room's workspace
    neighbour.parent.mkdir()
    neighbour.write_text("bob's notes")
    private = [gateway.policy, gateway.state / "audit.log", room.database, room.folder / "token.key", neighbour,
               Path("/root/.bashrc"), Path("/etc/shadow")]
    assert all(p.exists() for p in private[:5])
    found = last_json(in_room(gateway, workspace, code=f"""
        import json, os
        def attempt(fn):
            try:
                fn()
                return "done"
            except OSError as exc:
                return type(exc).__name__
        reads = {{p: attempt(lambda p=p: open(p, "rb").read()) for p in {[str(p) for p in private]!r}}}
        writes = {{p: attempt(lambda p=p: open(p, "w").write("x")) for p in
                  ["/workspace/mine.txt", "/tmp/mine.txt", "/dev/shm/mine.txt", "/etc/evil", "/usr/evil", "/evil", "/run/evil", {str(Path(sys.prefix) / "evil")!r}]}}
        print(json.dumps({{"reads": reads, "writes": writes, "home": os.listdir("/home") if os.path.exists("/home") else None}}))
    """))
    assert not [p for p, outcome in found["reads"].items() if outcome == "done"], found["reads"]
    for scratch in ("/workspace/mine.txt", "/tmp/mine.txt", "/dev/shm/mine.txt"):
        assert found["writes"].pop(scratch) == "done"
    assert not [p for p, outcome in found["writes"].items() if outcome == "done"], found["writes"]
    assert found["home"] is None
    assert (workspace / "mine.txt").read_text() == "x" and (workspace / "mine.txt").stat().st_uid == room_uid()
    assert not (Path(sys.prefix) / "evil").exists()


@sandbox
def test_a_fork_bomb_is_stopped_by_the_process_limit(gateway, workspace) -> None:
    found = last_json(in_room(gateway, workspace, code="""
        import json, os, signal, time
        children, refused = [], None
        for _ in range(200):  # bounded even if the limit failed: the host stays fine either way
            try:
                pid = os.fork()
            except BlockingIOError as exc:
                refused = exc.errno
                break
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            children.append(pid)
        for pid in children:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        print(json.dumps({"forked": len(children), "refused": refused}))
    """))
    assert found["refused"] is not None and found["forked"] < FORKS


@sandbox
def test_a_memory_hog_is_stopped_by_the_memory_limit(gateway, workspace) -> None:
    found = last_json(in_room(gateway, workspace, code="""
        import json
        try:
            hog = bytearray(2 * 1024 ** 3)  # twice the room's address space
            outcome = "allocated"
        except MemoryError:
            outcome = "MemoryError"
        print(json.dumps({"outcome": outcome}))
    """))
    assert found == {"outcome": "MemoryError"}


@sandbox
def test_a_full_tmp_is_stopped_by_its_size(gateway, workspace) -> None:
    found = last_json(in_room(gateway, workspace, code="""
        import errno, json
        written = 0
        try:
            with open("/tmp/fill", "wb") as out:
                for _ in range(64):  # 64 MB, twice the room's /tmp
                    out.write(b"x" * 2**20)
                    out.flush()
                    written += 1
            outcome = "written"
        except OSError as exc:
            outcome = errno.errorcode[exc.errno]
        print(json.dumps({"outcome": outcome, "written": written}))
    """))
    assert found["outcome"] == "ENOSPC" and found["written"] <= size_bytes(TMP) // 2**20


@sandbox
def test_a_busy_loop_is_stopped_by_the_cpu_limit(gateway, workspace) -> None:
    done = in_room(gateway, workspace, code="while True: pass")
    # soft and hard limits are the same, so the kernel sends SIGKILL at once; bwrap passes it on as 128 + signal
    assert done.returncode == 128 + 9, (done.returncode, done.stderr[-2000:])



def running(marker: str) -> list[int]:
    """Processes whose command line holds ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@sandbox
def test_a_stopped_room_ends_its_processes_and_its_token(gateway, workspace) -> None:
    marker = f"room-marker-{os.getpid()}-{workspace.parent.name}"
    command = [sys.executable, "-c", SERVE, "room", "--socket", str(gateway.socket), "--state", str(gateway.state), "-p", str(gateway.policy),
               "-u", "alice", "--workspace", str(workspace), *(["--account", ACCOUNT] if ROOT else []), "--",
               sys.executable, "-c", f"import time; open('/workspace/started', 'w').close(); time.sleep(300)  # {marker}"]
    before = tokens(gateway)
    launcher = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        eventually(lambda: (workspace / "started").exists() or launcher.poll() is not None, "the room started")
        assert launcher.poll() is None and set(running(marker)) - {launcher.pid}  # bwrap and the command in the room
        launcher.terminate()
        assert launcher.wait(timeout=30) != 0
    finally:
        launcher.kill()
        launcher.wait()
    eventually(lambda: not running(marker), "the room's processes ended")
    minted = {i: revoked for i, revoked in tokens(gateway).items() if i not in before}
    assert len(minted) == 1 and all(minted.values())


@sandbox
def test_a_room_reaches_a_gateway_on_a_port_through_a_relay_and_nothing_else(tcp_gateway, workspace) -> None:
    relays = set(Path(tempfile.gettempdir()).glob("saferoom-relay-*"))
    found = last_json(in_room(tcp_gateway, workspace, code=f"""
        import json, socket, saferoom
        s = saferoom.connect()
        regions = s.query("select distinct region from prod.orders").to_arrow().column(0).to_pylist()
        try:
            socket.create_connection(("127.0.0.1", {tcp_gateway.port}), timeout=5)
            direct = "connected"
        except OSError as exc:
            direct = type(exc).__name__
        print(json.dumps({{"user": s.user, "regions": regions, "direct": direct}}))
    """))
    assert found == {"user": "alice", "regions": ["EU"], "direct": "ConnectionRefusedError"}
    assert set(Path(tempfile.gettempdir()).glob("saferoom-relay-*")) == relays  # the relay's socket went with the room


@sandbox
def test_a_room_can_use_a_token_it_is_given_and_leaves_it_valid(gateway, workspace) -> None:
    token = gateway.token("alice")
    command = [sys.executable, "-c", SERVE, "room", "--socket", str(gateway.socket), "--workspace", str(workspace),
               *(["--account", ACCOUNT] if ROOT else []), "--", sys.executable, "-c",
               "import saferoom; print(saferoom.connect().user)"]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SAFEROOM_")}, "SAFEROOM_TOKEN": token}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=ROOM_SECONDS, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "alice", done.stderr[-2000:]
    with RemoteSession(None, token, socket=gateway.socket) as session:  # not the room's to revoke
        assert session.user == "alice"


@sandbox
@pytest.mark.skipif(not ROOT, reason="only a room started by root runs as another account")
def test_as_root_a_user_without_an_account_gets_no_room(gateway, workspace) -> None:
    try:
        pwd.getpwnam("alice")
        pytest.skip("this host has an account named alice")
    except KeyError:
        pass
    command = [sys.executable, "-c", SERVE, "room", "--socket", str(gateway.socket), "--state", str(gateway.state), "-p", str(gateway.policy),
               "-u", "alice", "--workspace", str(workspace), "--", "/bin/sh", "-c", f"touch {workspace}/ran"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=ROOM_SECONDS, check=False)
    assert done.returncode == RoomError.exit_code and "useradd" in done.stderr, done.stderr
    assert not (workspace / "ran").exists()


@sandbox
@pytest.mark.skipif(not ROOT, reason="needs root to become an unprivileged account for the test")
def test_started_by_an_unprivileged_account_the_room_has_a_user_namespace_of_its_own() -> None:
    """The command line a room started by anyone but root gets (no setpriv; bwrap makes a user namespace)."""
    uid, gid = pwd.getpwnam(ACCOUNT).pw_uid, pwd.getpwnam(ACCOUNT).pw_gid
    folder = Path(tempfile.mkdtemp(prefix="saferoom-unprivileged-"))  # not under pytest's 0700 folder: the account must reach it
    try:
        folder.chmod(0o755)
        (folder / "workspace").mkdir()
        os.chown(folder / "workspace", uid, gid)
        with socket.socket(socket.AF_UNIX) as door:
            door.bind(str(folder / "gateway.sock"))
            spec = rooms.RoomSpec(command=("/bin/sh", "-c", "id -u; echo x > /workspace/f; for f in /etc/f /f /run/f; do echo x > $f || echo refused; done"),
                                  socket=folder / "gateway.sock", workspace=folder / "workspace",
                                  bounds=RoomBounds(2**30, tasks_of(uid) + FORKS, 10, 2**20))
            opened = rooms.Opened(rooms.open_workspace(spec.workspace, []), seccomp.room_filter())
            args = rooms.bwrap_args(spec, dataclasses.replace(rooms.host(), root=False), opened)
            done = subprocess.run(args, user=uid, group=gid, extra_groups=[], env={"PATH": "/usr/bin:/bin"},
                                  pass_fds=opened.fds(), capture_output=True, text=True, timeout=ROOM_SECONDS, check=False)
            opened.close()
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == [str(uid), "refused", "refused", "refused"]
        assert (folder / "workspace" / "f").stat().st_uid == uid
    finally:
        shutil.rmtree(folder)


def test_the_relay_speaks_verified_tls_to_a_gateway_on_https(room, tmp_path, monkeypatch) -> None:
    cert, key = self_signed(tmp_path)
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", SERVE, "serve", "-p", str(gateway_policy(room, tmp_path)), "--state",
                                str(tmp_path / "state"), "--port", str(port), "--tls-cert", str(cert), "--tls-key", str(key)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"https://127.0.0.1:{port}"
    try:
        eventually(lambda: answers(url, verify=ssl.create_default_context(cafile=str(cert))) or process.poll() is not None,
                   "the gateway to start")
        token = subprocess.run([sys.executable, "-c", SERVE, "token", "create", "--state", str(tmp_path / "state"),
                                "-p", str(tmp_path / "saferoom.yaml"), "-u", "alice"],
                               capture_output=True, text=True, check=True).stdout.strip()
        with Relay(url) as door, pytest.raises(saferoom.UsageError, match="cannot reach the gateway"):
            RemoteSession(None, token, socket=door)  # the system's CAs do not vouch for it: the relay hangs up
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # OpenSSL's own variable: a private CA for the relay
        with Relay(url) as door, RemoteSession(None, token, socket=door) as session:
            assert session.user == "alice"
            assert session.query("select distinct region from prod.orders").to_arrow().column(0).to_pylist() == ["EU"]
        assert not door.exists()
    finally:
        process.terminate()
        process.wait(timeout=15)


@pytest.fixture
def snapshot(tmp_path) -> Path:
    """A package snapshot as `saferoom packages sync` lays one out (`latest` -> a folder of `files/` and the
    `simple/` index over them), holding one small real wheel. Not under pytest's 0700 folder: the room's
    account must reach it."""
    from saferoom.packages import wheels as wheel_files
    from saferoom.packages.index import write_index
    from tests.wheels import make_wheel

    mirror = Path(tempfile.mkdtemp(prefix="saferoom-snapshot-"))
    mirror.chmod(0o755)
    files = mirror / "2026-01-01" / "files"
    files.mkdir(parents=True)
    write_index(files.parent, [wheel_files.read(make_wheel(files, "roomtool", "1.0"))])
    (mirror / "latest").symlink_to("2026-01-01")
    subprocess.run(["chmod", "-R", "a+rX", str(mirror)], check=True)
    yield mirror
    shutil.rmtree(mirror)


@sandbox
def test_pip_installs_from_the_snapshot_and_nothing_else(gateway, workspace, snapshot) -> None:
    found = last_json(in_room(gateway, workspace, "--packages", str(snapshot), code="""
        import json, subprocess, sys
        def pip(name):
            done = subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", name],
                                  capture_output=True, text=True)
            return {"code": done.returncode, "said": done.stdout[-1500:] + done.stderr[-1500:]}
        inside, outside = pip("roomtool"), pip("six")
        imported = subprocess.run([sys.executable, "-c", "import roomtool; print(roomtool.VERSION)"], capture_output=True, text=True)
        print(json.dumps({"inside": inside, "outside": outside, "imported": imported.stdout.strip() or imported.stderr[-800:]}))
    """))
    assert found["inside"]["code"] == 0, found["inside"]["said"]
    assert found["imported"] == "1.0", found
    assert found["outside"]["code"] != 0 and "No matching distribution found for six" in found["outside"]["said"], found["outside"]
    assert any(workspace.rglob("roomtool/__init__.py"))  # installed in the workspace: the environment is read-only
