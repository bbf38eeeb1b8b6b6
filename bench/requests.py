"""The airlock's overhead: a release request of a Parquet file, from the first byte sent to "ready for review"
(upload streamed to the gateway, hashed, checked with `saferoom check`, submitted), against `saferoom check`
alone on the same file, in alternating pairs of the same run. Target: <= 1.2x.

With --postgresql, also the same release on a gateway whose state (requests and their files included) is
in PostgreSQL, started for the run, against the same release on a gateway with folder state, in
alternating pairs.

Usage: python bench/requests.py [--mb 100] [--repeat 5] [--postgresql]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import httpx
import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from check import records
from timing import paired_medians

import saferoom.check as airlock
from saferoom.client import RemoteSession
from saferoom.identity import TokenStore
from saferoom.requests.client import RequestsClient

DATA = Path(__file__).parent / "data" / "requests"
POLICY = """version: 1
sources: {{prod: {{engine: duckdb, path: {database}}}}}
tables: {{prod.t: {{x: public}}}}
users: {{ana: {{roles: [analyst]}}, rev: {{roles: [reviewer]}}}}
roles: {{analyst: {{columns: {{}}}}, reviewer: {{columns: {{}}}}}}
reviews: {{release: {{roles: [reviewer]}}}}
"""


def parquet(mb: int) -> Path:
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / f"orders-{mb}mb.parquet"
    if not path.exists():
        rng = np.random.default_rng(5)
        with pq.ParquetWriter(path, records(10, rng).schema, compression="zstd") as writer:
            while not path.exists() or path.stat().st_size < mb * 1e6:
                writer.write_table(records(500_000, rng))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gateway(folder: Path, state: str | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """A gateway on ``state`` (default: a folder under ``folder``), writing releases to ``folder``/outbox."""
    folder.mkdir(parents=True, exist_ok=True)
    with duckdb.connect(str(folder / "prod.duckdb")) as con:
        con.execute("create table t as select 1 as x")
    (folder / "saferoom.yaml").write_text(POLICY.format(database=folder / "prod.duckdb"))
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", "from saferoom.cli import main; main()", "serve", "-p",
                               str(folder / "saferoom.yaml"), "--state", state or str(folder / "state"), "--port", str(port),
                               "--outbox", str(folder / "outbox")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    while server.poll() is None:
        try:
            if httpx.get(f"{url}/healthz").status_code == 200:
                return server, url
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit("the gateway did not start")


def releaser(url: str, token: str, path: Path, uploads: list[float] | None = None) -> Callable[[], None]:
    """One release request of ``path``, from its first byte to submitted (ready for review)."""
    client = RequestsClient(RemoteSession(url, token))

    def release() -> None:
        request = client.session.call("POST", "/v1/requests/release", json={"reason": "bench"})
        start = time.perf_counter()
        client.upload(request["id"], path)
        if uploads is not None:
            uploads.append(time.perf_counter() - start)
        client.session.call("POST", f"/v1/requests/{request['id']}/submit")

    return release


def on_postgresql(path: Path, repeat: int) -> None:
    """The same release on PostgreSQL state and on folder state, in alternating pairs of one run."""
    from saferoom.store.postgres import PostgresStore
    from tests import pg

    database = pg.start(free_port(), durable=True)
    servers: list[subprocess.Popen[bytes]] = []
    try:
        url = pg.fresh_database(database)
        with tempfile.TemporaryDirectory() as tmp:
            (pg_server, pg_url), (files_server, files_url) = gateway(Path(tmp) / "pg", url), gateway(Path(tmp) / "files")
            servers += [pg_server, files_server]
            store = PostgresStore(url)
            pg_token = store.tokens.create("ana")[0]
            store.close()
            files_token, _ = TokenStore(Path(tmp) / "files" / "state").create("ana")
            on_pg, on_files, ratio = paired_medians(releaser(pg_url, pg_token, path), releaser(files_url, files_token, path),
                                                    repeat)
    finally:
        for server in servers:
            server.terminate()
            server.wait()
        database.stop()
    print(f"{'release, PostgreSQL state':<40}{on_pg:>8.2f} s")
    print(f"{'release, folder state':<40}{on_files:>8.2f} s")
    print(f"PostgreSQL state / folder state: {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--postgresql", action="store_true", help="also: PostgreSQL state against folder state")
    args = parser.parse_args()
    path = parquet(args.mb)
    if args.postgresql:
        on_postgresql(path, args.repeat)
        return
    with tempfile.TemporaryDirectory() as tmp:
        server, url = gateway(Path(tmp))
        try:
            token, _ = TokenStore(Path(tmp) / "state").create("ana")
            uploads: list[float] = []
            release = releaser(url, token, path, uploads)
            requested, checked, ratio = paired_medians(release, lambda: airlock.check(path), args.repeat)
        finally:
            server.terminate()
            server.wait()
    size = os.path.getsize(path) / 1e6
    print(f"file: {path.name}, {size:.0f} MB, {pq.ParquetFile(path).metadata.num_rows:,} rows")
    print(f"{'release request to ready for review':<40}{requested:>8.2f} s")
    print(f"{'  of which the upload (streamed, hashed)':<40}{statistics.median(uploads):>8.2f} s")
    print(f"{'saferoom check alone':<40}{checked:>8.2f} s")
    print(f"request / check alone: {ratio:.2f}x (target <= 1.2x)")


if __name__ == "__main__":
    main()
