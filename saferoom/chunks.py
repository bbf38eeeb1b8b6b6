"""A result in shared memory: the result door's chunks, written by the query's worker into memory the client gave.

Through the result door's socket (saferoom/server/door.py), a client on the same host may ask for its result in
memory files instead of a byte stream. No byte of the result then crosses the socket: the client makes memory
files (``memfd_create``) and passes them over the socket (``SCM_RIGHTS``); the query's worker maps each one and
writes Arrow IPC straight into it; the client maps the same pages and reads its batches where they lie. Each
chunk is a whole Arrow IPC stream of its own (its schema, then batches), so every chunk opens alone.

    client:  MEMFD with one memory file, a few times (a chunk it is ready to read), then one more per chunk read
    worker:  a frame of 8 bytes (little-endian, signed) per chunk:
               n > 0   the oldest memory file given holds a stream of n bytes
               -m      a memory file of at least m bytes, please: a batch's single row does not fit in less
                       (files smaller than the largest size asked for are skipped, on both sides)
               0       the result is over; the gateway's status line follows, as on the stream

Why memory the client makes, and not the worker: its pages are the client's (``fallocate`` by the client
charges them to the client's cgroup, and its mapping counts towards the client's address-space limit), and
the client decides how much may wait unread: the worker writes only into files it was given, so it can never
hold more of a result than the client let it. A client that gives nothing for the stall limit has left.

The worker trusts nothing it is given: a file must be a sealed memory file (``F_SEAL_SHRINK``, so that it
cannot shrink under the worker's mapping and kill it with SIGBUS), open for writing, of a size between
:data:`SMALLEST` and :data:`LARGEST`, and with all its pages taken (a hole the worker fills is a page charged
to the worker); anything else ends the query as a client that broke the protocol. A client may still punch
holes in a file once the worker has it: the chunk being written is then its last (the worker looks again
when it ends), so what a client can make the worker hold for it is one chunk per query.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import select
import socket
import stat
import struct
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa

from saferoom.files import send_within

MEMFD = b"m"  # the one byte each memory file travels with
FRAME = struct.Struct("<q")
SMALLEST, LARGEST = 1 << 16, 1 << 30  # the sizes of memory file a worker takes
FIRST, BIGGEST = 1 << 20, 16 << 20  # a client's chunks start small (a small result costs little) and grow to this
AHEAD = 3  # memory files a client keeps given and unwritten: one being written, one ready
SPARE = 128 << 20  # bytes of memory files a session keeps for its next results, once the batches in them are gone
SEALS = getattr(fcntl, "F_SEAL_SHRINK", 2) | getattr(fcntl, "F_SEAL_GROW", 4)


class Broken(Exception):
    """The client sent what the protocol does not allow, or left: the worker's query ends."""


# The worker's side.


class ChunkWriter:
    """Batches written into the client's memory files, each chunk a whole IPC stream; ``frame`` says each one's
    length on the socket. Memory files are taken from the socket as they are needed (``receive``)."""

    def __init__(self, schema: pa.Schema, receive: Callable[[int], int], frame: Callable[[int], None]) -> None:
        self.schema, self._receive, self._frame = schema, receive, frame
        self.bytes, self.rows = 0, 0  # what the client was told of: the chunks framed, their rows
        self._chunk: _Chunk | None = None
        self._smallest = SMALLEST

    def write_batch(self, batch: pa.RecordBatch) -> None:
        """``batch`` in the chunk being written, or in the next (split where no chunk holds it whole)."""
        if self._chunk is not None and self._chunk.put(batch):
            return
        if self._chunk is not None and self._chunk.batches:  # full: the next chunk
            self._end_chunk()
        if self._chunk is None:
            self._start()
            assert self._chunk is not None
            if self._chunk.put(batch):
                return
        if batch.num_rows > 1:  # an empty chunk too small for the batch: its halves, each where it fits
            half = batch.num_rows // 2
            self.write_batch(batch.slice(0, half))
            self.write_batch(batch.slice(half))
            return
        self._ask(int(pa.ipc.get_record_batch_size(batch)) + SMALLEST)  # one row, larger than the file given
        self.write_batch(batch)

    def close(self) -> None:
        """The last chunk ended (a result with no rows still has one: its schema), then the closing frame."""
        if self._chunk is None and self.bytes == 0:
            self._start()
        self._end_chunk()
        self._frame(0)

    def abandon(self) -> None:
        if self._chunk is not None:
            self._chunk.release()
            self._chunk = None

    def _start(self) -> None:
        fd = self._receive(self._smallest)
        try:
            self._chunk = _Chunk(fd, self.schema)
        except OSError:  # sealed against writes since it was checked: the file closed, not kept by the worker
            os.close(fd)
            raise Broken("the client sealed its memory file against writing once it was given") from None

    def _end_chunk(self) -> None:
        if self._chunk is None:
            return
        chunk, self._chunk = self._chunk, None  # released by finish, even when it raises: never closed twice
        size = chunk.finish()
        self._frame(size)
        self.bytes, self.rows = self.bytes + size, self.rows + chunk.rows

    def _ask(self, need: int) -> None:
        """A bigger memory file: the one in hand is given back unwritten (the client skips it too, being smaller
        than the size asked for)."""
        size = 2 * max(need, self._chunk.size if self._chunk is not None else 0, self._smallest)
        if size > LARGEST:
            raise Broken(f"a row of the result takes over {LARGEST >> 21} MB; select fewer or narrower columns")
        self.abandon()
        self._smallest = size
        self._frame(-size)


class _Chunk:
    """One memory file, mapped; an IPC stream written into it until a batch does not fit."""

    def __init__(self, fd: int, schema: pa.Schema) -> None:
        self._fd, self.size, self.batches, self.rows = fd, os.fstat(fd).st_size, 0, 0
        self._map = mmap.mmap(fd, self.size, flags=mmap.MAP_SHARED)
        self._sink: Any = pa.FixedSizeBufferWriter(pa.py_buffer(self._map))
        self._writer: Any = None
        self._good = self._ready = 0
        self._prepare(SMALLEST)
        with contextlib.suppress(pa.ArrowException, OSError):  # a schema larger than the file: "out of bounds"
            self._writer = pa.ipc.new_stream(self._sink, schema)
            self._good = self._sink.tell()

    def put(self, batch: pa.RecordBatch) -> bool:
        """Whether ``batch`` went in whole. When not, the chunk still ends at the last batch that did: an IPC
        stream may end without its end-of-stream marker, and its reader reads no further than its length."""
        need = pa.ipc.get_record_batch_size(batch) + 8
        if self._writer is None or self._good + need > self.size:
            return False
        self._prepare(self._good + need)
        try:
            self._writer.write_batch(batch)
        except OSError as exc:  # its dictionaries did not fit ("Write out of bounds"): this writer is done
            if "out of bounds" not in str(exc):
                raise
            self._writer = None
            return False
        self._good, self.batches, self.rows = self._sink.tell(), self.batches + 1, self.rows + batch.num_rows
        return True

    def _prepare(self, end: int) -> None:
        """The pages up to ``end`` made ready for writing in one call, not a fault per 4 KB, and only those: a
        small result in a large file costs what it writes (kernels before 5.14: the faults, as they come)."""
        end = min(self.size, -(-end // mmap.PAGESIZE) * mmap.PAGESIZE)
        if end > self._ready:
            with contextlib.suppress(OSError):
                self._map.madvise(MADV_POPULATE_WRITE, self._ready, end - self._ready)
            self._ready = end

    def finish(self) -> int:
        """The chunk's length, its end-of-stream marker written where there is room; the memory file closed."""
        if self._writer is not None:
            with contextlib.suppress(pa.ArrowException, OSError):  # no room for the end-of-stream marker, or the schema
                self._writer.close()
                self._good = self._sink.tell()
        size, whole = self._good, _taken(os.fstat(self._fd))
        self.release()
        if size == 0:
            raise Broken("the memory file given is too small for the result's schema")
        if not whole:  # punched while written: the pages the worker put back are its own; one chunk, then no more
            raise Broken("the client took pages out of a memory file while its result was written")
        return size

    def release(self) -> None:
        self._writer = self._sink = None
        self._map.close()
        os.close(self._fd)


def receiver(sock: socket.socket, stall: float) -> Callable[[int], int]:
    """What takes the client's next memory file from ``sock`` (waiting up to ``stall`` seconds for one), skipping
    files smaller than the size asked for, and checking each before it is mapped."""

    def receive(smallest: int) -> int:
        while True:
            fd = _next_memfd(sock, stall)
            size = _checked(fd)
            if size >= smallest:
                return fd
            os.close(fd)

    return receive


def framer(sock: socket.socket, stall: float) -> Callable[[int], None]:
    def frame(size: int) -> None:
        send_within(sock, FRAME.pack(size), stall)

    return frame


def _next_memfd(sock: socket.socket, stall: float) -> int:
    readable = select.poll()
    readable.register(sock, select.POLLIN)
    if not readable.poll(stall * 1000):
        raise TimeoutError(f"the client gave no memory for its result for {stall:g} s")
    message, fds, flags, _ = socket.recv_fds(sock, 1, 2)
    if message == MEMFD and len(fds) == 1 and not flags & socket.MSG_CTRUNC:
        return fds[0]
    for fd in fds:
        os.close(fd)
    if not message:
        raise ConnectionResetError("the client hung up")
    raise Broken("the client sent something other than a memory file for its result")


def _checked(fd: int) -> int:
    """The memory file's size, when it is one a worker may map and write (see the module's docstring); else the
    file is closed and the client has broken the protocol."""
    problem, size = _problem(fd)
    if problem is not None:
        os.close(fd)
        raise Broken(problem)
    return size


def _problem(fd: int) -> tuple[str | None, int]:
    """What is wrong with the file the client sent, if anything, and its size."""
    try:
        info, seals, mode = os.fstat(fd), fcntl.fcntl(fd, F_GET_SEALS), fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError:
        return "the client sent a file that is not a sealed memory file for its result", 0
    if not stat.S_ISREG(info.st_mode) or not seals & SEALS == SEALS or seals & F_SEAL_WRITES:
        return "the client sent a file that is not a sealed memory file for its result", 0
    if mode & os.O_ACCMODE != os.O_RDWR:  # a copy opened for reading only: the worker could not map it to write
        return "a memory file for a result is sent open for reading and writing", 0
    if not SMALLEST <= info.st_size <= LARGEST:
        return f"a memory file for a result is between {SMALLEST:,} and {LARGEST:,} bytes", 0
    if not _taken(info):
        return "a memory file for a result has pages its client has not taken: fallocate it before sending it", 0
    return None, info.st_size


def _taken(info: os.stat_result) -> bool:
    """Whether every page of the file is there: a page the worker's write would add is charged to the worker,
    not to the client (whose room's memory limit would then not hold it)."""
    return info.st_blocks * 512 >= info.st_size


def watch_hangup(sock: socket.socket, hung_up: Callable[[], None]) -> Callable[[], None]:
    """``hung_up`` called once the client closes its end, by a thread that reads nothing (the memory files the
    client gives wait for the writer); the returned function stops the watch."""
    stop_read, stop_write = os.pipe()

    def watch() -> None:
        events = select.poll()
        events.register(sock, select.POLLRDHUP)
        events.register(stop_read, select.POLLIN)
        ready = dict(events.poll())
        if stop_read not in ready and ready.get(sock.fileno(), 0) & (select.POLLRDHUP | select.POLLHUP | select.POLLERR):
            hung_up()

    thread = threading.Thread(target=watch, name="saferoom-hangup", daemon=True)
    thread.start()

    def stop() -> None:
        os.write(stop_write, b"x")
        thread.join()
        os.close(stop_read)
        os.close(stop_write)

    return stop


# The client's side.


class MemoryFiles:
    """A session's memory files: made (their pages taken now, by this process), lent to the results whose
    batches lie in them, and kept for the next result once those batches are gone (up to :data:`SPARE` bytes:
    a file kept is a file whose pages need not be cleared again).

    Only a file the worker is done with comes back: one it said it wrote (it unmapped it first), one it
    skipped, or one given after its result was over. A file given to a query that ended early is closed, as
    its worker may still write into it."""

    def __init__(self) -> None:
        self._spare: list[tuple[int, int]] = []
        self._lent: list[tuple[int, int, mmap.mmap]] = []
        self.close = weakref.finalize(self, _close_all, self._spare, self._lent)  # also when never closed

    def take(self, size: int) -> tuple[int, int]:
        """A memory file of at least ``size`` bytes: a spare one, or a new one."""
        self._reclaim()
        fits = [i for i, (_, have) in enumerate(self._spare) if have >= size]
        if fits:  # the smallest that will do: a small result maps little
            return self._spare.pop(min(fits, key=lambda i: self._spare[i][1]))
        return _memfd(size), size

    def lend(self, fd: int, size: int, length: int) -> mmap.mmap:
        """The first ``length`` bytes of ``fd``, mapped for reading; the file is spare again once no batch
        holds them."""
        view = mmap.mmap(fd, length, prot=mmap.PROT_READ, flags=mmap.MAP_SHARED | _POPULATE)
        self._lent.append((fd, size, view))
        return view

    def give_back(self, fd: int, size: int) -> None:
        self._spare.append((fd, size))
        self._trim()

    def _reclaim(self) -> None:
        """Files whose batches are all gone: the mapping closes (it refuses while any buffer still points in)."""
        held = []
        for fd, size, view in self._lent:
            try:
                view.close()
            except BufferError:
                held.append((fd, size, view))
                continue
            self._spare.append((fd, size))
        self._lent[:] = held
        self._trim()

    def _trim(self) -> None:
        self._spare.sort(key=lambda item: -item[1])
        kept, total = [], 0
        for fd, size in self._spare:
            if total + size > SPARE:
                os.close(fd)
                continue
            kept.append((fd, size))
            total += size
        self._spare[:] = kept


class ChunkReader:
    """The client's end: memory files given ahead, frames read, each chunk's batches read where they lie."""

    def __init__(self, sock: socket.socket, files: MemoryFiles, ahead: bytes) -> None:
        self._sock, self._files, self._buffer = sock, files, bytearray(ahead)
        self._given: deque[tuple[int, int]] = deque()
        self._next_size, self._smallest, self._over = FIRST, SMALLEST, False
        weakref.finalize(self, _close_given, self._given)  # a result dropped unread: its files closed, never kept
        try:
            for _ in range(AHEAD):
                self._give()
            self.schema, self._first = self._chunk()
        except BaseException:
            self.close()
            raise

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        reader, self._first = self._first, None
        while reader is not None:
            yield from reader
            reader = self._chunk()[1]

    def rest(self) -> bytes:
        """What follows the chunks (the gateway's status line). A reset once it is read is no error: the gateway
        closes the socket with the files given ahead unread."""
        with contextlib.suppress(ConnectionResetError):
            while b"\n" not in self._buffer and (got := self._sock.recv(1 << 16)):
                self._buffer += got
        return bytes(self._buffer)

    def close(self) -> None:
        """Files still given: spare once the result is over (the worker wrote its last), else closed."""
        while self._given:
            fd, size = self._given.popleft()
            if self._over:
                self._files.give_back(fd, size)
            else:
                os.close(fd)

    def _chunk(self) -> tuple[pa.Schema, pa.ipc.RecordBatchStreamReader | None]:
        """The next chunk's reader (None at the end), giving files as the worker asks."""
        while (size := self._frame()) < 0:
            if -size > LARGEST:
                raise EOFError("the gateway asked for a memory file larger than a worker takes")
            if -size <= self._smallest:  # a worker asks for twice the size each time: never again for as much
                raise EOFError("the gateway asked again for a memory file no larger than before")
            self._smallest = self._next_size = -size
            self._skip_small()
            self._give()
        if size == 0:
            self._over = True
            return pa.schema([]), None
        fd, have = self._given.popleft()
        if size > have:
            os.close(fd)
            raise EOFError("the gateway said a chunk is longer than its memory file")
        reader = pa.ipc.open_stream(pa.py_buffer(self._files.lend(fd, have, size)))
        self._give()  # once the reader holds the mapping: a file no buffer points into is spare again
        return reader.schema, reader

    def _frame(self) -> int:
        while len(self._buffer) < FRAME.size:
            got = self._sock.recv(1 << 12)
            if not got:
                raise EOFError("the result ended before its last chunk")
            self._buffer += got
        (size,) = FRAME.unpack_from(self._buffer)
        del self._buffer[: FRAME.size]
        return int(size)

    def _give(self) -> None:
        fd, size = self._files.take(max(self._next_size, self._smallest))
        self._next_size = min(BIGGEST, self._next_size * 4)
        try:
            socket.send_fds(self._sock, [MEMFD], [fd])
        except (BrokenPipeError, ConnectionResetError):  # the result was over, the socket closed: frames tell
            self._files.give_back(fd, size)
            return
        self._given.append((fd, size))

    def _skip_small(self) -> None:
        """The files given that the worker skips, as it does: each smaller than the size it asked for. It never
        maps one, so each is spare at once."""
        kept: deque[tuple[int, int]] = deque()
        for fd, size in self._given:
            if size >= self._smallest:
                kept.append((fd, size))
            else:
                self._files.give_back(fd, size)
        self._given.clear()
        self._given.extend(kept)


def _close_given(given: deque[tuple[int, int]]) -> None:
    while given:
        os.close(given.popleft()[0])


def _close_all(spare: list[tuple[int, int]], lent: list[tuple[int, int, mmap.mmap]]) -> None:
    """Every file closed; a result still held keeps its mapping (its batches stay readable)."""
    for fd in [fd for fd, _ in spare] + [fd for fd, _, _ in lent]:
        os.close(fd)
    spare.clear()
    lent.clear()


def _memfd(size: int) -> int:
    """A memory file of ``size`` bytes whose pages are taken now, by this process, and which cannot shrink."""
    fd = os.memfd_create("saferoom-result", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, size)
        os.posix_fallocate(fd, 0, size)
        fcntl.fcntl(fd, F_ADD_SEALS, SEALS)
    except OSError:
        os.close(fd)
        raise
    return fd


def available() -> bool:
    """Whether this process can make memory files (Linux): otherwise the door streams the result."""
    return getattr(os, "memfd_create", None) is not None and getattr(socket, "send_fds", None) is not None


F_ADD_SEALS, F_GET_SEALS = getattr(fcntl, "F_ADD_SEALS", 1033), getattr(fcntl, "F_GET_SEALS", 1034)
F_SEAL_WRITES = getattr(fcntl, "F_SEAL_WRITE", 8) | getattr(fcntl, "F_SEAL_FUTURE_WRITE", 16)
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # the page tables filled in one call, not a fault per 4 KB
MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)  # <linux/mman.h>, Linux 5.14
