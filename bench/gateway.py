"""The gateway against the embedded session on the same machine, side by side.

(a) throughput of a 10M-row result into Arrow, gateway / embedded;
(b) small queries per second from 8 concurrent clients, with the durable audit log on;
(c) the gateway's peak memory while it streams the large result;
(e) one user's small queries per second while another floods the gateway with runaway queries that
    they abandon after 3 s, against the same user's rate on a quiet gateway, measured in turn.
(f) the web page's result: the first page of a 100,000-row result kept by the gateway (format page) against
    the whole result as JSON (what a page without paging receives), and a later page, in alternating rounds.
(d) what sealing the audit log costs: (b) on a gateway with --audit-key (HMAC per record, a signed
    checkpoint every 1,000 records or 10 s) against one without, in alternating rounds of the same run.
(g) state in PostgreSQL: small-query requests/s for one gateway on file state, and one, two and three on one
    PostgreSQL state (clients spread across them), in alternating rounds; and audit commit latency (p50,
    p99: the decision record's wait) for file state and for one, two and three writer processes on
    PostgreSQL (each group commit one call of the chain's server-side function). PostgreSQL runs with fsync
    on, as the file state's log is fsynced. Targets: one gateway on PostgreSQL >= 0.8x the requests/s on
    file state, commit p99 (one writer) <= 2x file state's. Each ratio is the geometric mean of the rounds'
    ratios: in a round the two ran one right after the other, and the rounds alternate the order (an even
    number of them), because on this shared machine whichever runs second in a pair measured ~25% slower.

Uses the data of bench/guard.py (built on first run).
Usage: python bench/gateway.py [--rows N] [--audit-only] [--only-flood] [--only-page] [--only-state]
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import secrets
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from guard import build
from timing import median_seconds

import saferoom
from saferoom.audit import AuditKey
from saferoom.client import RemoteSession
from saferoom.policy.limits import GATEWAY_DEFAULTS
from saferoom.secrets import Secret
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


def requests_per_second(server: Server | list[Server], token: str, clients: int, seconds: float, sql: str = SMALL) -> float:
    """Requests/s from ``clients`` threads; given several gateways, client i sends to gateway i mod n."""
    done = [0] * clients
    stop = threading.Event()
    servers = server if isinstance(server, list) else [server]

    def work(i: int) -> None:
        url = servers[i % len(servers)].url
        with httpx.Client(timeout=30, headers={"Authorization": f"Bearer {token}"}) as http:
            while not stop.is_set():
                try:
                    response = http.post(f"{url}/v1/query", json={"sql": sql})
                except httpx.TimeoutException:  # a machine this busy: said, and the client goes on
                    print("  a measured request timed out (30 s)", file=sys.stderr)
                    continue
                if response.status_code != 200:  # counted as nothing, and said, rather than ending this client
                    print(f"  a measured request failed: {response.status_code} {response.text[:200]}", file=sys.stderr)
                    continue
                done[i] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    [t.start() for t in threads]
    time.sleep(seconds)
    stop.set()
    [t.join() for t in threads]
    return sum(done) / (time.perf_counter() - start)


FLOOD_CLIENTS = 16  # the flooding user's connections: four times the queries they may run at once
FLOOD_GOOD_CLIENTS = GATEWAY_DEFAULTS.max_concurrent  # the well-behaved user keeps within their limit
RUNAWAY = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r"


class Flood:
    """``clients`` connections sending runaway queries as ``token``, each abandoned after ``patience`` seconds.

    The flood runs in a process of its own, as another person's client would: its threads never share an
    interpreter (and its lock) with the client whose rate is measured."""

    def __init__(self, server: Server, token: str, clients: int = FLOOD_CLIENTS, patience: float = 3.0) -> None:
        context = multiprocessing.get_context("spawn")
        self.stop = context.Event()
        self.process = context.Process(target=_flood, args=(server.url, token, clients, patience, self.stop))

    def __enter__(self) -> Flood:
        self.process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.process.join()


def _flood(url: str, token: str, clients: int, patience: float, stop: Any) -> None:
    def work() -> None:
        while not stop.is_set():
            try:
                with httpx.Client(timeout=patience, headers={"Authorization": f"Bearer {token}"}) as http:
                    while not stop.is_set():
                        http.post(f"{url}/v1/query", json={"sql": RUNAWAY})
            except httpx.HTTPError:
                pass  # abandoned (a timeout), as an impatient user (or an attacker) would: send another

    threads = [threading.Thread(target=work) for _ in range(clients)]
    [t.start() for t in threads]
    [t.join() for t in threads]


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
def audit_cost(policy: Path, clients: int, seconds: float, rounds: int) -> tuple[float, float]:
    """Median requests/s for the small aggregate, unsealed and sealed, the two gateways taking turns."""
    os.environ["SAFEROOM_BENCH_AUDIT_KEY"] = secrets.token_urlsafe(32)
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        plain = Server(policy, base / "plain", free_port(), base / "plain.log")
        sealed = Server(policy, base / "sealed", free_port(), base / "sealed.log",
                        extra=["--audit-key", "env:SAFEROOM_BENCH_AUDIT_KEY"])
        rates: dict[str, list[float]] = {"plain": [], "sealed": []}
        try:
            servers = {"plain": plain.start(), "sealed": sealed.start()}
            tokens = {name: server.token("sam") for name, server in servers.items()}
            for i in range(rounds):
                for name in ("plain", "sealed") if i % 2 == 0 else ("sealed", "plain"):
                    rates[name].append(requests_per_second(servers[name], tokens[name], clients, seconds))
        finally:
            plain.stop()
            sealed.stop()
    return statistics.median(rates["plain"]), statistics.median(rates["sealed"])


def seal_cpu_us(n: int = 20_000) -> float:
    """CPU the seal adds per record, in-process: the HMAC of its hash, and a thousandth of a checkpoint's signature."""
    key = AuditKey(Secret(secrets.token_urlsafe(32)))
    digests = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)]
    per_seal = median_seconds(lambda: [key.seal(d) for d in digests], 5) / n
    per_signature = median_seconds(lambda: key.sign(b"x" * 200), 51)
    return (per_seal + per_signature / 1000) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--only-flood", action="store_true", help="Only (e).")
    parser.add_argument("--audit-rounds", type=int, default=4)
    parser.add_argument("--audit-only", action="store_true", help="Only (d).")
    parser.add_argument("--only-page", action="store_true", help="Only (f).")
    parser.add_argument("--only-state", action="store_true", help="Only (g).")
    parser.add_argument("--state-rounds", type=int, default=6)
    args = parser.parse_args()
    if args.only_state:
        print_state(*state_figures(build(args.rows), args))
        return
    if args.only_flood:
        flood_only(args)
        return
    if args.only_page:
        page_only(args)
        return
    policy = build(args.rows)
    plain, sealed = audit_cost(policy, args.clients, args.seconds, args.audit_rounds)
    if args.audit_only:
        print_audit_cost(args, plain, sealed)
        return
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
            pages = page_costs(server, token, args.repeat)
            quiet, flooded, flood_peak = under_flood(server, token, server.token("ana"), FLOOD_GOOD_CLIENTS, args.seconds)
        finally:
            server.stop()
    print(f"saferoom {saferoom.__version__}: gateway vs embedded on the same machine")
    print(f"(a) {rows:,}-row result into Arrow: embedded {embedded:.2f} s ({rows / embedded / 1e6:.1f} M rows/s), "
          f"gateway {gateway:.2f} s ({rows / gateway / 1e6:.1f} M rows/s): throughput ratio {embedded / gateway:.2f}")
    print(f"(b) {args.clients} concurrent clients, durable audit: {rate:,.0f} requests/s for a small aggregate "
          f"(1M-row table, zone-map filter), {trivial:,.0f} requests/s for `select 1`; {audited:,} audit records written")
    print(f"(c) gateway memory: {idle:.0f} MB idle, peak {peak:.0f} MB while streaming {rows:,} rows")
    print_flood(FLOOD_GOOD_CLIENTS, quiet, flooded, flood_peak)
    print_pages(pages, args.repeat)
    print_audit_cost(args, plain, sealed)
    print_state(*state_figures(policy, args))


def flood_only(args: argparse.Namespace) -> None:
    policy = build(args.rows)
    with tempfile.TemporaryDirectory() as state:
        server = Server(policy, Path(state), free_port(), Path(state) / "server.log").start()
        try:
            quiet, flooded, peak = under_flood(server, server.token("sam"), server.token("ana"), FLOOD_GOOD_CLIENTS, args.seconds)
        finally:
            server.stop()
    print_flood(FLOOD_GOOD_CLIENTS, quiet, flooded, peak)


PAGED = "select order_id, amount, region, created_at from orders_1m limit 100000"


def page_costs(server: Server, token: str, repeat: int) -> dict[str, float]:
    """Median seconds and bytes: the first page (format page), the whole result as JSON, a page further on."""
    seconds: dict[str, list[float]] = {"page": [], "json": [], "later": []}
    sizes: dict[str, int] = {}
    with httpx.Client(timeout=120, headers={"Authorization": f"Bearer {token}"}) as http:
        for i in range(repeat):
            for kind in ("page", "json") if i % 2 else ("json", "page"):
                start = time.perf_counter()
                response = http.post(f"{server.url}/v1/query", json={"sql": PAGED, "format": kind})
                seconds[kind].append(time.perf_counter() - start)
                assert response.status_code == 200 and response.json()["status"]["rows"] == 100_000, response.text[:200]
                sizes[kind] = len(response.content)
                kept = response.json().get("result")
                if kept:
                    start = time.perf_counter()
                    later = http.get(f"{server.url}/v1/results/{kept['id']}", params={"offset": 50_000, "limit": 100})
                    seconds["later"].append(time.perf_counter() - start)
                    assert len(later.json()["rows"]) == 100
    return {**{k: statistics.median(v) for k, v in seconds.items()}, **{f"{k}_bytes": v for k, v in sizes.items()}}


def page_only(args: argparse.Namespace) -> None:
    policy = build(args.rows)
    with tempfile.TemporaryDirectory() as state:
        server = Server(policy, Path(state), free_port(), Path(state) / "server.log").start()
        try:
            costs = page_costs(server, server.token("sam"), args.repeat)
        finally:
            server.stop()
    print_pages(costs, args.repeat)


def print_pages(costs: dict[str, float], repeat: int) -> None:
    print(f"(f) web page, 100,000-row result, median of {repeat}: first page {costs['page']:.2f} s "
          f"({costs['page_bytes'] / 1024:,.0f} KB), whole result as JSON {costs['json']:.2f} s "
          f"({costs['json_bytes'] / 1024:,.0f} KB): time ratio {costs['page'] / costs['json']:.2f}, bytes ratio "
          f"{costs['page_bytes'] / costs['json_bytes']:.4f}; a page at row 50,000: {costs['later'] * 1000:.0f} ms")


def print_flood(clients: int, quiet: float, flooded: float, peak: int) -> None:
    print(f"(e) {clients} clients of one user: {quiet:,.0f} requests/s on a quiet gateway, {flooded:,.0f} while another user "
          f"floods runaway queries from 16 clients, abandoning each after 3 s: ratio {flooded / quiet:.2f}; "
          f"gateway peak memory {peak} MB")


def print_audit_cost(args: argparse.Namespace, plain: float, sealed: float) -> None:
    print(f"(d) sealed audit log (HMAC chain, signed checkpoints), median of {args.audit_rounds} alternating rounds of "
          f"{args.seconds:.0f} s: {sealed:,.0f} requests/s sealed, {plain:,.0f} unsealed: ratio {sealed / plain:.3f}")
    cpu = seal_cpu_us()
    print(f"    sealing costs {cpu:.1f} µs of CPU per record (two records per query: {2 * cpu * sealed / 1e4:.2f}% of one "
          f"core at {sealed:,.0f} requests/s)")


STATE_CONFIGS = ("files", "pg1", "pg2", "pg3")
COMMIT_THREADS, COMMIT_RECORDS = 8, 200  # per writer process: threads appending, records each


Rounds = dict[str, list[float]]  # a figure per configuration, one per round


def state_figures(policy: Path, args: argparse.Namespace) -> tuple[Rounds, dict[str, list[tuple[float, float]]]]:
    """Requests/s per configuration and commit latency p50/p99 (ms) per writer setup, one of each per round."""
    from tests import pg

    server = pg.start(free_port(), durable=True)
    try:
        latencies = _latencies(server, args.state_rounds)
        rates = _state_rates(policy, server, args)
    finally:
        server.stop()
    return rates, latencies


LATENCY_CONFIGS = ("files", "pg1", "pg2", "pg3")


def _latencies(server: Any, rounds: int) -> dict[str, list[tuple[float, float]]]:
    """p50 and p99 (ms) per writer setup in each of ``rounds`` alternating rounds (the machine's load drifts)."""
    from tests import pg

    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in LATENCY_CONFIGS}
    with tempfile.TemporaryDirectory() as folder:
        targets = {name: folder if name == "files" else pg.fresh_database(server) for name in LATENCY_CONFIGS}
        for i in range(rounds):
            for name in LATENCY_CONFIGS if i % 2 == 0 else LATENCY_CONFIGS[::-1]:
                writers = 1 if name == "files" else int(name[-1])
                samples[name].append(_latency("files" if name == "files" else "pg", targets[name], writers))
                print(f"    commit latency p50/p99 ms, {name}: {samples[name][-1][0]:.2f} / {samples[name][-1][1]:.2f}",
                      flush=True)
    return samples


def _state_rates(policy: Path, server: Any, args: argparse.Namespace) -> Rounds:
    from tests import pg

    url = pg.fresh_database(server)
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        files = Server(policy, base / "state", free_port(), base / "files.log")
        shared = [Server(policy, url, free_port(), base / f"pg{n}.log") for n in range(3)]  # type: ignore[arg-type]
        rates: dict[str, list[float]] = {name: [] for name in STATE_CONFIGS}
        try:
            tokens = {"files": files.start().token("sam"), "pg": [s.start() for s in shared][0].token("sam")}
            for gateway in [files, *shared]:  # each gateway's first query starts the user's worker: not measured
                token = tokens["files" if gateway is files else "pg"]
                httpx.post(f"{gateway.url}/v1/query", json={"sql": SMALL}, headers={"Authorization": f"Bearer {token}"},
                           timeout=300).raise_for_status()
            for i in range(args.state_rounds):
                for name in STATE_CONFIGS if i % 2 == 0 else STATE_CONFIGS[::-1]:
                    target = [files] if name == "files" else shared[: int(name[-1])]
                    token = tokens["files" if name == "files" else "pg"]
                    rates[name].append(requests_per_second(target, token, args.clients, args.seconds))
                    print(f"    {name}: {rates[name][-1]:.1f} requests/s", flush=True)
        finally:
            for gateway in [files, *shared]:
                gateway.stop()
    return rates


def _latency(kind: str, target: str, writers: int) -> tuple[float, float]:
    """p50 and p99 (ms) of ``append`` (the wait for a durable record) across ``writers`` processes at once."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=_appending, args=(kind, target, results)) for _ in range(writers)]
    [p.start() for p in processes]
    samples = [x for _ in processes for x in results.get()]
    [p.join() for p in processes]
    samples.sort()
    return samples[len(samples) // 2] * 1000, samples[int(len(samples) * 0.99)] * 1000


def _appending(kind: str, target: str, results: Any) -> None:
    from saferoom.store import FileStore
    from saferoom.store.postgres import PostgresStore

    store = FileStore(Path(target)) if kind == "files" else PostgresStore(target)
    writer = store.open_audit()
    samples: list[float] = []

    def work() -> None:
        for i in range(COMMIT_RECORDS):
            start = time.perf_counter()
            writer.append({"event": "decision", "user": "bench", "sql": SMALL, "i": i})
            samples.append(time.perf_counter() - start)

    threads = [threading.Thread(target=work) for _ in range(COMMIT_THREADS)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    writer.close()
    store.close()
    results.put(samples)


RATE_TARGET, P99_TARGET = 0.8, 2.0  # issue #18: PostgreSQL state against file state, one gateway


def print_state(rounds: Rounds, latencies: dict[str, list[tuple[float, float]]]) -> None:
    """Medians of the rounds; each target's ratio from its rounds' ratios (see the module's docstring)."""
    rates = {name: statistics.median(values) for name, values in rounds.items()}
    ratios = {name: paired(rounds[name], rounds["files"]) for name in STATE_CONFIGS}
    print(f"(g) small-query requests/s, median of {len(rounds['files'])} alternating rounds: one gateway on file state "
          f"{rates['files']:,.0f}; on PostgreSQL state one {rates['pg1']:,.0f} (ratio {ratios['pg1']:.2f}, target >= "
          f"{RATE_TARGET}: {_met(ratios['pg1'] >= RATE_TARGET)}), two {rates['pg2']:,.0f} ({ratios['pg2']:.2f}), three "
          f"{rates['pg3']:,.0f} ({ratios['pg3']:.2f}); one gateway's ratio per round {_each(rounds['pg1'], rounds['files'])}")
    p50 = {name: statistics.median(x[0] for x in got) for name, got in latencies.items()}
    p99 = {name: statistics.median(x[1] for x in got) for name, got in latencies.items()}
    pg99, files99 = [x[1] for x in latencies["pg1"]], [x[1] for x in latencies["files"]]
    ratio = paired(pg99, files99)
    print(f"    audit commit latency ({COMMIT_THREADS} threads per writer): file state p50 {p50['files']:.2f} ms, "
          f"p99 {p99['files']:.2f} ms")
    figures = ", ".join(f"{n} writer{'s' * (n > 1)} p50 {p50[f'pg{n}']:.2f} / p99 {p99[f'pg{n}']:.2f} ms" for n in (1, 2, 3))
    print(f"    PostgreSQL: {figures}; p99 ratio to files (1 writer) {ratio:.2f}, target <= {P99_TARGET}: "
          f"{_met(ratio <= P99_TARGET)}; per round {_each(pg99, files99)}")


def paired(values: list[float], base: list[float]) -> float:
    """The geometric mean of the rounds' ratios ``values[i] / base[i]``."""
    return statistics.geometric_mean(v / b for v, b in zip(values, base, strict=True))


def _each(values: list[float], base: list[float]) -> str:
    return " ".join(f"{v / b:.2f}" for v, b in zip(values, base, strict=True))


def _met(met: bool) -> str:
    return "met" if met else "MISSED"


if __name__ == "__main__":
    main()
