"""The room's harder walls, in real sandboxes: the system-call filter, the workspace mounted from the descriptor
that was checked, the token's lease after a killed starter, the room's cgroup, and sockets no one can squat."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from saferoom import cgroup, seccomp
from saferoom import room as rooms
from saferoom.client import RemoteSession
from saferoom.errors import AuthError, RoomError
from saferoom.files import socket_path_problem
from saferoom.identity import TokenStore
from saferoom.policy.limits import RoomBounds
from saferoom.secrets import Secret
from tests.gateway_helpers import SERVE, Server, eventually
from tests.test_room import ACCOUNT, ROOM_SECONDS, ROOT, in_room, last_json, room_uid, running, sandbox, started, tokens
from tests.test_room import workspace as workspace  # the fixture: a folder the room's account owns

# What a program in the room tries; each answer is the errno it got (0: it worked). Run outside a room too, as the
# control (with "control" as its argument: then it mounts nothing, since outside, as root, a mount would hold):
# there the namespace calls and ptrace work, so a refusal inside is the filter's doing.
PROBE = textwrap.dedent("""
    import ctypes, json, os, subprocess, sys
    libc = ctypes.CDLL(None, use_errno=True)
    CLONE_NEWUSER, SIGCHLD = 0x10000000, 17

    def errno_of(result):
        return ctypes.get_errno() if result == -1 else 0

    def in_child(call):
        pid = os.fork()
        if pid == 0:
            os._exit(call())
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

    def clone_newuser():
        result = libc.syscall(56, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0)  # x86_64's clone, as fork with a user namespace
        if result == 0:
            os._exit(0)
        if result > 0:
            os.waitpid(result, 0)
        return errno_of(result)

    found = {
        "unshare_user": in_child(lambda: errno_of(libc.unshare(CLONE_NEWUSER))),
        "clone_newuser": in_child(clone_newuser),
        "clone3": errno_of(libc.syscall(435, 0, 0)),
        "ptrace": in_child(lambda: errno_of(libc.ptrace(0, 0, 0, 0))),
        "keyctl": errno_of(libc.syscall(250, 0, -3, 0)),  # KEYCTL_GET_KEYRING_ID of the session keyring
        "io_uring": errno_of(libc.syscall(425, 1, ctypes.create_string_buffer(120))),
        "unshare_command": subprocess.run(["unshare", "-U", "true"], capture_output=True).returncode,
    }
    if sys.argv[1:] != ["control"]:
        os.makedirs("mounted", exist_ok=True)  # in the room's workspace, never a folder the host shares
        found["mount"] = errno_of(libc.mount(b"none", b"mounted", b"tmpfs", 0, None))
    print(json.dumps(found))
""")
REFUSED = {"unshare_user": 1, "clone_newuser": 1, "clone3": 38, "ptrace": 1, "keyctl": 1, "io_uring": 1, "mount": 1}


@pytest.fixture(scope="module")
def gateway(room, tmp_path_factory) -> Iterator[Server]:
    server = started(room, tmp_path_factory.mktemp("wallsgw"), on_socket=True)
    yield server
    server.stop()


# --- the system-call filter --------------------------------------------------------------------------------

def test_the_filter_compiles_to_bpf_and_names_what_the_room_refuses() -> None:
    fd = seccomp.room_filter()
    try:
        program = os.read(fd, 1 << 20)
    finally:
        os.close(fd)
    assert program and len(program) % 8 == 0  # struct sock_filter: 8 bytes an instruction
    for refused in ("unshare", "setns", "mount", "ptrace", "keyctl", "bpf", "perf_event_open", "io_uring_setup",
                    "userfaultfd", "kexec_load", "init_module", "finit_module", "clone", "clone3", "socket"):
        assert refused not in seccomp.ALLOWED  # clone and socket only with their arguments checked
    assert seccomp.problem() is None


def test_without_libseccomp_no_room_starts_and_doctor_says_how_to_fix_it(gateway, workspace, tmp_path) -> None:
    """Fail closed: the binding finds no libseccomp (as pyseccomp says when the library is not installed), so the
    room refuses before its command runs (it would write a file) and no token is minted."""
    stand_in = tmp_path / "no-libseccomp"
    stand_in.mkdir()
    (stand_in / "pyseccomp.py").write_text('raise RuntimeError("Unable to find libseccomp")\n')
    env = {**os.environ, "PYTHONPATH": str(stand_in)}
    before = tokens(gateway)
    done = subprocess.run(_room_command(gateway, workspace, "--", "/bin/sh", "-c", f"touch {workspace}/ran"),
                          capture_output=True, text=True, timeout=ROOM_SECONDS, check=False, env=env)
    assert done.returncode == RoomError.exit_code and "apt-get install libseccomp2" in _said(done.stderr)
    assert not (workspace / "ran").exists()
    assert tokens(gateway) == before  # no token for a room that cannot be
    doctor = subprocess.run([sys.executable, "-c", SERVE, "doctor"], capture_output=True, text=True, check=False, env=env)
    assert doctor.returncode == RoomError.exit_code and "libseccomp" in _said(doctor.stderr)


@sandbox
def test_inside_a_room_namespaces_ptrace_keys_io_uring_and_mount_are_refused(gateway, workspace) -> None:
    outside = json.loads(subprocess.run([sys.executable, "-c", PROBE, "control"], capture_output=True, text=True,
                                        check=True, cwd=workspace).stdout)
    assert "mount" not in outside
    assert outside["unshare_user"] == 0 and outside["clone_newuser"] == 0 and outside["ptrace"] == 0  # the control
    inside = last_json(in_room(gateway, workspace, code=PROBE))
    assert {name: inside[name] for name in REFUSED} == REFUSED
    assert inside["unshare_command"] != 0


@sandbox
def test_python_threads_processes_pip_and_ipython_still_work_in_a_filtered_room(gateway, workspace) -> None:
    found = last_json(in_room(gateway, workspace, code="""
        import concurrent.futures, json, multiprocessing, subprocess, sys
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            threads = sum(pool.map(lambda n: n * n, range(10)))
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            processes = sum(pool.map(abs, [-1, -2, -3]))
        ipython = subprocess.run([sys.executable, "-m", "IPython", "-c", "print(6 * 7)"], capture_output=True, text=True)
        pip = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, text=True)
        print(json.dumps({"threads": threads, "processes": processes, "ipython": ipython.stdout.split()[-1:],
                          "pip": pip.returncode}))
    """))
    assert found == {"threads": 285, "processes": 6, "ipython": ["42"], "pip": 0}


# --- the workspace, checked and mounted as one descriptor --------------------------------------------------

@sandbox
def test_a_workspace_swapped_for_a_link_after_its_check_is_not_what_the_room_gets(tmp_path, workspace) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o777)  # writable by the room's account too: only the mount decides where the write lands
    with socket.socket(socket.AF_UNIX) as door:
        door.bind(str(tmp_path / "gateway.sock"))
        spec = rooms.RoomSpec(command=("/bin/sh", "-c", "echo written > /workspace/seen"), socket=tmp_path / "gateway.sock",
                              workspace=workspace, account=rooms.account(ACCOUNT) if ROOT else None,
                              bounds=RoomBounds(2**30, 4096, 10, 2**20))
        fd = rooms.open_workspace(workspace, [], spec.account)  # checked: the account's own folder
        try:
            workspace.rename(tmp_path / "moved")
            workspace.symlink_to(elsewhere)  # the name now leads elsewhere
            status = rooms.run(spec, Secret("sr_0123456789ab_" + "s" * 43), fd)
        finally:
            os.close(fd)
    assert status == 0
    assert (tmp_path / "moved" / "seen").read_text() == "written\n" and not (elsewhere / "seen").exists()


@sandbox
def test_a_workspace_that_is_a_symbolic_link_is_refused(tmp_path, workspace) -> None:
    (tmp_path / "link").symlink_to(workspace)
    with pytest.raises(RoomError, match="symbolic link is not followed"):
        rooms.open_workspace(tmp_path / "link", [])


# --- the token's lease, and the cgroup, after a starter killed with SIGKILL -------------------------------

@sandbox
def test_a_killed_starters_room_token_dies_within_its_lease(gateway, workspace) -> None:
    lease = 3
    marker = f"lease-marker-{os.getpid()}-{workspace.parent.name}"
    command = _room_command(gateway, workspace, "--lease", f"{lease}s", "--", sys.executable, "-c",
                            f"import os, time; open('/workspace/token', 'w').write(os.environ['SAFEROOM_TOKEN']); time.sleep(300)  # {marker}")
    starter = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        eventually(lambda: _written(workspace / "token") or starter.poll() is not None, "the room wrote its token")
        token = (workspace / "token").read_text()
        first = _record(gateway, token)
        eventually(lambda: datetime.now(UTC) > datetime.fromisoformat(first["expires"]), "the first lease ran out")
        assert RemoteSession(None, token, socket=gateway.socket).user == "alice"  # renewed: still the room's
        groups = _room_groups()
        starter.kill()  # SIGKILL: nothing in the starter runs again, no revocation
        starter.wait()
        killed = datetime.now(UTC)
    finally:
        starter.kill()
        starter.wait()
    eventually(lambda: _refused(gateway, token), "the token was refused")
    last = _record(gateway, token)
    assert not last["revoked"]  # no one revoked it: the lease ran out
    assert datetime.fromisoformat(last["expires"]) <= killed + timedelta(seconds=lease)
    eventually(lambda: not running(marker), "the room's processes ended with their starter")
    if groups:  # the room had a cgroup, left behind by its killed starter: the next room's start sweeps it
        assert all(group.exists() for group in groups)
        cgroup.hierarchy()
        assert not any(group.exists() for group in groups)


def test_a_lease_is_renewed_up_to_the_ttl_and_never_revives_a_revoked_token(tmp_path) -> None:
    store = TokenStore(tmp_path)
    token, record = store.create("alice", None, timedelta(seconds=60))
    until = (datetime.now(UTC) + timedelta(seconds=2)).replace(microsecond=0)
    lease = rooms.Lease(store, record.id, until, timedelta(seconds=3))  # renews every second, never past `until`
    try:
        eventually(lambda: _expires(store, record.id) == until, "the lease was renewed up to the ttl")
    finally:
        lease.stop()
    store.revoke(record.id)
    store.renew(record.id, until + timedelta(hours=1))
    with pytest.raises(AuthError, match="revoked"):
        store.verify(token)


def _expires(store: TokenStore, token_id: str) -> datetime:
    [found] = [r for r in store.list() if r.id == token_id]
    return datetime.fromisoformat(str(found.expires))


def _written(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 0


def _record(gateway: Server, token: str) -> dict[str, object]:
    [found] = [t for t in json.loads((gateway.state / "tokens.json").read_text()) if token.startswith(f"sr_{t['id']}_")]
    return found


def _refused(gateway: Server, token: str) -> bool:
    try:
        RemoteSession(None, token, socket=gateway.socket)
    except AuthError as exc:
        assert "expired" in str(exc)
        return True
    return False


def _room_groups() -> list[Path]:
    found = cgroup.hierarchy()
    return [group for group in found.folder.glob("room-*")] if found else []


# --- the room's cgroup -------------------------------------------------------------------------------------

@pytest.mark.skipif(cgroup.unavailable() is not None, reason=f"no cgroup for rooms here: {cgroup.unavailable()}")
@sandbox
def test_a_rooms_processes_run_in_its_cgroup_which_is_gone_when_it_ends(gateway, workspace) -> None:
    marker = f"cgroup-marker-{os.getpid()}-{workspace.parent.name}"
    before = set(_room_groups())
    starter = subprocess.Popen(_room_command(gateway, workspace, "--", sys.executable, "-c", textwrap.dedent(f"""
        import os, time  # {marker}
        open("/workspace/up", "w").close()
        while not os.path.exists("/workspace/done"):
            time.sleep(0.05)
    """)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        eventually(lambda: (workspace / "up").exists() or starter.poll() is not None, "the room started")
        [group] = set(_room_groups()) - before
        inside = {int(pid) for pid in (group / "cgroup.procs").read_text().split()}
        assert set(running(marker)) - {starter.pid} <= inside and inside  # bwrap and the command, not the starter
        assert starter.pid not in inside
        (workspace / "done").touch()
        assert starter.wait(timeout=ROOM_SECONDS) == 0
    finally:
        starter.kill()
        starter.wait()
    assert not group.exists()  # removed when the room ended


def _room_command(gateway: Server, workspace: Path, *args: str) -> list[str]:
    return [sys.executable, "-c", SERVE, "room", "--socket", str(gateway.socket), "--state", str(gateway.state),
            "-p", str(gateway.policy), "-u", "alice", "--workspace", str(workspace),
            *(["--account", ACCOUNT] if ROOT else []), *args]


def _bounded_by_cgroup() -> str | None:
    """Why rooms are not bounded as a whole here (doctor's words), or None when they are."""
    found = cgroup.hierarchy()
    if found is None or {"memory", "pids"} - set(found.controllers):
        return cgroup.status()
    return None


WHOLE = _bounded_by_cgroup()


@pytest.mark.skipif(WHOLE is not None, reason=f"the room's totals are not bounded on this host, as `saferoom doctor` says: {WHOLE}")
@sandbox
def test_a_fork_bomb_and_a_memory_hog_across_processes_are_stopped_by_the_rooms_totals(gateway, workspace) -> None:
    # each process stays under the per-process limit (1GiB); four of them together pass the room's 1GiB
    found = last_json(in_room(gateway, workspace, code="""
        import json, multiprocessing, os
        def hog(_):
            block = bytearray(400 * 1024 * 1024)
            for i in range(0, len(block), 4096):
                block[i] = 1
            return len(block)
        from concurrent.futures import ProcessPoolExecutor
        try:  # a worker the kernel kills breaks the pool, rather than hanging it as multiprocessing.Pool would
            with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("fork")) as pool:
                list(pool.map(hog, range(4)))
            memory = "all allocated"
        except Exception as exc:
            memory = type(exc).__name__
        children, refused = [], None
        for _ in range(100000):
            try:
                pid = os.fork()
            except OSError as exc:
                refused = exc.errno
                break
            if pid == 0:
                import time; time.sleep(30); os._exit(0)
            children.append(pid)
        for pid in children:
            os.kill(pid, 9)
        print(json.dumps({"memory": memory, "forks": len(children), "refused": refused}))
    """))
    assert found["memory"] != "all allocated"
    assert found["refused"] == 11 and found["forks"] < 100000  # EAGAIN: pids.max


def test_doctor_says_how_rooms_are_bounded_as_a_whole() -> None:
    done = subprocess.run([sys.executable, "-c", SERVE, "doctor"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    said = _said(done.stdout)
    assert "system-call filter" in said and _said(cgroup.status()) in said


def _said(text: str) -> str:
    """What the CLI printed, its lines as the terminal's width wrapped them joined again."""
    return " ".join(text.split())


# --- sockets no other account can squat --------------------------------------------------------------------

def test_a_socket_in_a_folder_others_may_write_is_refused(tmp_path) -> None:
    open_folder = tmp_path / "open"
    open_folder.mkdir()
    open_folder.chmod(0o777)
    assert "writable by other accounts" in str(socket_path_problem(open_folder / "gw.sock", listening=True))
    open_folder.chmod(0o1777)  # sticky, like /tmp: others may add names, not replace this account's
    assert socket_path_problem(open_folder / "gw.sock", listening=True) is None
    own = tmp_path / "own"
    own.mkdir(mode=0o700)
    assert socket_path_problem(own / "gw.sock", listening=False) is None


def test_serve_refuses_a_socket_folder_others_may_write(room, tmp_path) -> None:
    from tests.gateway_helpers import gateway_policy

    folder = tmp_path / "open"
    folder.mkdir()
    folder.chmod(0o777)
    done = subprocess.run([sys.executable, "-c", SERVE, "serve", "-p", str(gateway_policy(room, tmp_path)), "--state",
                           str(tmp_path / "state"), "--socket", str(folder / "gw.sock")],
                          capture_output=True, text=True, timeout=ROOM_SECONDS, check=False)
    assert done.returncode == 2 and "writable by other accounts" in _said(done.stderr)
    assert not (folder / "gw.sock").exists()


@pytest.mark.skipif(not ROOT, reason="needs root to make a socket as another account")
def test_a_socket_another_account_made_first_is_refused_by_serve_and_room(room, tmp_path, workspace, request) -> None:
    from tests.gateway_helpers import gateway_policy

    above = Path(tempfile.mkdtemp(prefix="saferoom-squat-"))  # not under pytest's 0700 folder: the squatter must reach it
    request.addfinalizer(lambda: shutil.rmtree(above))
    above.chmod(0o755)
    folder = above / "sticky"
    folder.mkdir()
    folder.chmod(0o1777)  # like /tmp
    squatted = folder / "gw.sock"
    _bind_as(room_uid(), squatted)
    assert "belongs to uid" in str(socket_path_problem(squatted, listening=True))
    done = subprocess.run([sys.executable, "-c", SERVE, "serve", "-p", str(gateway_policy(room, tmp_path)), "--state",
                           str(tmp_path / "state"), "--socket", str(squatted)],
                          capture_output=True, text=True, timeout=ROOM_SECONDS, check=False)
    assert done.returncode == 2 and "another account may have made it first" in _said(done.stderr)
    done = subprocess.run([sys.executable, "-c", SERVE, "room", "--socket", str(squatted), "--workspace", str(workspace),
                           "--account", ACCOUNT, "--", "true"], capture_output=True, text=True, timeout=ROOM_SECONDS,
                          check=False, env={**os.environ, "SAFEROOM_TOKEN": "sr_0123456789ab_" + "s" * 43})
    assert done.returncode == RoomError.exit_code and "cannot be trusted" in _said(done.stderr)


def _bind_as(uid: int, path: Path) -> None:
    """A socket at ``path`` made by ``uid`` (and left there, as a squatter would)."""
    code = f"import os, socket; os.setuid({uid}); socket.socket(socket.AF_UNIX).bind({str(path)!r})"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=ROOM_SECONDS)
    assert path.exists()


