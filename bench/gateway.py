"""The gateway against the embedded session on the same machine, side by side.

(a) throughput of a 10M-row result into Arrow, gateway / embedded;
(b) small queries per second from 8 concurrent clients, with the durable audit log on;
(c) the gateway's peak memory while it streams the large result;
(d) one user's small queries per second while another floods the gateway with runaway queries that
    they abandon after 3 s, against the same user's rate on a quiet gateway, measured in turn.

Uses the data of bench/guard.py (built on first run). Usage: python bench/gateway.py [--rows N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from guard import build

import saferoom
from saferoom.client import RemoteSession
from tests.gateway_helpers import Server, free_port

SCAN = "select order_id, amount, region, created_at from orders"
SMALL = "select region, count(*) from orders_1m where order_id < 1000 group by 1"


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def throughput(policy: Path, server: Server, token: str, repeat: int) -> tuple[float, float, int]:
    embedded_s, gateway_s = [], []
    with saferoom.connect(policy, user="sam") as local, RemoteSession(server.url, token) as remote:
        rows = local.query(SCAN).to_arrow().num_rows
        for i in range(repeat):
            for name in ("embedded", "gateway") if i % 2 else ("gateway", "embedded"):
                session = local if name == "embedded" else remote
                start = time.perf_counter()
                table = session.query(SCAN).to_arrow()
                (embedded_s if name == "embedded" else gateway_s).append(time.perf_counter() - start)
                assert table.num_rows == rows
    return statistics.median(embedded_s), statistics.median(gateway_s), rows


def requests_per_second(server: Server, token: str, clients: int, seconds: float, sql: str = SMALL) -> float:
    done = [0] * clients
    stop = threading.Event()

    def work(i: int) -> None:
        with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {token}"}) as http:
            while not stop.is_set():
                response = http.post(f"{server.url}/v1/query", json={"sql": sql})
                response.raise_for_status()
                done[i] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    [t.start() for t in threads]
    time.sleep(seconds)
    stop.set()
    [t.join() for t in threads]
    return sum(done) / (time.perf_counter() - start)


FLOOD_CLIENTS = int(__import__("os").environ.get("FLOOD_CLIENTS", "16"))
RUNAWAY = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r"


class Flood:
    """``clients`` threads sending runaway queries as ``token``, each abandoned after ``patience`` seconds."""

    def __init__(self, server: Server, token: str, clients: int = FLOOD_CLIENTS, patience: float = 3.0) -> None:
        self.stop = threading.Event()
        self.sent = 0
        self.threads = [threading.Thread(target=self._work, args=(server.url, token, patience)) for _ in range(clients)]

    def _work(self, url: str, token: str, patience: float) -> None:
        while not self.stop.is_set():
            self.sent += 1
            try:
                httpx.post(f"{url}/v1/query", json={"sql": RUNAWAY}, timeout=patience,
                           headers={"Authorization": f"Bearer {token}"})
            except httpx.TimeoutException:
                pass  # abandoned, as an impatient user (or an attacker) would

    def __enter__(self) -> Flood:
        [t.start() for t in self.threads]
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        [t.join() for t in self.threads]


def under_flood(server: Server, good: str, bad: str, clients: int, seconds: float, rounds: int = 2) -> tuple[float, float, int]:
    """The well-behaved user's rate, quiet and flooded, in alternating rounds; and the gateway's peak memory (MB)."""
    quiet, flooded = [], []
    for _ in range(rounds):
        quiet.append(requests_per_second(server, good, clients, seconds))
        with Flood(server, bad):
            time.sleep(3.0)  # the flood at full strength: its first queries are running
            flooded.append(requests_per_second(server, good, clients, seconds))
    assert server.process is not None
    return statistics.median(quiet), statistics.median(flooded), int(peak_rss_mb(server.process.pid))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--only-flood", action="store_true", help="measure (d) alone")
    args = parser.parse_args()
    if args.only_flood:
        flood_only(args)
        return
    policy = build(args.rows)
    with tempfile.TemporaryDirectory() as state:
        server = Server(policy, Path(state), free_port(), Path(state) / "server.log").start()
        try:
            token = server.token("sam")
            assert server.process is not None
            idle = rss_mb(server.process.pid)
            embedded, gateway, rows = throughput(policy, server, token, args.repeat)
            peak = peak_rss_mb(server.process.pid)
            rate = requests_per_second(server, token, args.clients, args.seconds)
            trivial = requests_per_second(server, token, args.clients, args.seconds, "select 1")
            audited = sum(1 for _ in (Path(state) / "audit.log").open())
            quiet, flooded, flood_peak = under_flood(server, token, server.token("ana"), args.clients, args.seconds)
        finally:
            server.stop()
    print(f"saferoom {saferoom.__version__}: gateway vs embedded on the same machine")
    print(f"(a) {rows:,}-row result into Arrow: embedded {embedded:.2f} s ({rows / embedded / 1e6:.1f} M rows/s), "
          f"gateway {gateway:.2f} s ({rows / gateway / 1e6:.1f} M rows/s): throughput ratio {embedded / gateway:.2f}")
    print(f"(b) {args.clients} concurrent clients, durable audit: {rate:,.0f} requests/s for a small aggregate "
          f"(1M-row table, zone-map filter), {trivial:,.0f} requests/s for `select 1`; {audited:,} audit records written")
    print(f"(c) gateway memory: {idle:.0f} MB idle, peak {peak:.0f} MB while streaming {rows:,} rows")
    print_flood(args.clients, quiet, flooded, flood_peak)


def flood_only(args: argparse.Namespace) -> None:
    policy = build(args.rows)
    with tempfile.TemporaryDirectory() as state:
        server = Server(policy, Path(state), free_port(), Path(state) / "server.log").start()
        try:
            quiet, flooded, peak = under_flood(server, server.token("sam"), server.token("ana"), args.clients, args.seconds)
        finally:
            server.stop()
    print_flood(args.clients, quiet, flooded, peak)


def print_flood(clients: int, quiet: float, flooded: float, peak: int) -> None:
    print(f"(d) {clients} clients of one user: {quiet:,.0f} requests/s on a quiet gateway, {flooded:,.0f} while another user "
          f"floods runaway queries from 16 clients, abandoning each after 3 s: ratio {flooded / quiet:.2f}; "
          f"gateway peak memory {peak} MB")


if __name__ == "__main__":
    main()
