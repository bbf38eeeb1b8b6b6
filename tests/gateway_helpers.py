"""A real gateway process on 127.0.0.1 for the tests, and ways to stop it (politely or with kill -9)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import httpx

from saferoom.server.run import DRAIN_SECONDS

CANARY_DB_PASSWORD = "canary-db-password-7f3e9c2a1b"

SERVE = "from saferoom.cli import main; main()"
HUNG = 600.0  # seconds after which something that should end by itself is taken to hang
STOPS_WITHIN = 3 * DRAIN_SECONDS  # a gateway stops within its drain time; three times that, allowing for a busy machine


def eventually(condition: Callable[[], object], what: str) -> None:
    """Poll until ``condition()`` holds: the operation sets the pace, and the ceiling only stops a hang."""
    deadline = time.monotonic() + HUNG
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.1)


def answers(url: str, **options: object) -> bool:
    """Whether a gateway at ``url`` answers its health check yet."""
    try:
        return httpx.get(f"{url}/healthz", timeout=5, **options).status_code == 200  # type: ignore[arg-type]
    except httpx.HTTPError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    policy: Path
    state: Path
    port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None
    extra: list[str] = field(default_factory=list)
    max_file_bytes: int | None = None  # RLIMIT_FSIZE: a write past it fails as on a full disk
    socket: Path | None = None  # serve on this Unix socket instead of the port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        env = {**os.environ, "SAFEROOM_TEST_DB_PASSWORD": CANARY_DB_PASSWORD}
        log = self.log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-c", self._limits() + SERVE, "serve", "-p", str(self.policy), "--state", str(self.state), "--port", str(self.port),
             *(["--socket", str(self.socket)] if self.socket else []), *self.extra],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
        # ready when it answers, failed when it exits: no guess of how fast this machine starts a process
        # (the ceiling only keeps a hung start from hanging the suite)
        deadline = time.monotonic() + HUNG
        while self.process.poll() is None and time.monotonic() < deadline:
            try:
                with httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket)) if self.socket else None) as http:
                    if http.get(f"{self.url}/healthz", timeout=5).status_code == 200:
                        return self
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the gateway did not start: {self.log.read_text()[-2000:]}")

    def _limits(self) -> str:
        """Code the server runs first: a file-size limit, so a write past it fails as on a full disk
        (Python ignores SIGXFSZ, so the write raises instead of killing the process)."""
        if not self.max_file_bytes:
            return ""
        return f"import resource; resource.setrlimit(resource.RLIMIT_FSIZE, ({self.max_file_bytes}, {self.max_file_bytes})); "

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=STOPS_WITHIN)
            except subprocess.TimeoutExpired:
                self.kill9()

    def hup(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)

    def token(self, user: str, *args: str) -> str:
        done = subprocess.run([sys.executable, "-c", SERVE, "token", "create", "--state", str(self.state), "-p", str(self.policy),
                               "-u", user, *args],
                              capture_output=True, text=True, check=True)
        return done.stdout.strip()


GATEWAY_ROLES = """
  security:
    columns: {}
    audit: true
    max_rows: 5
  limited:
    columns: {pii: tokenize, key: tokenize}
    max_concurrent: 1
    max_bytes_per_day: 20000
    timeout_seconds: 1
"""

GATEWAY_USERS = """  sam: {roles: [security]}
  lee: {roles: [limited]}
"""


def gateway_policy(room, folder: Path) -> Path:
    text = room.policy.read_text().split("builds:")[0]
    text = text.replace("path: prod.duckdb", f"path: {room.database}").replace("file:token.key", f"file:{room.folder / 'token.key'}")
    text = text.replace("  token_key:", "  db_password: env:SAFEROOM_TEST_DB_PASSWORD\n  token_key:")
    text = text.replace("roles:\n", "roles:\n" + GATEWAY_ROLES.lstrip("\n"), 1)
    text = text.replace("users:\n", "users:\n" + GATEWAY_USERS, 1)
    path = folder / "saferoom.yaml"
    path.write_text(text)
    return path


def table_gateway(folder: Path, source: str, table: str, create: str, users: list[str], role: str = "{}",
                  extra: tuple[str, ...] = (), socket: Path | None = None) -> Server:
    """A started gateway over one DuckDB table (made by ``create``, all columns public), every user an analyst;
    on the Unix socket ``socket`` instead of a port, when given."""
    database = folder / f"{source}.duckdb"
    with duckdb.connect(str(database)) as con:
        con.execute(create)
        columns = [c for (c,) in con.execute(f"select column_name from duckdb_columns() where table_name = '{table}'").fetchall()]
    (folder / "state").mkdir()
    (folder / "saferoom.yaml").write_text(f"""version: 1
sources: {{{source}: {{engine: duckdb, path: {database}}}}}
tables: {{{source}.{table}: {{{", ".join(f"{c}: public" for c in columns)}}}}}
tags: {{}}
users: {{{", ".join(f"{u}: {{roles: [analyst]}}" for u in users)}}}
roles: {{analyst: {role}}}
""")
    return Server(folder / "saferoom.yaml", folder / "state", free_port(), folder / "server.log", extra=list(extra),
                  socket=socket).start()


# a user with two roles, for what changes with the role a request acts as
RITA = "  rita: {roles: [analyst, security], attributes: {region: US}}\n"


def serving(room: object, tmp_path_factory: object, name: str, users: str = "") -> Iterator[Server]:
    """A gateway over the room for a module of tests (the body of its ``server`` fixture); ``users`` adds
    policy lines under ``users:``."""
    folder = tmp_path_factory.mktemp(name)  # type: ignore[attr-defined]
    policy = gateway_policy(room, folder)
    policy.write_text(policy.read_text().replace("users:\n", "users:\n" + users, 1))
    running = Server(policy, folder / "state", free_port(), folder / "server.log").start()
    yield running
    running.stop()


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return folder / "cert.pem", folder / "key.pem"


def descendants(pid: int) -> set[int]:
    """The processes under ``pid`` (a gateway's fork server and its query workers), as /proc lists them now."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # ended while listed
            parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found
