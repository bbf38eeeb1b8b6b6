"""Attacks on the result door's memory files (saferoom/chunks.py): a hostile analyst's files and sockets against
the worker and a real gateway, and a lying gateway against the client. Each attack asserts what must hold:
the worker refuses or survives, nothing is charged or kept that should not be, the slot and the record are
right, and a session never reads another result's bytes."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pytest

import saferoom
from saferoom import chunks
from saferoom.client import RemoteSession
from tests.gateway_helpers import Server, descendants, eventually
from tests.test_room_chunks import Worker, table
from tests.test_room_door import ENDLESS, _memory_door, _runs, results
from tests.test_room_io import QUERY, socket_gateway

PUNCH_HOLE = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE (<linux/falloc.h>)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """The client's end and the worker's, as the door's socket (a stream pair, passing descriptors)."""
    client, worker = socket.socketpair()
    with client, worker:
        yield client, worker


def _sparse(size: int) -> int:
    """A sealed memory file of ``size`` bytes with none of its pages taken (ftruncate, no fallocate)."""
    fd = os.memfd_create("hostile", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    fcntl.fcntl(fd, chunks.F_ADD_SEALS, chunks.SEALS)
    return fd


def _punch(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.fallocate(fd, PUNCH_HOLE, ctypes.c_long(0), ctypes.c_long(os.fstat(fd).st_size)) != 0:
        raise OSError(ctypes.get_errno(), "fallocate")


def _read_only(size: int) -> int:
    """A proper memory file, sent as a copy opened for reading only."""
    fd = chunks._memfd(size)
    copy = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
    os.close(fd)
    return copy


def _blocks(fd: int) -> int:
    return os.fstat(fd).st_blocks * 512


# The worker against a hostile client, over a socket pair.


def test_a_memory_file_whose_pages_the_client_never_took_is_refused(pair: tuple[socket.socket, socket.socket]) -> None:
    """Without this the client passes a sparse file and the worker's writes take its pages, charged to the worker:
    a room's analyst could hold result memory outside the room's memory limit, as much as it keeps files."""
    client, theirs = pair
    fd = _sparse(chunks.FIRST)
    worker = Worker(theirs, table(20_000).to_batches(1000), table(1).schema)
    socket.send_fds(client, [chunks.MEMFD], [fd])
    worker.join()
    assert isinstance(worker.error, chunks.Broken) and "pages" in str(worker.error), worker.error
    assert worker.writer.bytes == 0 and _blocks(fd) == 0, "the worker filled a file the client had not paid for"
    os.close(fd)


def test_a_read_only_copy_of_a_memory_file_is_refused_as_the_protocol_broken(pair: tuple[socket.socket, socket.socket]) -> None:
    """A copy opened for reading passed every seal check, then failed the worker's mapping with a permission error,
    told as a client that hung up: it is refused as what it is, before any mapping."""
    client, theirs = pair
    fd = _read_only(chunks.FIRST)
    worker = Worker(theirs, table(1000).to_batches(100), table(1).schema)
    socket.send_fds(client, [chunks.MEMFD], [fd])
    worker.join()
    os.close(fd)
    assert isinstance(worker.error, chunks.Broken) and "reading and writing" in str(worker.error), worker.error


def _meddling(sock: socket.socket, meddle: Callable[[int], None]) -> Callable[[int], int]:
    """The worker's receiver, with the client acting on each file just after the worker checked it (the race a
    client can win at will, made certain)."""
    receive = chunks.receiver(sock, 30.0)

    def received(smallest: int) -> int:
        fd = receive(smallest)
        meddle(fd)
        return fd

    return received


def test_a_file_punched_after_the_check_is_the_last_chunk_the_worker_writes(pair: tuple[socket.socket, socket.socket]) -> None:
    """Holes punched once the worker holds the file: its writes put pages back (charged to it), so it looks again as
    the chunk ends and stops there; the client gets no frame for it, and no second file is filled. The rows the
    writer counts (the result record's, for a client that left) are those of chunks framed: none."""
    client, theirs = pair
    given = [chunks._memfd(chunks.FIRST) for _ in range(3)]
    for fd in given:
        socket.send_fds(client, [chunks.MEMFD], [fd])
    writer = chunks.ChunkWriter(table(1).schema, _meddling(theirs, _punch), chunks.framer(theirs, 30.0))
    with pytest.raises(chunks.Broken, match="took pages out"):
        for batch in table(200_000).to_batches(10_000):
            writer.write_batch(batch)
        writer.close()
    writer.abandon()
    waiting = [socket.recv_fds(theirs, 1, 1)[1][0] for _ in range(2)]  # the worker took one file only
    for fd in waiting:
        os.close(fd)
    client.setblocking(False)
    with pytest.raises(BlockingIOError):
        client.recv(1)  # and sent no frame
    assert writer.bytes == writer.rows == 0 and all(_blocks(fd) == chunks.FIRST for fd in given[1:])
    for fd in given:
        os.close(fd)


FUTURE_WRITE = getattr(fcntl, "F_SEAL_FUTURE_WRITE", 16)


def test_a_seal_against_writes_added_before_the_worker_maps_ends_the_query_not_the_worker(
        pair: tuple[socket.socket, socket.socket]) -> None:
    """F_SEAL_FUTURE_WRITE between the worker's check and its mapping: the mapping is refused; the worker kept the
    file open (a client's memory pinned in a worker, one file per such query) and said the client hung up. Now
    it is closed, and the protocol is broken as the client broke it."""
    client, theirs = pair
    fd = chunks._memfd(chunks.FIRST)
    socket.send_fds(client, [chunks.MEMFD], [fd])
    writer = chunks.ChunkWriter(table(1).schema, _meddling(theirs, lambda mine: fcntl.fcntl(mine, chunks.F_ADD_SEALS, FUTURE_WRITE)),
                                chunks.framer(theirs, 30.0))
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(chunks.Broken, match="sealed"):
        writer.write_batch(table(10).to_batches()[0])
    writer.abandon()
    assert len(os.listdir("/proc/self/fd")) <= before and writer.bytes == 0  # the file it took is closed again
    os.close(fd)


def test_a_seal_against_writes_added_after_the_worker_mapped_the_file_harms_nothing() -> None:
    """F_SEAL_FUTURE_WRITE once the file is mapped: the worker's mapping stays writable (no SIGBUS, no fault), and
    the chunk is whole."""
    fd = chunks._memfd(chunks.FIRST)
    source = table(10_000)
    chunk = chunks._Chunk(os.dup(fd), source.schema)
    fcntl.fcntl(fd, chunks.F_ADD_SEALS, FUTURE_WRITE)
    for batch in source.to_batches(1000):
        assert chunk.put(batch)
    size = chunk.finish()
    with open(fd, "rb") as file:
        assert pa.ipc.open_stream(file.read(size)).read_all().equals(source)


def test_a_file_of_exactly_the_smallest_size_carries_a_result(pair: tuple[socket.socket, socket.socket]) -> None:
    """The lower bound is a file the worker writes into, not one it refuses or overruns."""
    client, theirs = pair
    source = table(5000)
    worker = Worker(theirs, source.to_batches(100), source.schema)
    fds = [chunks._memfd(chunks.SMALLEST) for _ in range(200)]
    for fd in fds:
        socket.send_fds(client, [chunks.MEMFD], [fd])
    got, sizes, buffer = [], [], b""
    while True:
        while len(buffer) < 8:
            buffer += client.recv(8)
        (size,), buffer = chunks.FRAME.unpack_from(buffer), buffer[8:]
        if size == 0:
            break
        assert 0 < size <= chunks.SMALLEST, size  # never past the file's end, never an ask: every batch fits
        sizes.append(size)
    worker.join()
    assert worker.error is None
    for fd, size in zip(fds, sizes, strict=False):
        with open(os.dup(fd), "rb") as file:
            got += pa.ipc.open_stream(file.read(size)).read_all().to_batches()
    assert pa.Table.from_batches(got, schema=source.schema).equals(source)
    for fd in fds:
        os.close(fd)


def test_a_schema_larger_than_the_file_given_ends_the_query_with_its_file_closed_once(
        pair: tuple[socket.socket, socket.socket]) -> None:
    """A file of the smallest size, a schema that does not fit in it: Arrow's "out of bounds" (an OSError) was
    taken by the worker for a client that hung up, with the file left open; then, once the chunk ends empty
    (Broken), the writer's cleanup closed its descriptor a second time (EBADF out of the worker's ``finally``,
    or, with another thread between, some other file of the worker's closed)."""
    client, theirs = pair
    schema = pa.schema([(f"a_rather_long_column_name_{i:06d}", pa.int64()) for i in range(3000)])
    assert len(schema.serialize()) > chunks.SMALLEST
    fd = chunks._memfd(chunks.SMALLEST)
    socket.send_fds(client, [chunks.MEMFD], [fd])
    writer = chunks.ChunkWriter(schema, chunks.receiver(theirs, 30.0), chunks.framer(theirs, 30.0))
    with pytest.raises(chunks.Broken, match="too small"):
        writer.close()
    writer.abandon()  # nothing left to close
    os.close(fd)


# The client against a lying gateway.


def _frames(sock: socket.socket, *sizes: int) -> None:
    sock.sendall(b"".join(chunks.FRAME.pack(size) for size in sizes))


def test_a_gateway_asking_again_and_again_for_big_files_is_refused_before_the_client_makes_them(
        pair: tuple[socket.socket, socket.socket]) -> None:
    """A worker asks for twice the size each time; a gateway that asks for the same large size again would have the
    client take (fallocate) a file of that size per frame, without end."""
    client, theirs = pair
    asked = 2 * chunks.FIRST
    _frames(theirs, *[-asked] * 20)
    theirs.shutdown(socket.SHUT_WR)
    files = chunks.MemoryFiles()
    with pytest.raises(EOFError, match="asked again"):
        chunks.ChunkReader(client, files, b"")
    files.close()
    received = []
    theirs.setblocking(False)
    while True:
        try:
            _, fds, _, _ = socket.recv_fds(theirs, 1, 4)
        except BlockingIOError:
            break
        received += fds
    for fd in received:
        os.close(fd)
    assert len(received) == chunks.AHEAD + 1, len(received)  # the files given ahead, and one for the one ask


# A hostile analyst against a real gateway.


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = socket_gateway(tmp_path_factory.mktemp("redteam"), "{max_concurrent: 1, timeout_seconds: 20}")
    yield server
    server.stop()


def _eventfd() -> int:
    return os.eventfd(0)


def _socket_fd() -> int:
    return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).detach()


HOSTILE: dict[str, Callable[[], list[int]]] = {
    "a sparse memory file": lambda: [_sparse(chunks.FIRST)],
    "a read-only copy of a memory file": lambda: [_read_only(chunks.FIRST)],
    "an eventfd": lambda: [_eventfd()],
    "a socket": lambda: [_socket_fd()],
    "/dev/zero": lambda: [os.open("/dev/zero", os.O_RDWR)],
    "a directory opened O_PATH": lambda: [os.open("/", os.O_PATH)],
    "three memory files in one message": lambda: [chunks._memfd(chunks.FIRST) for _ in range(3)],
}


def _gateway_counts(server: Server) -> tuple[int, int]:
    """The gateway's threads, and its processes (fork server, workers). Its open files are not compared: each
    worker stopped leaves its pipes and pidfd open until Python's cycle collector frees it (see the report)."""
    assert server.process is not None
    pid = server.process.pid
    return len(os.listdir(f"/proc/{pid}/task")), len(descendants(pid))


def test_hostile_files_end_their_own_query_only_and_leave_nothing_behind(gateway: Server) -> None:
    """Every kind of descriptor a client may pass that is not a memory file the worker may fill: the query ends
    as the client's (cancelled, no row recorded), its slot comes back, and the gateway runs no more threads or
    processes than before."""
    assert gateway.socket is not None
    with RemoteSession(None, gateway.token("alice"), socket=gateway.socket) as remote:
        assert _runs(remote)  # a warm worker
    before = _gateway_counts(gateway)
    for kind, make in HOSTILE.items():
        sock, answer = _memory_door(gateway, QUERY)
        fds = make()
        socket.send_fds(sock, [chunks.MEMFD], fds)
        for fd in fds:
            os.close(fd)
        request = answer["request"]
        eventually(lambda request=request: results(gateway, request), f"the record of the query given {kind}")
        record = results(gateway, request)[0]
        assert record["status"] == "cancelled" and record["rows"] == 0, (kind, record)
        sock.close()
        with RemoteSession(None, gateway.token("alice"), socket=gateway.socket) as remote:
            eventually(lambda: _runs(remote), f"the slot of the query given {kind}")

    def settled() -> bool:
        now = _gateway_counts(gateway)
        return now[0] <= before[0] and now[1] <= before[1] + 1  # a warm worker started in place of one stopped
    eventually(settled, "the gateway's threads and processes as they were")


def test_a_client_that_half_closes_after_giving_its_files_has_its_query_cancelled_and_recorded(gateway: Server) -> None:
    """SHUT_WR once its files are given: the worker takes it for a hang-up (the client can give no more), the
    query is cancelled, its record says so, and the slot comes back."""
    sock, answer = _memory_door(gateway, ENDLESS)
    files = chunks.MemoryFiles()
    for _ in range(chunks.AHEAD):
        socket.send_fds(sock, [chunks.MEMFD], [files.take(chunks.FIRST)[0]])
    sock.shutdown(socket.SHUT_WR)
    eventually(lambda: results(gateway, answer["request"]), "the half-closed query's record")
    assert results(gateway, answer["request"])[0]["status"] == "cancelled"
    sock.close()
    files.close()
    assert gateway.socket is not None
    with RemoteSession(None, gateway.token("alice"), socket=gateway.socket) as remote:
        eventually(lambda: _runs(remote), "the half-closed query's slot")


def test_a_result_abandoned_mid_way_lends_nothing_to_the_next_result_of_the_session(gateway: Server) -> None:
    """A session's files are reused: the result after one left while its worker still wrote is exactly its own
    (no stale chunk, no bytes written late by the first worker), and its record says the right rows."""
    assert gateway.socket is not None
    with RemoteSession(None, gateway.token("alice"), socket=gateway.socket) as remote, \
            saferoom.connect(gateway.policy, user="alice") as embedded:
        for _ in range(3):
            abandoned = remote.query(ENDLESS)
            next(abandoned.batches())
            abandoned.close()
            eventually(lambda: _runs(remote), "the abandoned query's slot")
            result = remote.query(f"{QUERY} order by id")
            got = result.to_arrow()
            assert got.equals(embedded.query(f"{QUERY} order by id").to_arrow())
            request = result.request_id
            eventually(lambda request=request: results(gateway, request), "the result record")
            assert results(gateway, request)[0]["rows"] == got.num_rows


def test_a_sparse_file_through_the_gateway_is_never_filled_by_the_worker(gateway: Server) -> None:
    """The room's memory limit holds: the pages of a result are the client's, taken by it, or the query ends."""
    sock, answer = _memory_door(gateway, QUERY)
    fd = _sparse(chunks.BIGGEST)
    socket.send_fds(sock, [chunks.MEMFD], [fd])
    eventually(lambda: results(gateway, answer["request"]), "the sparse file's query record")
    assert _blocks(fd) == 0 and results(gateway, answer["request"])[0]["status"] == "cancelled"
    os.close(fd)
    sock.close()


def _holding(server: Server, name: str) -> list[str]:
    """The files named ``name`` that the gateway or any of its processes holds open."""
    assert server.process is not None
    held = []
    for pid in [server.process.pid, *descendants(server.process.pid)]:
        for fd in Path(f"/proc/{pid}/fd").glob("*") if Path(f"/proc/{pid}").exists() else []:
            with contextlib.suppress(OSError):
                if name in os.readlink(fd):
                    held.append(f"{pid}/{fd.name}")
    return held


def test_a_flood_of_files_given_ahead_is_taken_as_needed_and_none_is_kept(gateway: Server) -> None:
    """Hundreds of memory files sent at once: the worker takes what the result needs, the result completes with
    its rows recorded, and once the connection closes neither the gateway nor a worker holds one of them."""
    sock, answer = _memory_door(gateway, f"{QUERY} order by id limit 100000")
    fds = [chunks._memfd(chunks.SMALLEST) for _ in range(300)]
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the result may be over before all are sent
        for fd in fds:
            socket.send_fds(sock, [chunks.MEMFD], [fd])
    for fd in fds:
        os.close(fd)
    received = b""
    with contextlib.suppress(ConnectionResetError):  # the gateway closes with the files not taken unread: a reset
        while got := sock.recv(1 << 16):
            received += got
    sock.close()
    assert received.endswith(b"}\n") and b'"rows": 100000' in received, received[-200:]
    request = answer["request"]
    eventually(lambda: results(gateway, request), "the flooded query's record")
    record = results(gateway, request)[0]
    assert record["status"] == "completed" and record["rows"] == 100_000, record
    eventually(lambda: not _holding(gateway, "memfd:saferoom-result"), "the gateway and its workers holding none of the files")
