"""Results over the gateway's Unix socket, the way a room reads them: whole and exact, errors as embedded, a cut
or a dead gateway said, and a client that leaves cancelling its query. Real gateways on real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import os
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import saferoom
from saferoom import priority
from saferoom.audit import read
from saferoom.client import RemoteSession
from saferoom.server.workers import QueryThread
from tests.gateway_helpers import HUNG, Server, eventually, table_gateway

ROWS = 3_000_000  # tens of MB: the result outlasts every buffer between the worker and the client
CREATE = (f"create table events as select range as id, case when range % 7 = 0 then null else random() end as x, "
          f"case when range % 11 = 0 then null else 'né ' || range end as note from range({ROWS})")
QUERY = "select id, x, note from events"


def socket_gateway(folder: Path, role: str = "{}") -> Server:
    return table_gateway(folder, "big", "events", CREATE, ["alice"], role, socket=folder / "gateway.sock")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = socket_gateway(tmp_path_factory.mktemp("roomio"), "{max_concurrent: 1}")
    yield server
    server.stop()


def over_socket(server: Server) -> RemoteSession:
    assert server.socket is not None
    return RemoteSession(None, server.token("alice"), socket=server.socket)


def test_a_large_result_over_the_socket_is_the_embedded_one_exactly(gateway: Server) -> None:
    with over_socket(gateway) as remote, saferoom.connect(gateway.policy, user="alice") as embedded:
        result = remote.query(f"{QUERY} order by id")
        got = result.to_arrow()
        expected = embedded.query(f"{QUERY} order by id").to_arrow()
    assert got.num_rows == ROWS and got.equals(expected)
    assert got.column("note").null_count == len(range(0, ROWS, 11)) and got.column("x").null_count == len(range(0, ROWS, 7))
    assert not result.truncated and result.request_id


def test_a_refused_query_over_the_socket_raises_as_it_does_embedded(gateway: Server) -> None:
    with over_socket(gateway) as remote, saferoom.connect(gateway.policy, user="alice") as embedded:
        with pytest.raises(saferoom.SaferoomError) as far:
            remote.query("select * from secrets")
        with pytest.raises(saferoom.SaferoomError) as near:
            embedded.query("select * from secrets")
    assert type(far.value) is type(near.value) and str(far.value) == str(near.value)


def test_a_client_leaving_mid_stream_cancels_its_query_and_frees_its_slot(gateway: Server) -> None:
    """max_concurrent is 1: the next query runs only once the abandoned one has ended at the gateway."""
    with over_socket(gateway) as remote:
        result = remote.query(QUERY)
        assert next(result.batches()).num_rows > 0
        result.close()  # read no further
        second = remote.query(QUERY)
        assert next(second.batches()).num_rows > 0
    # the session closed with the second still streaming: its query ends too
    with over_socket(gateway) as remote:
        eventually(lambda: remote.query("select 1 as one").to_arrow().num_rows == 1, "the abandoned streams' slot to come back")
    eventually(lambda: len(abandoned(gateway)) == 2, "both abandoned queries' result records")
    assert all(record["rows"] < ROWS for record in abandoned(gateway))


def abandoned(server: Server) -> list[dict[str, object]]:
    return [r for r in read(server.state) if r.get("event") == "result" and r["rows"] not in (1, ROWS)]


def test_a_cut_result_over_the_socket_says_so(tmp_path: Path) -> None:
    server = socket_gateway(tmp_path, "{max_rows: 100000}")
    try:
        with over_socket(server) as remote:
            result = remote.query(QUERY)
            assert result.to_arrow().num_rows == 100_000
            assert result.truncated and any("100000" in n or "100,000" in n for n in result.notices)
    finally:
        server.stop()


def test_a_gateway_dying_mid_stream_over_the_socket_is_an_error_not_a_short_result(tmp_path: Path) -> None:
    server = socket_gateway(tmp_path)
    try:
        with over_socket(server) as remote:
            batches = remote.query(QUERY).batches()
            assert next(batches).num_rows > 0
            server.kill9()
            with pytest.raises(saferoom.EngineError, match="before the end"):
                for _ in batches:
                    pass
    finally:
        server.stop()


class _NotAGateway(http.server.BaseHTTPRequestHandler):
    """Says who the caller is, as a gateway would, then answers a query with a web page."""

    def do_GET(self) -> None:
        self._answer("application/json", json.dumps({"user": "alice", "role": "analyst"}).encode())

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self._answer("text/html", b"<html>sign in</html>")

    def _answer(self, kind: str, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def impostor(path: Path, handler: type[socketserver.BaseRequestHandler]) -> Iterator[Path]:
    """A server on the Unix socket ``path`` that is not a gateway, stopped however the test ends."""
    with socketserver.ThreadingUnixStreamServer(str(path), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield path
        finally:
            server.shutdown()
            thread.join()


def test_an_answer_on_the_socket_that_is_not_arrow_is_refused_not_read(tmp_path: Path) -> None:
    with impostor(tmp_path / "other.sock", _NotAGateway) as path, RemoteSession(None, "sr_x", socket=path) as remote, \
            pytest.raises(saferoom.UsageError, match="did not answer as a saferoom gateway.*text/html"):
        remote.query("select 1")


# --- the gateway's thread that passes a result on -----------------------------------------------------


def spin(seconds: float) -> int:
    """Use ``seconds`` of this thread's processor time; its native id."""
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        pass
    return threading.get_native_id()


def wait(seconds: float) -> int:
    """Pass ``seconds`` using no processor time; this thread's native id."""
    time.sleep(seconds)
    return threading.get_native_id()


def test_a_query_thread_that_waits_keeps_its_priority_and_one_that_computes_loses_it() -> None:
    """On a busy machine every query takes long; only one that computes in the gateway is lowered (SCHED_IDLE),
    so a thread passing Arrow bytes on is never starved behind everyone else's work."""

    async def scenario() -> tuple[int, int]:
        waiting, computing = QueryThread(), QueryThread()
        try:
            idle_tid = await waiting.run(wait, 4 * priority.SHORT_SECONDS)
            await asyncio.sleep(2 * priority.SHORT_SECONDS)  # the watch looks again meanwhile
            kept = os.sched_getscheduler(idle_tid)
            busy_tid = await computing.run(spin, 2 * priority.SHORT_SECONDS)
            deadline = time.monotonic() + HUNG
            while os.sched_getscheduler(busy_tid) != os.SCHED_IDLE:  # the watch sees it at its next look
                assert time.monotonic() < deadline, "a thread that used a long query's processor time was never lowered"
                await asyncio.sleep(0.05)
            return kept, os.sched_getscheduler(busy_tid)
        finally:
            waiting.close()
            computing.close()

    kept, lowered = asyncio.run(scenario())
    assert kept == os.SCHED_OTHER and lowered == os.SCHED_IDLE
