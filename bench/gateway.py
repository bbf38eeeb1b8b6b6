"""The gateway against the embedded session on the same machine, side by side.

(a) throughput of a 10M-row result into Arrow, gateway / embedded;
(b) small queries per second from 8 concurrent clients, with the durable audit log on;
(c) the gateway's peak memory while it streams the large result.

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
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
        finally:
            server.stop()
    print(f"saferoom {saferoom.__version__}: gateway vs embedded on the same machine")
    print(f"(a) {rows:,}-row result into Arrow: embedded {embedded:.2f} s ({rows / embedded / 1e6:.1f} M rows/s), "
          f"gateway {gateway:.2f} s ({rows / gateway / 1e6:.1f} M rows/s): throughput ratio {embedded / gateway:.2f}")
    print(f"(b) {args.clients} concurrent clients, durable audit: {rate:,.0f} requests/s for a small aggregate "
          f"(1M-row table, zone-map filter), {trivial:,.0f} requests/s for `select 1`; {audited:,} audit records written")
    print(f"(c) gateway memory: {idle:.0f} MB idle, peak {peak:.0f} MB while streaming {rows:,} rows")


if __name__ == "__main__":
    main()
