"""One signed-in analyst trying to take the gateway down for everyone: floods of runaway queries that they
abandon, huge bodies and query texts, values of gigabytes, and a shutdown in the middle of it all.

The policy here sets no limits at all, as the demo's does: the gateway's defaults must hold on their own.
No assertion is about time: a runaway query never ends by itself, so another user's answer arriving while
forty of them run is the proof that they do not starve anyone.
"""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from saferoom.audit import read, verify
from saferoom.policy.limits import GATEWAY_DEFAULTS
from saferoom.server.app import body_limit
from tests.gateway_helpers import HUNG, STOPS_WITHIN, Server, eventually, table_gateway

RUNAWAY = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r"
SMALL = "select count(*), max(amount) from shop.orders"


def open_gateway(folder: Path, *extra: str, role: str = "{columns: {}}") -> Server:
    """Two analysts over a small shop, with a policy that sets no limits."""
    create = "create table orders as select range as id, range % 97 as amount from range(10000)"
    return table_gateway(folder, "shop", "orders", create, ["mallory", "bob"], role, extra)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Server]:
    server = open_gateway(tmp_path)
    try:
        yield server
    finally:
        server.stop()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def ask(server: Server, token: str, sql: str, **extra: object) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/query", json={"sql": sql, **extra}, headers=auth(token), timeout=HUNG)


class Flood:
    """Runaway queries from one user, each on its own connection, kept open until ``hang_up``."""

    def __init__(self, server: Server, token: str, count: int) -> None:
        body = json.dumps({"sql": RUNAWAY, "format": "json"}).encode()
        head = (f"POST /v1/query HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        self.sockets = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(count)]
        for sock in self.sockets:
            sock.sendall(head + body)
        self.lines: dict[int, bytes] = {}

    def answered(self) -> list[bytes]:
        """The status lines of requests the gateway already answered (refusals: over the user's limit)."""
        for number, sock in enumerate(self.sockets):
            if number in self.lines:
                continue
            sock.setblocking(False)
            try:
                self.lines[number] = sock.recv(200).split(b"\r\n")[0]
            except BlockingIOError:
                pass
            finally:
                sock.setblocking(True)
        return list(self.lines.values())

    def hang_up(self) -> None:
        for sock in self.sockets:
            sock.close()


def outcomes(server: Server) -> tuple[dict[str, dict], dict[str, dict]]:
    """Allowed decisions and result records of the audit log, by request id."""
    records = read(server.state)
    allowed = {r["request_id"]: r for r in records if r.get("event") == "decision" and r["decision"] == "allowed"}
    results = {r["request_id"]: r for r in records if r.get("event") == "result"}
    return allowed, results


def test_abandoned_runaway_queries_starve_nobody_and_are_cancelled(gateway: Server) -> None:
    mallory, bob = gateway.token("mallory"), gateway.token("bob")
    flood = Flood(gateway, mallory, 40)
    try:
        eventually(lambda: len(flood.answered()) >= 40 - GATEWAY_DEFAULTS.max_concurrent, "the flood's refusals")
        assert all(line.startswith(b"HTTP/1.1 429") for line in flood.answered())
        # the runaways never end on their own: every answer below arrives while they run
        for _ in range(5):
            small = ask(gateway, bob, SMALL)
            assert small.status_code == 200, small.text
            assert httpx.get(f"{gateway.url}/healthz", timeout=HUNG).status_code == 200
            assert httpx.get(f"{gateway.url}/v1/whoami", headers=auth(bob), timeout=HUNG).json()["user"] == "bob"
            assert "/static/app.js" in httpx.get(f"{gateway.url}/", timeout=HUNG).text  # the web page
        running, _ = outcomes(gateway)
        assert sum(d["user"] == "mallory" for d in running.values()) == GATEWAY_DEFAULTS.max_concurrent
    finally:
        flood.hang_up()

    def settled() -> bool:
        allowed, results = outcomes(gateway)
        return set(allowed) <= set(results)

    eventually(settled, "a result record for every allowed query")  # the engine stopped each abandoned query
    allowed, results = outcomes(gateway)
    runaways = [results[i] for i, d in allowed.items() if d["user"] == "mallory"]
    assert [r["status"] for r in runaways] == ["cancelled"] * GATEWAY_DEFAULTS.max_concurrent
    assert all(r["error_type"] == "QueryCancelled" for r in runaways)
    refused = [r for r in read(gateway.state) if r.get("decision") == "refused"]
    assert len(refused) == 40 - GATEWAY_DEFAULTS.max_concurrent and all("max_concurrent" in r["refusal"]["message"] for r in refused)
    assert ask(gateway, mallory, SMALL).status_code == 200  # the slots came back
    assert verify(gateway.state).ok


def test_a_query_past_its_time_is_stopped_and_recorded_as_timed_out(tmp_path: Path) -> None:
    server = open_gateway(tmp_path, role="{columns: {}, timeout_seconds: 0.5}")
    try:
        stopped = ask(server, server.token("bob"), RUNAWAY)
        assert stopped.status_code == 429 and "timeout_seconds" in stopped.json()["error"]["message"]
    finally:
        server.stop()
    (result,) = outcomes(server)[1].values()
    assert result["status"] == "timed_out"


def test_a_client_that_stops_reading_its_result_has_its_query_ended_and_its_slot_freed(tmp_path: Path) -> None:
    """A client that keeps its connection but takes no more bytes would hold its query, its slot and its worker
    for ever: past the query's timeout without a byte taken, the gateway ends the query and drops the connection."""
    server = open_gateway(tmp_path, role="{columns: {}, timeout_seconds: 2, max_concurrent: 1}")
    bob = server.token("bob")
    body = json.dumps({"sql": "select a.id, b.id, a.amount from shop.orders a, shop.orders b", "format": "arrow"}).encode()
    head = (f"POST /v1/query HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {bob}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    stalled = socket.create_connection(("127.0.0.1", server.port))
    try:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 12)
        stalled.sendall(head + body)
        received = b""
        while b"\r\n\r\n" not in received:
            received += stalled.recv(1 << 12)
        assert received.startswith(b"HTTP/1.1 200")  # the result streams; from here on nothing is read
        eventually(lambda: ask(server, bob, SMALL).status_code == 200, "the stalled query's slot given back")
        allowed, results = outcomes(server)
        stalled_id = next(iter(allowed))  # the first query of the log
        assert results[stalled_id]["status"] in {"cancelled", "timed_out"}
    finally:
        stalled.close()
        server.stop()


@pytest.mark.parametrize("sql", [
    "select length(repeat('x', 2000000000))",
    "select length(lpad('', 2000000000, 'x'))",
    "select count(*) from (select unnest(string_split(repeat('a,', 50000000), ',')))",
    "select length(repeat('ab', cast(amount as bigint) * 100000000)) from shop.orders",
])
def test_a_value_of_gigabytes_is_refused_before_it_is_made(gateway: Server, sql: str) -> None:
    answer = ask(gateway, gateway.token("mallory"), sql)
    assert answer.status_code == 400, answer.text
    assert "would make a value over 1,048,576 bytes" in answer.json()["error"]["message"]


@pytest.mark.parametrize("sql", ["select printf('%2000000000d', 1)", "select printf('%*d', 2000000000, 1)",
                                 "select printf(cast(amount as varchar), 1) from shop.orders"])
def test_format_widths_are_checked_by_the_guard(gateway: Server, sql: str) -> None:
    answer = ask(gateway, gateway.token("mallory"), sql)
    assert answer.status_code == 403 and "printf()" in answer.json()["error"]["message"], answer.text


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


def test_a_400_mb_body_without_a_token_is_refused_while_it_is_read(gateway: Server) -> None:
    assert gateway.process is not None
    before = rss_kib(gateway.process.pid)

    def body() -> Iterator[bytes]:  # chunked: no Content-Length to refuse it by
        chunk = b"x" * (1 << 20)
        for _ in range(400):
            yield chunk

    try:
        answer = httpx.post(f"{gateway.url}/v1/query", content=body(), timeout=HUNG)
        assert answer.status_code == 413 and "TooLarge" in answer.text
    except httpx.TransportError:
        pass  # the gateway answered and closed while the client was still sending: refused all the same
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=HUNG) as sock:  # declares 400 MB, sends none
        sock.sendall(f"POST /v1/query HTTP/1.1\r\nHost: x\r\nContent-Length: {400 << 20}\r\n\r\n".encode())
        assert sock.recv(100).startswith(b"HTTP/1.1 413 ")
    grown = rss_kib(gateway.process.pid) - before
    assert grown < 64 * 1024, f"the gateway grew by {grown // 1024} MiB reading a body it refuses"
    assert httpx.get(f"{gateway.url}/healthz", timeout=HUNG).status_code == 200


def test_a_body_just_past_the_limit_is_413_and_one_under_it_is_read(gateway: Server) -> None:
    limit = body_limit(256 * 1024)
    token = gateway.token("bob")
    over = httpx.post(f"{gateway.url}/v1/query", content=b" " * (limit + 1), headers=auth(token), timeout=HUNG)
    assert over.status_code == 413
    padded = json.dumps({"sql": SMALL}).encode() + b" " * (limit - 100)
    under = httpx.post(f"{gateway.url}/v1/query", content=padded, timeout=HUNG,
                       headers={**auth(token), "Content-Type": "application/json"})
    assert under.status_code == 200, under.text


def test_a_query_text_past_the_limit_is_refused_and_audited_by_digest(tmp_path: Path) -> None:
    server = open_gateway(tmp_path, "--max-sql-bytes", "4096")
    try:
        token = server.token("mallory")
        sql = "select 1 where 'canary-long-text' in (" + ", ".join(f"'{i:08d}'" for i in range(2000)) + ")"
        answer = ask(server, token, sql)
        assert answer.status_code == 413 and "4,096" in answer.json()["error"]["message"]
        assert ask(server, token, "select 1").status_code == 200
    finally:
        server.stop()
    refused = next(r for r in read(server.state) if r.get("decision") == "refused")
    assert refused["query_bytes"] == len(sql) and refused["query_sha256"] == hashlib.sha256(sql.encode()).hexdigest()
    assert len(refused["query"]) <= 4096 and refused["query"] == sql[: len(refused["query"])]


def test_sigterm_stops_running_queries_and_the_server_and_flushes_the_audit_log(gateway: Server) -> None:
    token = gateway.token("mallory")
    answers: list[httpx.Response] = []
    waiting = threading.Thread(target=lambda: answers.append(ask(gateway, token, RUNAWAY)))
    waiting.start()
    eventually(lambda: bool(outcomes(gateway)[0]), "the runaway query to start")
    assert gateway.process is not None
    gateway.process.send_signal(signal.SIGTERM)
    gateway.process.wait(timeout=STOPS_WITHIN)  # the documented drain bound, with room for a busy machine
    waiting.join()
    assert answers[0].status_code == 503 and answers[0].json()["error"]["type"] == "QueryCancelled"
    allowed, results = outcomes(gateway)
    assert set(allowed) == set(results) and [r["status"] for r in results.values()] == ["cancelled"]
    assert verify(gateway.state).ok


@pytest.mark.parametrize("body", [
    b'{"sql": "select 1", "x": ' + b"[" * 200_000 + b"]" * 200_000 + b"}",  # nesting no JSON parser should recurse into
    b'{"sql": ["select 1"]}',
    b"not json at all",
    b'{"sql": "select 1", "role": {"$gt": ""}}',
])
def test_a_malformed_body_gets_the_one_error_shape_and_echoes_nothing(gateway: Server, body: bytes) -> None:
    answer = httpx.post(f"{gateway.url}/v1/query", content=body, timeout=HUNG,
                        headers={**auth(gateway.token("bob")), "Content-Type": "application/json"})
    assert answer.status_code in (400, 422), answer.text
    error = answer.json()["error"]
    assert error["type"] == "UsageError" and "select 1" not in error["message"]
    assert httpx.get(f"{gateway.url}/healthz", timeout=HUNG).status_code == 200
