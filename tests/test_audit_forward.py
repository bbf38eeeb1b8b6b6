"""The audit log forwarded to a real rsyslog (Debian's) over TCP, and a real gateway sealing its log."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from saferoom.audit import LOG, AuditLog, PublicKey, read, verify
from saferoom.audit.forward import RETRY
from saferoom.errors import AuditError
from tests.gateway_helpers import SERVE, Server, free_port, gateway_policy
from tests.test_audit import KEY, KEY_TEXT, lines_of, rewrite

RSYSLOGD = shutil.which("rsyslogd") or next((p for p in ("/usr/sbin/rsyslogd", "/sbin/rsyslogd") if os.path.exists(p)), None)
if RSYSLOGD is None:
    if os.environ.get("SAFEROOM_REQUIRE_SYSLOG"):
        raise RuntimeError("rsyslogd is required (apt-get install rsyslog)")
    pytest.skip("rsyslog is not installed", allow_module_level=True)

START_SECONDS = 30.0  # rsyslogd reads one small config file; past this it is hung, not slow
ARRIVAL_SECONDS = 30.0  # lines handed to its socket are in its output file long before this
CONFIG = """
global(workDirectory="{work}" maxMessageSize="64k")
module(load="imtcp")
template(name="raw" type="string" string="%msg%\\n")
ruleset(name="audit") {{ action(type="omfile" file="{out}" template="raw") }}
input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="audit")
"""


@dataclass
class Rsyslog:
    """rsyslogd in the foreground with its own config, work folder and pid file; TCP on 127.0.0.1."""

    folder: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def out(self) -> Path:
        return self.folder / "received.log"

    @property
    def url(self) -> str:
        return f"syslog+tcp://127.0.0.1:{self.port}"

    def start(self) -> Rsyslog:
        work = self.folder / "work"
        work.mkdir(parents=True, exist_ok=True)
        config = self.folder / "rsyslog.conf"
        config.write_text(CONFIG.format(work=work, out=self.out, port=self.port))
        stderr = (self.folder / "rsyslogd.err").open("ab")
        self.process = subprocess.Popen([str(RSYSLOGD), "-n", "-f", str(config), "-i", str(self.folder / "rsyslogd.pid")],
                                        stdout=stderr, stderr=subprocess.STDOUT)
        self._wait_listening()
        return self

    def _wait_listening(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"rsyslogd exited: {(self.folder / 'rsyslogd.err').read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"rsyslogd did not listen on {self.port} within {START_SECONDS} s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def received(self) -> list[str]:
        return [text for text in self.out.read_text().splitlines() if text.strip()] if self.out.exists() else []

    def wait_for(self, lines: list[str]) -> list[str]:
        """Poll the output file until every one of ``lines`` arrived (repeats allowed)."""
        deadline = time.monotonic() + ARRIVAL_SECONDS
        while time.monotonic() < deadline:
            received = self.received()
            if set(lines) <= set(received):
                return received
            time.sleep(0.05)
        missing = set(lines) - set(self.received())
        raise AssertionError(f"{len(missing)} lines never reached rsyslog, e.g. {sorted(missing)[:1]}")


@pytest.fixture
def rsyslog(tmp_path: Path) -> Iterator[Rsyslog]:
    server = Rsyslog(tmp_path / "rsyslog", free_port())
    try:
        yield server.start()
    finally:
        server.stop()


def local_lines(state: Path) -> list[str]:
    return (state / LOG).read_text().splitlines()


def test_records_and_checkpoints_reach_rsyslog_and_verify_from_there(rsyslog: Rsyslog, tmp_path: Path) -> None:
    state = tmp_path / "state"
    log = AuditLog(state, key=KEY, forward=[rsyslog.url], checkpoint_every=4)
    try:
        for i in range(10):
            log.append({"event": "decision", "user": "alice", "query": f"select {i} -- ünïcode"})
    finally:
        log.close()
    received = rsyslog.wait_for(local_lines(state))
    assert received == local_lines(state)  # each line once, in order, exactly as the log holds it
    public = PublicKey.parse(str(KEY.public))  # all the verifier of the syslog copy needs
    result = verify(state, public_key=public, checkpoints=rsyslog.out)
    assert result.ok and result.checkpoints == 3, result
    assert KEY_TEXT not in rsyslog.out.read_text()


def test_a_dead_syslog_server_refuses_queries_quickly_until_it_answers(tmp_path: Path) -> None:
    server = Rsyslog(tmp_path / "rsyslog", free_port())  # not started: nothing listens on its port
    log = AuditLog(tmp_path / "state", key=KEY, forward=[server.url], timeout=2.0)
    try:
        started = time.monotonic()
        with pytest.raises(AuditError, match="could not be forwarded to syslog"):
            log.append({"event": "decision", "user": "alice"})
        with pytest.raises(AuditError, match="did not answer"):
            log.append({"event": "decision", "user": "bob"})  # within the retry period: refused without trying
        assert time.monotonic() - started < 2.0 + RETRY
        server.start()
        time.sleep(RETRY)  # the next try comes a retry period after the failed one
        log.append({"event": "decision", "user": "carol"})
    finally:
        log.close()
        server.stop()
    assert [(r["seq"], r.get("user")) for r in read(tmp_path / "state")][:3] == [(1, "alice"), (2, "bob"), (3, "carol")], read(tmp_path / "state")
    assert set(local_lines(tmp_path / "state")[:3]) <= set(server.received())  # the refused ones were sent too, first
    assert verify(tmp_path / "state", key=KEY, checkpoints=server.out).ok


def test_syslog_dying_mid_run_stops_queries_and_the_copy_is_complete_after(rsyslog: Rsyslog, tmp_path: Path) -> None:
    state = tmp_path / "state"
    log = AuditLog(state, key=KEY, forward=[rsyslog.url], checkpoint_every=3)
    try:
        for i in range(4):
            log.append({"event": "decision", "n": i})
        rsyslog.wait_for(local_lines(state))
        rsyslog.stop(signal.SIGKILL)  # dies without a word
        with pytest.raises(AuditError, match="could not be forwarded"):
            log.append({"event": "decision", "n": 4})
        rsyslog.start()
        time.sleep(RETRY)
        log.append({"event": "decision", "n": 5})
    finally:
        log.close()
    rsyslog.wait_for(local_lines(state))
    assert verify(state, public_key=KEY.public, checkpoints=rsyslog.out).ok


# A real gateway ------------------------------------------------------------------------------------------

def saferoom(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The command line as a process; output as one line per stream (the console wraps long messages)."""
    done = subprocess.run([sys.executable, "-c", SERVE, *args], capture_output=True, text=True, check=False,
                          env={**os.environ, **(env or {})}, timeout=120)
    return subprocess.CompletedProcess(done.args, done.returncode, " ".join(done.stdout.split()), " ".join(done.stderr.split()))


def test_a_sealed_gateway_forwards_and_verify_catches_a_rechained_log(room, rsyslog: Rsyslog, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFEROOM_TEST_AUDIT_KEY", KEY_TEXT)
    copy = tmp_path / "elsewhere" / "audit.log"
    copy.parent.mkdir()
    server = Server(gateway_policy(room, tmp_path), tmp_path / "state", free_port(), tmp_path / "server.log",
                    extra=["--audit-key", "env:SAFEROOM_TEST_AUDIT_KEY", "--audit-forward", rsyslog.url,
                           "--audit-forward", f"file:{copy}"])
    server.start()
    try:
        token = server.token("alice")
        for _ in range(3):
            response = httpx.post(f"{server.url}/v1/query", json={"sql": "select count(*) from prod.orders"},
                                  headers={"Authorization": f"Bearer {token}"}, timeout=30)
            assert response.status_code == 200
    finally:
        server.stop()
    public = saferoom("audit", "public-key", "--key", "env:SAFEROOM_TEST_AUDIT_KEY").stdout.strip()
    (tmp_path / "audit.pub").write_text(public + "\n")
    rsyslog.wait_for(local_lines(server.state))
    for args in (["--key", "env:SAFEROOM_TEST_AUDIT_KEY", "--checkpoints", str(copy)],
                 ["--public-key", str(tmp_path / "audit.pub"), "--checkpoints", str(rsyslog.out)]):
        done = saferoom("audit", "verify", "--state", str(server.state), *args)
        assert done.returncode == 0 and "signed checkpoints matched" in done.stdout, done.stdout + done.stderr
    assert saferoom("audit", "verify", "--state", str(server.state)).returncode == 1  # sealed: needs a key
    records = [r for r in lines_of(server.state) if r["event"] != "checkpoint"]
    records[0]["user"] = "mallory"
    rewrite(server.state, records)  # what passed `audit verify` before logs were sealed
    for args in (["--key", "env:SAFEROOM_TEST_AUDIT_KEY"], ["--public-key", public, "--checkpoints", str(rsyslog.out)]):
        done = saferoom("audit", "verify", "--state", str(server.state), *args)
        assert done.returncode == 1 and "does not verify" in done.stdout, done.stdout
    logged = server.log.read_text() + rsyslog.out.read_text() + copy.read_text()
    assert KEY_TEXT not in logged and "sealed" in server.log.read_text()


def test_an_unreadable_audit_key_stops_the_gateway_before_it_starts(room, tmp_path: Path) -> None:
    policy = gateway_policy(room, tmp_path)
    for reference, message in (("env:SAFEROOM_NO_SUCH_KEY", "SAFEROOM_NO_SUCH_KEY is not set"),
                               (f"file:{tmp_path / 'missing.key'}", "cannot read secret file")):
        done = saferoom("serve", "-p", str(policy), "--state", str(tmp_path / "state"), "--port", str(free_port()),
                        "--audit-key", reference)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, done.stderr
    done = saferoom("serve", "-p", str(policy), "--state", str(tmp_path / "state"), "--audit-forward", "udp://x:1")
    assert done.returncode == 2 and "syslog+tcp://HOST:PORT" in done.stderr
    assert not (tmp_path / "state").exists()  # refused before anything was opened


def test_a_gateway_without_a_key_says_its_log_is_not_sealed(room, tmp_path: Path) -> None:
    server = Server(gateway_policy(room, tmp_path), tmp_path / "state", free_port(), tmp_path / "server.log").start()
    server.stop()
    assert "NOT sealed" in server.log.read_text() and verify(server.state).ok
