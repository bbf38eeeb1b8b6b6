"""The result door's memory files (saferoom/chunks.py): the worker's writer and the client's reader over a real
socket pair, each side's checks against a hostile other side, and the session's files kept and given back."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from saferoom import chunks

STALL = 30.0  # long enough for a busy machine; every test that waits on it ends sooner by the other side's move


def table(rows: int, width: int = 8) -> pa.Table:
    return pa.table({"id": pa.array(range(rows), pa.int64()),
                     "s": pa.array([f"{i:0{width}d}" for i in range(rows)], pa.string())})


class Worker:
    """The worker's side of the protocol on a thread: the batches written, then the closing frame; what it raised."""

    def __init__(self, sock: socket.socket, batches: list[pa.RecordBatch], schema: pa.Schema) -> None:
        self.error: BaseException | None = None
        self.writer = chunks.ChunkWriter(schema, chunks.receiver(sock, STALL), chunks.framer(sock, STALL))
        self._thread = threading.Thread(target=self._run, args=(batches,))
        self._thread.start()

    def _run(self, batches: list[pa.RecordBatch]) -> None:
        try:
            for batch in batches:
                self.writer.write_batch(batch)
            self.writer.close()
        except (OSError, chunks.Broken) as exc:  # told to the test
            self.error = exc
            self.writer.abandon()

    def join(self) -> None:
        self._thread.join(STALL * 2)
        assert not self._thread.is_alive()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    client, worker = socket.socketpair()
    with client, worker:
        yield client, worker


def roundtrip(pair: tuple[socket.socket, socket.socket], source: pa.Table, batch_rows: int,
              files: chunks.MemoryFiles | None = None) -> tuple[pa.Table, Worker]:
    client, theirs = pair
    worker = Worker(theirs, source.to_batches(batch_rows), source.schema)
    reader = chunks.ChunkReader(client, files or chunks.MemoryFiles(), b"")
    got = pa.Table.from_batches(list(reader), schema=reader.schema)
    reader.close()
    worker.join()
    return got, worker


@pytest.mark.parametrize(("rows", "batch_rows", "width"), [(0, 10, 8), (1, 10, 8), (100_000, 65536, 8),
                                                             (300_000, 300_000, 64), (2_000, 7, 8)])
def test_a_result_arrives_whole_in_chunks_of_any_shape(pair: tuple[socket.socket, socket.socket], rows: int,
                                                       batch_rows: int, width: int) -> None:
    """An empty result still has its schema; a batch larger than any chunk is split where the chunks end; many
    small batches share a chunk."""
    source = table(rows, width)
    got, worker = roundtrip(pair, source, batch_rows)
    assert worker.error is None and got.equals(source)
    assert worker.writer.bytes > 0


def test_a_row_larger_than_the_memory_files_given_is_asked_for_and_arrives(pair: tuple[socket.socket, socket.socket]) -> None:
    """One value of 40 MB: the worker asks for a larger file (the client's grow to 16 MB), and skips the smaller
    ones already given, as the client does."""
    source = pa.table({"id": [1, 2, 3], "blob": pa.array([b"a", b"x" * (40 << 20), b"c"], pa.binary())})
    got, worker = roundtrip(pair, source, 1)
    assert worker.error is None and got.equals(source)


def test_a_dictionary_column_arrives_with_each_chunk_its_dictionary(pair: tuple[socket.socket, socket.socket]) -> None:
    words = pa.array(["sad", "ok", "happy"] * 200_000).dictionary_encode()
    source = pa.table({"m": words, "id": pa.array(range(len(words)), pa.int64())})
    got, worker = roundtrip(pair, source, 65536)
    assert worker.error is None and got.equals(source)
    assert pa.types.is_dictionary(got.schema.field("m").type)


def test_a_session_keeps_its_files_for_the_next_result_and_closes_what_a_worker_may_still_write(
        monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[int] = []
    memfd = chunks._memfd
    monkeypatch.setattr(chunks, "_memfd", lambda size: made.append(size) or memfd(size))
    files = chunks.MemoryFiles()
    source = table(200_000)
    for _ in range(2):
        client, worker = socket.socketpair()
        with client, worker:
            got, _ = roundtrip((client, worker), source, 65536, files)
            assert got.equals(source)
        del got
    first = len(made)
    client, worker = socket.socketpair()
    with client, worker:
        roundtrip((client, worker), source, 65536, files)  # its batches dropped at once: every file spare again
    assert len(made) == first, "a third result of the same size made new memory files"
    # a result abandoned after its first chunk: the files given ahead may still be written, so they are closed
    client, theirs = socket.socketpair()
    with client, theirs:
        worker = Worker(theirs, table(1_000_000).to_batches(65536), source.schema)
        reader = chunks.ChunkReader(client, files, b"")
        spare = {fd for fd, _ in files._spare}
        reader.close()
        assert {fd for fd, _ in files._spare} <= spare, "a file given to an unfinished result came back as spare"
        client.shutdown(socket.SHUT_RDWR)
        worker.join()
    assert isinstance(worker.error, OSError | chunks.Broken)
    del reader
    held = {fd: os.fstat(fd).st_ino for fd, *_ in [*files._spare, *files._lent]}
    assert held
    files.close()
    for fd, inode in held.items():  # closed: the number is free, or another file's by now
        with contextlib.suppress(OSError):
            assert os.fstat(fd).st_ino != inode, "the session's files outlived it"


# What the worker takes: hostile clients.


def _send(sock: socket.socket, fds: list[int], message: bytes = chunks.MEMFD) -> None:
    socket.send_fds(sock, [message], fds)


def _sealed(size: int, seals: int = chunks.SEALS) -> int:
    fd = os.memfd_create("hostile", os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    if size <= chunks.LARGEST:  # its pages taken, as a client must (the one too large is refused by its size)
        os.posix_fallocate(fd, 0, size)
    if seals:
        fcntl.fcntl(fd, chunks.F_ADD_SEALS, seals)
    return fd


def _file(tmp_path: Path) -> int:
    path = tmp_path / "file"
    path.write_bytes(b"\0" * (1 << 20))
    return os.open(path, os.O_RDWR)


HOSTILE: dict[str, Callable[[Path], tuple[list[int], bytes]]] = {
    "a regular file": lambda tmp: ([_file(tmp)], chunks.MEMFD),
    "a memory file that may shrink": lambda tmp: ([_sealed(1 << 20, 0)], chunks.MEMFD),
    "a memory file sealed against writing": lambda tmp: ([_sealed(1 << 20, chunks.SEALS | fcntl.F_SEAL_WRITE)], chunks.MEMFD),
    "a memory file too large": lambda tmp: ([_sealed(chunks.LARGEST + 4096)], chunks.MEMFD),
    "a memory file too small": lambda tmp: ([_sealed(4096)], chunks.MEMFD),
    "two files in one message": lambda tmp: ([_sealed(1 << 20), _sealed(1 << 20)], chunks.MEMFD),
    "a byte with no file": lambda tmp: ([], chunks.MEMFD),
    "another byte": lambda tmp: ([_sealed(1 << 20)], b"x"),
    "a pipe": lambda tmp: ([os.pipe()[0]], chunks.MEMFD),
}


@pytest.mark.parametrize("kind", HOSTILE)
def test_the_worker_refuses_anything_but_a_sealed_memory_file(pair: tuple[socket.socket, socket.socket], tmp_path: Path,
                                                              kind: str) -> None:
    """Each is a client breaking the protocol: the worker maps nothing and ends (its query is then cancelled)."""
    client, theirs = pair
    fds, message = HOSTILE[kind](tmp_path)
    before = _fds()
    worker = Worker(theirs, table(1000).to_batches(100), table(1).schema)
    if fds:
        _send(client, fds, message)
    else:
        client.sendall(message)
    worker.join()
    for fd in fds:
        os.close(fd)
    assert isinstance(worker.error, chunks.Broken), worker.error
    assert worker.writer.bytes == 0
    assert _fds() <= before, "the worker kept a file it refused"


def _fds() -> set[str]:
    return {fd.name for fd in Path("/proc/self/fd").iterdir()}


def test_a_client_that_hangs_up_or_gives_nothing_ends_the_worker(pair: tuple[socket.socket, socket.socket]) -> None:
    client, theirs = pair
    quiet = chunks.receiver(theirs, 0.2)
    with pytest.raises(TimeoutError, match="gave no memory"):
        quiet(chunks.SMALLEST)
    client.close()
    with pytest.raises(ConnectionResetError):
        quiet(chunks.SMALLEST)


def test_the_hangup_watch_sees_a_client_leave_and_reads_nothing(pair: tuple[socket.socket, socket.socket]) -> None:
    client, theirs = pair
    left = threading.Event()
    stop = chunks.watch_hangup(theirs, left.set)
    fd = _sealed(1 << 20)
    _send(client, [fd])
    assert not left.wait(0.3)  # a file given is not a hang-up, and stays for the writer
    assert chunks.receiver(theirs, STALL)(chunks.SMALLEST) >= 0
    client.close()
    assert left.wait(STALL)
    stop()
    os.close(fd)


# What the client takes: a gateway that lies.


def _frames(sock: socket.socket, *sizes: int) -> None:
    sock.sendall(b"".join(chunks.FRAME.pack(size) for size in sizes))


@pytest.mark.parametrize(("frames", "match"), [((chunks.FIRST * 64,), "longer than its memory file"),
                                               ((-(chunks.LARGEST * 2),), "larger than a worker takes"),
                                               ((), "ended before its last chunk")])
def test_the_client_refuses_frames_its_files_cannot_hold(pair: tuple[socket.socket, socket.socket],
                                                        frames: tuple[int, ...], match: str) -> None:
    """A frame past its file's end would map pages that do not exist (SIGBUS on reading): refused before."""
    client, theirs = pair
    _frames(theirs, *frames)
    theirs.shutdown(socket.SHUT_WR)
    with pytest.raises(EOFError, match=match):
        chunks.ChunkReader(client, chunks.MemoryFiles(), b"")


def test_a_result_dropped_unread_closes_the_files_it_gave(pair: tuple[socket.socket, socket.socket]) -> None:
    """Its worker may still write into them: they are closed, never kept for the next result."""
    client, theirs = pair
    files, opened = chunks.MemoryFiles(), []
    reading = threading.Thread(target=lambda: opened.append(chunks.ChunkReader(client, files, b"")))
    reading.start()
    writer = chunks.ChunkWriter(table(1).schema, chunks.receiver(theirs, STALL), chunks.framer(theirs, STALL))
    writer.write_batch(table(10).to_batches()[0])
    writer._end_chunk()  # the first chunk framed: the reader opens; the worker takes no other file
    reading.join(STALL)
    given = [fd for fd, _ in opened[0]._given]
    assert given
    opened.clear()
    for fd in given:
        with pytest.raises(OSError):
            os.fstat(fd)
    assert not set(given) & {fd for fd, _ in files._spare}
