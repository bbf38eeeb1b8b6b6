"""A real PostgreSQL server for the tests: initdb and pg_ctl in a temporary folder.

PostgreSQL refuses to run as root, so when the suite runs as root (as CI does)
the server runs as an unprivileged user this fixture creates.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

USER = "saferoom-pg"
READER_PASSWORD = "canary-pg-password-5d1e"


def bindir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(candidates[-1]).parent if candidates else None


def _account() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER], check=True)
        entry = pwd.getpwnam(USER)
    return entry.pw_uid, entry.pw_gid


@dataclass
class Postgres:
    base: Path
    port: int
    bin: Path
    account: tuple[int, int] | None
    durable: bool = False  # fsync on: for benchmarks that compare commit costs; the tests need no crash safety

    @property
    def socket(self) -> str:
        return str(self.base / "sock")

    def admin_uri(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}?host={self.socket}"

    def reader_url(self, database: str = "prod") -> str:
        return f"postgresql://reader@127.0.0.1:{self.port}/{database}"

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        uid_gid = {"user": self.account[0], "group": self.account[1]} if self.account else {}
        done = subprocess.run(args, check=False, capture_output=True, text=True, **uid_gid)  # type: ignore[call-overload]
        if done.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed: {done.stdout[-1000:]} {done.stderr[-1000:]}")
        return done

    def crash(self) -> None:
        """Stop the server the hard way (no checkpoint, connections cut), as a crash or failover would."""
        self.run(str(self.bin / "pg_ctl"), "-D", str(self.base / "data"), "stop", "-m", "immediate", "-w")

    def resume(self) -> None:
        self.run(str(self.bin / "pg_ctl"), "-D", str(self.base / "data"), "-l", str(self.base / "server.log"), "-w", "start",
                 "-o", f"-p {self.port} -k {self.base / 'sock'} -c listen_addresses=127.0.0.1"
                 + ("" if self.durable else " -c fsync=off"))

    def stop(self) -> None:
        try:
            self.run(str(self.bin / "pg_ctl"), "-D", str(self.base / "data"), "stop", "-m", "fast", "-w")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


def start(port: int, durable: bool = False) -> Postgres:
    """Start a server in a fresh folder under the system temp dir (pytest's own is private to root)."""
    base = Path(tempfile.mkdtemp(prefix="saferoom-pg-"))
    found = bindir()
    if found is None:
        raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    account = _account()
    (base / "sock").mkdir(parents=True)
    if account:
        for path in (base, base / "sock"):
            os.chown(path, *account)
    server = Postgres(base, port, found, account, durable)
    server.run(str(found / "initdb"), "-D", str(base / "data"), "-U", "postgres", "--auth-local=trust",
               "--auth-host=scram-sha-256", "--encoding=UTF8", "--no-sync")
    server.resume()
    return server


def start_with_reader() -> Postgres:
    """A server on a free port with database ``prod`` and the login role ``reader`` (no grants yet)."""
    import socket

    import adbc_driver_postgresql.dbapi as dbapi

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = start(port)
    try:
        with dbapi.connect(server.admin_uri(), autocommit=True) as admin, admin.cursor() as cur:
            cur.execute("CREATE DATABASE prod")
            cur.execute(f"CREATE ROLE reader LOGIN PASSWORD '{READER_PASSWORD}'")
    except BaseException:
        server.stop()
        raise
    return server


def fresh_database(server: Postgres) -> str:
    """A new, empty database on ``server``; the URL saferoom's state takes (psycopg's syntax)."""
    import uuid

    import adbc_driver_postgresql.dbapi as dbapi

    name = f"state_{uuid.uuid4().hex[:10]}"
    with dbapi.connect(server.admin_uri(), autocommit=True) as admin, admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    return f"postgresql://postgres@/{name}?host={server.socket}&port={server.port}"
