"""The result door on the gateway's Unix socket (saferoom/server/door.py): a query answered as plain Arrow,
audited before its first byte, hostile requests refused with an explanation, a client that leaves cancelling
its query, and HTTP still served on the same socket. Real gateways on real sockets."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import socketserver
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow as pa
import pytest

import saferoom
from saferoom import chunks
from saferoom.audit import read
from saferoom.client import DOOR, RemoteSession
from saferoom.decision import MAX_SQL_BYTES
from saferoom.errors import SaferoomError
from saferoom.server.app import body_limit
from tests.gateway_helpers import Server, descendants, eventually, free_port, table_gateway
from tests.test_aggregate import small_groups
from tests.test_privacy import EXACT, SUMS
from tests.test_room_io import QUERY, ROWS, impostor, socket_gateway

SLOW = "select count(*) as n from events a, events b where a.id < b.id"  # runs until it is stopped
ENDLESS = "select a.id from events a, events b where a.id < b.id"  # streams rows until it is stopped
NOTHING = "select a.id from events a, events b where a.id + b.id < 0"  # streams, but makes no row until it is stopped


@pytest.fixture(params=["memory", "stream"])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The client reads the worker's result from its memory files (saferoom/chunks.py), or as a stream."""
    if request.param == "stream":
        monkeypatch.setattr(chunks, "available", lambda: False)
    return str(request.param)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = socket_gateway(tmp_path_factory.mktemp("roomdoor"), "{max_concurrent: 1}")
    yield server
    server.stop()


def knock(server: Server, request: bytes) -> socket.socket:
    """A connection to the door with ``request`` sent on it."""
    assert server.socket is not None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(server.socket))
    sock.sendall(request)
    return sock


def ask(server: Server, fields: dict[str, object], user: str = "alice") -> socket.socket:
    return knock(server, DOOR + json.dumps({"authorization": f"Bearer {server.token(user)}", **fields}).encode() + b"\n")


def answer_line(sock: socket.socket) -> tuple[dict[str, object], bytes]:
    received = b""
    while b"\n" not in received:
        got = sock.recv(1 << 16)
        assert got, f"the door closed without an answer line: {received!r}"
        received += got
    line, rest = received.split(b"\n", 1)
    return json.loads(line), rest


def error_of(sock: socket.socket) -> dict[str, object]:
    with sock:
        answer, rest = answer_line(sock)
        assert sock.recv(1) == b"" and rest == b""  # nothing after the error: the door closes
    error = answer["error"]
    assert isinstance(error, dict)
    return error


def results(server: Server, request_id: object) -> list[dict[str, object]]:
    return [r for r in read(server.state) if r.get("event") == "result" and r.get("request_id") == request_id]


def test_the_client_reads_through_the_door_and_http_still_answers_on_the_same_socket(gateway: Server) -> None:
    assert gateway.socket is not None
    with RemoteSession(None, gateway.token("alice"), socket=gateway.socket) as remote:
        through_door = remote.query(f"{QUERY} order by id limit 1000").to_arrow()
    transport = httpx.HTTPTransport(uds=str(gateway.socket))
    with httpx.Client(transport=transport, base_url="http://gateway", headers={"Authorization": f"Bearer {gateway.token('alice')}"}) as http:
        assert http.get("/v1/whoami").json()["door"] is True  # what tells the client the door is there
        response = http.post("/v1/query", json={"sql": f"{QUERY} order by id limit 1000"})
    assert response.headers["content-type"].startswith("application/vnd.apache.arrow.stream")
    assert pa.ipc.open_stream(response.content).read_all().equals(through_door) and through_door.num_rows == 1000


def test_a_door_query_is_audited_before_its_first_byte_and_streams_arrow(gateway: Server) -> None:
    with ask(gateway, {"sql": QUERY}) as sock:
        answer, ahead = answer_line(sock)
        decisions = [r for r in read(gateway.state) if r.get("request_id") == answer["request"]]
        assert [r["event"] for r in decisions] == ["decision"] and decisions[0]["query"] == QUERY
        stream = ahead + b"".join(iter(lambda: sock.recv(1 << 20), b""))
    source = pa.BufferReader(stream)
    reader = pa.ipc.open_stream(source)
    assert reader.read_all().num_rows == ROWS
    status = json.loads(stream[source.tell():])
    assert status["rows"] == ROWS and not status["truncated"]
    eventually(lambda: results(gateway, answer["request"]), "the result record")
    assert results(gateway, answer["request"])[0]["status"] == "completed"


def test_a_refusal_at_the_door_is_the_embedded_error_and_its_explanation(gateway: Server) -> None:
    error = error_of(ask(gateway, {"sql": "select * from secrets"}))
    with saferoom.connect(gateway.policy, user="alice") as embedded, pytest.raises(saferoom.SaferoomError) as near:
        embedded.query("select * from secrets")
    assert error["type"] == type(near.value).__name__ and error["message"] == str(near.value)


@pytest.mark.parametrize(("request_line", "kind", "says"), [
    (b"not json\n", "UsageError", "one JSON line"),
    (b'{"role": "analyst"}\n', "UsageError", "one JSON line"),
    (b'{"sql": ["select 1"]}\n', "UsageError", "one JSON line"),
    (b'{"sql": "select 1", "authorization": 7}\n', "UsageError", "authorization"),
    (b'{"sql": "select 1", "authorization": "Bearer sr_forged"}\n', "AuthError", "token"),
    (b'{"sql": "select 1"}\n', "AuthError", "token"),
])
def test_a_hostile_request_at_the_door_is_refused_with_an_explanation(gateway: Server, request_line: bytes, kind: str,
                                                                      says: str) -> None:
    error = error_of(knock(gateway, DOOR + request_line))
    assert error["type"] == kind and says in str(error["message"]) and "sr_forged" not in str(error["message"])


def test_a_request_past_the_size_limit_is_refused_unread(gateway: Server) -> None:
    """The door holds at most the HTTP route's body limit of a request in memory."""
    limit = body_limit(MAX_SQL_BYTES)  # the gateway's (started without --max-sql-bytes)
    sock = knock(gateway, DOOR + b'{"sql": "')
    with sock:
        try:
            sock.sendall(b"x" * (limit + (1 << 20)))  # no line end: the door stops reading at its limit
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused while it was still sending
        answer, _ = answer_line(sock)
    assert answer["error"]["type"] == "TooLarge"  # type: ignore[index]


def test_a_preamble_in_pieces_still_opens_the_door(gateway: Server) -> None:
    sock = knock(gateway, DOOR[:3])
    with sock:
        sock.sendall(DOOR[3:] + json.dumps({"authorization": f"Bearer {gateway.token('alice')}", "sql": "select 1 as one"}).encode())
        sock.sendall(b"\n")
        answer, ahead = answer_line(sock)
        stream = ahead + b"".join(iter(lambda: sock.recv(1 << 16), b""))
    assert "request" in answer and pa.ipc.open_stream(stream).read_all().column("one").to_pylist() == [1]


def test_a_client_leaving_before_the_first_byte_cancels_its_query_and_frees_its_slot(gateway: Server) -> None:
    """max_concurrent is 1: a query that never ends by itself holds the slot until its hang-up is seen."""
    with ask(gateway, {"sql": SLOW}):
        eventually(lambda: decided(gateway, SLOW), "the slow query's decision record")  # decided and running
    request = decided(gateway, SLOW)[-1]
    assert gateway.socket is not None
    with RemoteSession(None, gateway.token("alice"), socket=gateway.socket) as remote:
        eventually(lambda: _runs(remote), "the abandoned query's slot to come back")
    eventually(lambda: results(gateway, request), "the abandoned query's result record")
    assert results(gateway, request)[0]["status"] == "cancelled"


def decided(server: Server, sql: str) -> list[object]:
    return [r["request_id"] for r in read(server.state) if r.get("event") == "decision" and r.get("query") == sql]


def _runs(remote: RemoteSession) -> bool:
    try:
        return remote.query("select 1 as one").to_arrow().num_rows == 1
    except saferoom.SaferoomError as exc:  # the slot is still taken
        assert "concurrent" in str(exc) or "at a time" in str(exc), exc
        return False


class _CutDoor(socketserver.BaseRequestHandler):
    """A gateway whose door sends a result's batches and then closes, without the status line."""

    def handle(self) -> None:
        first = self.request.recv(1 << 16)
        if first.startswith(DOOR):
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, pa.schema([("one", pa.int64())])) as writer:
                writer.write_batch(pa.record_batch([pa.array([1, 2, 3])], names=["one"]))
            self.request.sendall(b'{"request": "cut"}\n' + sink.getvalue().to_pybytes())
            return
        body = json.dumps({"user": "alice", "role": "analyst", "door": True}).encode()
        self.request.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                             + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)


def test_a_door_stream_without_its_status_line_is_an_error_not_a_short_result(tmp_path: Path) -> None:
    with impostor(tmp_path / "cut.sock", _CutDoor) as path, RemoteSession(None, "sr_x", socket=path) as remote, \
            pytest.raises(saferoom.EngineError, match="before the end"):
        remote.query("select 1").to_arrow()


def test_connections_that_never_send_their_request_hold_no_query_and_stop_no_one(gateway: Server) -> None:
    """A flood of half-open requests at the door: each holds a socket, not a thread or a query slot."""
    stalled = [knock(gateway, DOOR + b'{"sql": "select 1"') for _ in range(100)]
    try:
        assert gateway.socket is not None
        with RemoteSession(None, gateway.token("alice"), socket=gateway.socket) as remote:
            assert remote.query("select 42 as n").to_arrow().column("n").to_pylist() == [42]
    finally:
        for sock in stalled:
            sock.close()


def test_a_client_that_stops_reading_has_its_query_ended_and_its_slot_freed(tmp_path: Path) -> None:
    """Through the door too: a client that keeps its connection but takes no byte for the query's timeout has
    its query ended and its slot given back (without that, it would hold both, and a worker, for ever)."""
    server = socket_gateway(tmp_path, "{max_concurrent: 1, timeout_seconds: 2}")
    try:
        sock = ask(server, {"sql": QUERY})
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 12)
        answer, _ = answer_line(sock)  # the query runs; from here on nothing is read
        assert server.socket is not None

        def slot_free() -> bool:
            with RemoteSession(None, server.token("alice"), socket=server.socket) as remote:
                try:
                    return remote.query("select count(*) as n from events").to_arrow().num_rows == 1
                except SaferoomError:
                    return False  # still over the user's one slot
        eventually(slot_free, "the stalled query's slot given back")
        eventually(lambda: results(server, answer["request"]), "the stalled query's result record")
        assert results(server, answer["request"])[0]["status"] in {"cancelled", "timed_out"}
        sock.close()
    finally:
        server.stop()


def _sockets(pid: int) -> set[str]:
    """The sockets process ``pid`` holds, by inode."""
    held = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if (target := os.readlink(fd)).startswith("socket:"):
                held.add(target)
    return held


def _written(pid: int) -> int:
    """Bytes process ``pid`` (all its threads) has written with write and send calls so far."""
    return int(dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())["wchar"])


def _read_door(sock: socket.socket) -> tuple[dict[str, object], bytes]:
    """The answer line, and every byte after it until the door closes the connection."""
    answer, ahead = answer_line(sock)
    return answer, ahead + b"".join(iter(lambda: sock.recv(1 << 20), b""))


def test_the_worker_writes_the_result_itself_and_leaves_the_socket_to_the_gateway(gateway: Server) -> None:
    """The gateway copies none of the result's bytes: its process writes the answer line and the status line only
    (its write count says so), the query's worker writes the rest, and holds no copy of the socket afterwards (the
    client sees the end of the stream, and the warm worker's sockets are what they were)."""
    assert gateway.process is not None
    pid = gateway.process.pid
    with RemoteSession(None, gateway.token("alice"), socket=gateway.socket) as remote:
        assert remote.query("select 1 as one").to_arrow().num_rows == 1  # a warm worker, kept for the next query
    before = {worker: _sockets(worker) for worker in descendants(pid)}
    written = _written(pid)
    with ask(gateway, {"sql": QUERY}) as sock:
        answer, stream = _read_door(sock)
    copied = _written(pid) - written
    source = pa.BufferReader(stream)
    assert pa.ipc.open_stream(source).read_all().num_rows == ROWS
    assert json.loads(stream[source.tell():])["rows"] == ROWS
    assert len(stream) > 50 << 20 and copied < 1 << 20, copied  # tens of MB left; the gateway wrote a few lines
    for worker, sockets in before.items():
        with contextlib.suppress(FileNotFoundError):  # a spare worker stopped meanwhile
            assert _sockets(worker) <= sockets, "a worker kept a copy of the client's socket"
    eventually(lambda: results(gateway, answer["request"]), "the result record")
    assert results(gateway, answer["request"])[0]["bytes"] == len(stream)  # the IPC stream and the status line


def test_the_worker_cuts_at_max_rows_and_the_status_line_and_record_say_so(tmp_path: Path, transport: str) -> None:
    server = socket_gateway(tmp_path, "{max_rows: 100000}")
    try:
        with ask(server, {"sql": QUERY}) as sock:
            answer, stream = _read_door(sock)
        source = pa.BufferReader(stream)
        table = pa.ipc.open_stream(source).read_all()
        status = json.loads(stream[source.tell():])
        with saferoom.connect(server.policy, user="alice") as embedded:
            near = embedded.query(QUERY)
            expected = near.to_arrow()
        assert table.num_rows == 100_000 and table.equals(expected)
        assert status["truncated"] and status["rows"] == 100_000 and status["notices"] == list(near.notices)
        eventually(lambda: results(server, answer["request"]), "the result record")
        record = results(server, answer["request"])[0]
        assert (record["rows"], record["truncated"], record["bytes"], record["status"]) == (100_000, True, len(stream), "completed")
        assert server.socket is not None
        with RemoteSession(None, server.token("alice"), socket=server.socket) as remote:  # the client's view
            result = remote.query(QUERY)
            assert result.to_arrow().num_rows == 100_000 and result.truncated
    finally:
        server.stop()


def test_a_client_hanging_up_mid_stream_cancels_the_query_the_worker_writes(gateway: Server) -> None:
    with ask(gateway, {"sql": QUERY}) as sock:
        answer, _ = answer_line(sock)
        assert len(sock.recv(1 << 20)) > 0  # the stream has begun
    eventually(lambda: results(gateway, answer["request"]), "the abandoned query's result record")
    assert results(gateway, answer["request"])[0]["status"] == "cancelled"
    assert gateway.socket is not None
    with RemoteSession(None, gateway.token("alice"), socket=gateway.socket) as remote:
        eventually(lambda: _runs(remote), "the abandoned query's slot to come back")


def test_a_query_failing_as_the_worker_writes_ends_with_its_error_and_the_next_runs(gateway: Server, transport: str) -> None:
    failing = "select id, cast(case when id < 2500000 then '1' else 'x' end as integer) as n from events"
    assert gateway.socket is not None
    with RemoteSession(None, gateway.token("alice"), socket=gateway.socket) as remote:
        with pytest.raises(saferoom.EngineError, match="Conversion"):
            remote.query(failing).to_arrow()
        assert remote.query("select 1 as one").to_arrow().num_rows == 1
    request = decided(gateway, failing)[-1]
    eventually(lambda: results(gateway, request), "the failed query's result record")
    assert results(gateway, request)[0]["status"] == "failed"


def test_a_noised_result_is_relayed_through_the_door_with_its_noise(tmp_path: Path) -> None:
    """Noise is added in the gateway, so such a result never goes straight from the worker to the socket."""
    (tmp_path / "privacy").mkdir()
    folder = small_groups(tmp_path / "privacy")
    server = Server(folder / "saferoom.yaml", tmp_path / "state", free_port(), tmp_path / "server.log",
                    socket=tmp_path / "gateway.sock").start()
    try:
        assert server.socket is not None
        with RemoteSession(None, server.token("dana"), socket=server.socket) as remote:
            assert remote._door
            first, second = (remote.query(SUMS).to_pylist() for _ in range(2))
            notices = remote.query(SUMS).notices
    finally:
        server.stop()
    answers = [{row["region"]: row["total"] for row in rows} for rows in (first, second)]
    assert set(answers[0]) == set(answers[1]) == set(EXACT) and answers[0] != answers[1] and EXACT not in answers
    assert any("differential privacy" in n for n in notices)


def test_a_query_past_its_timeout_ends_with_the_timeout_explained(tmp_path: Path, transport: str) -> None:
    """Stopped in its worker (which, having used a short query's processor time, runs as long work by then): the
    stream still ends whole, its status line saying why, and the record says timed out."""
    server = socket_gateway(tmp_path, "{timeout_seconds: 1}")
    try:
        assert server.socket is not None
        with RemoteSession(None, server.token("alice"), socket=server.socket) as remote:
            result = remote.query(ENDLESS)
            with pytest.raises(saferoom.LimitExceeded, match="timeout_seconds"):
                for _ in result.stream():  # read and dropped: the rows never end by themselves
                    pass
        request = decided(server, ENDLESS)[-1]
        eventually(lambda: results(server, request), "the stopped query's result record")
        assert results(server, request)[0]["status"] == "timed_out"
    finally:
        server.stop()


def test_bytes_after_the_request_are_dropped_not_obeyed_while_the_worker_writes(gateway: Server) -> None:
    """The worker only writes to the socket; what a client sends past its request (another request, say) is the
    gateway's to read and drop: the one query is answered, whole, and the connection then closed."""
    second = DOOR + json.dumps({"authorization": f"Bearer {gateway.token('alice')}", "sql": "select 2 as two"}).encode()
    with ask(gateway, {"sql": f"{QUERY} limit 100000"}) as sock:
        sock.sendall((second + b"\n") * 64)
        answer, stream = _read_door(sock)
    source = pa.BufferReader(stream)
    assert pa.ipc.open_stream(source).read_all().column_names == ["id", "x", "note"]
    assert json.loads(stream[source.tell():])["rows"] == 100_000  # then the end: no second answer
    assert decided(gateway, "select 2 as two") == []


def test_a_dictionary_column_streams_whole_from_the_worker(tmp_path: Path, transport: str) -> None:
    """An ENUM arrives as Arrow dictionaries over several batches: the worker's writer sends each dictionary with
    the batches that use it, and the client's table is the embedded session's."""
    create = ("create type mood as enum ('sad', 'ok', 'happy'); create table t as select range as id, "
              "(['sad', 'ok', 'happy'])[range % 3 + 1]::mood as m from range(300000)")
    server = table_gateway(tmp_path, "moods", "t", create, ["alice"], socket=tmp_path / "gateway.sock")
    try:
        assert server.socket is not None
        with RemoteSession(None, server.token("alice"), socket=server.socket) as remote:
            through_door = remote.query("select * from moods.t").to_arrow()
        with saferoom.connect(server.policy, user="alice") as embedded:
            expected = embedded.query("select * from moods.t").to_arrow()
    finally:
        server.stop()
    assert pa.types.is_dictionary(through_door.schema.field("m").type) and through_door.num_rows == 300_000
    assert through_door.equals(expected)


def test_a_memory_result_is_written_by_the_worker_and_the_gateway_copies_none_of_it(gateway: Server) -> None:
    """The session asks for its result in memory files: the answer says so, the gateway's process writes a few
    lines, the result is the embedded session's, and the record's bytes are the chunks' and the status line's."""
    assert gateway.process is not None and gateway.socket is not None
    pid = gateway.process.pid
    with RemoteSession(None, gateway.token("alice"), socket=gateway.socket) as remote:
        assert remote.query("select 1 as one").to_arrow().num_rows == 1  # a warm worker
        written = _written(pid)
        result = remote.query(QUERY)
        table = result.to_arrow()
        copied = _written(pid) - written
        request = result.request_id
    with saferoom.connect(gateway.policy, user="alice") as embedded:
        assert table.equals(embedded.query(QUERY).to_arrow())
    assert table.nbytes > 50 << 20 and copied < 1 << 20, copied
    eventually(lambda: results(gateway, request), "the result record")
    record = results(gateway, request)[0]
    assert record["rows"] == ROWS and record["status"] == "completed" and record["bytes"] > table.nbytes


def _memory_door(server: Server, sql: str) -> tuple[socket.socket, dict[str, object]]:
    sock = ask(server, {"sql": sql, "memory": 1})
    answer, ahead = answer_line(sock)
    assert answer.get("memory") == 1 and ahead == b"", answer
    return sock, answer


def test_a_memory_client_that_leaves_while_its_query_runs_has_it_cancelled(gateway: Server) -> None:
    """The gateway no longer reads the socket once it hands it over; the worker watches it: a client gone while
    the query has yet to make a row has its query stopped there, not at its timeout."""
    sock, answer = _memory_door(gateway, NOTHING)
    socket.send_fds(sock, [chunks.MEMFD], [(files := chunks.MemoryFiles()).take(chunks.FIRST)[0]])
    sock.close()
    files.close()
    eventually(lambda: results(gateway, answer["request"]), "the abandoned query's result record")
    assert results(gateway, answer["request"])[0]["status"] == "cancelled"
    assert gateway.socket is not None
    with RemoteSession(None, gateway.token("alice"), socket=gateway.socket) as remote:
        eventually(lambda: _runs(remote), "the abandoned query's slot to come back")


@pytest.mark.parametrize("hostile", ["a regular file", "junk bytes", "nothing"])
def test_a_memory_client_that_breaks_the_protocol_ends_its_own_query_only(tmp_path: Path, hostile: str) -> None:
    """A file the worker may not map, bytes that are no file, or no file at all for the stall limit (the role's
    timeout, here): the query ends as left by its client, its slot comes back, and the gateway serves the next."""
    server = socket_gateway(tmp_path, "{max_concurrent: 1, timeout_seconds: 3}")
    try:
        sock, answer = _memory_door(server, QUERY)
        if hostile == "a regular file":
            (tmp_path / "f").write_bytes(b"\0" * (1 << 20))
            with open(tmp_path / "f", "rb+") as file:
                socket.send_fds(sock, [chunks.MEMFD], [file.fileno()])
        elif hostile == "junk bytes":
            sock.sendall(b"GET / HTTP/1.1\r\n\r\n")
        eventually(lambda: results(server, answer["request"]), "the broken query's result record")
        record = results(server, answer["request"])[0]
        assert record["status"] in {"cancelled", "timed_out"} and record["rows"] == 0, record
        try:  # closed, no byte of the result sent (a reset: the gateway closed with the client's bytes unread)
            assert sock.recv(1 << 16) == b""
        except ConnectionResetError:
            pass
        sock.close()
        assert server.socket is not None
        with RemoteSession(None, server.token("alice"), socket=server.socket) as remote:
            eventually(lambda: _runs(remote), "the broken query's slot to come back")
    finally:
        server.stop()
