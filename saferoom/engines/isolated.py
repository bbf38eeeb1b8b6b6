"""The embedded engine in processes of its own: one process per running query, at the gateway.

In one process, DuckDB's Python binding takes the interpreter lock between every task of a query (to
look for Ctrl-C), so a few long queries from one analyst slow every other thread of the server, however
low their CPU priority. A query in its own process shares nothing with the server but the machine:

- A query that has used a short one's processor time (``priority.SHORT_SECONDS``) has its process moved to a low
  CPU priority, which cannot be raised again, and stopped whenever short queries run (``priority.BACKGROUND``);
  that process ends with the query, and a fresh one takes its place.
- A stop (hang-up, timeout, shutdown) interrupts the query in its process; a process that does not answer
  within ``KILL_AFTER_SECONDS`` (an allocation no interrupt reaches) is killed.
- A query's memory is its process's: the server stays small, and whatever the kernel must kill is that.

The parent speaks to each worker over a pipe: a request, then the schema, then which way the rows go: back over
the pipe, as Arrow IPC messages and an end or an error, or straight to a client's socket, passed to the worker
(``ProcessEngine.stream``'s reader in ``SENDERS``): the worker writes the IPC stream there, cut at ``max_rows``,
closes its copy of the socket and tells the parent what it sent. The gateway then copies no byte of the result.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import multiprocessing
import os
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing import reduction
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from saferoom import chunks, priority, scratch
from saferoom.engines.base import FORWARDED, SENDERS, Cancel, Catalog, IpcMessages, KeyRows, Sent, stopped, until_done
from saferoom.engines.duckdb import DUCKDB, Attachment, DuckDBEngine, spill_folder
from saferoom.errors import EngineError, SaferoomError, from_fields
from saferoom.files import send_within
from saferoom.policy.limits import Limits
from saferoom.secrets import Secret

KILL_AFTER_SECONDS = 5.0  # a stopped query whose process has not answered by then is killed
ENDED = "the query's engine process ended unexpectedly (out of memory, or killed); run the query again"
WATCH_SECONDS = 0.05  # how often a query not yet long is looked at again, at most
IDLE_SECONDS = 60.0  # a spare worker idle this long is stopped (one per user stays)
# control messages start with a letter; every other message is an Arrow IPC message (which starts 0xFFFFFFFF)
# sent as the buffer pyarrow wrote, so a batch is never copied to add a header
SCHEMA, END, ERROR, SENT = b"S", b"Z", b"E", b"D"
HUNG_UP = "the client hung up"
SMALL_WRITE = 1 << 16  # an IPC message's length, metadata and small buffers leave together, in one write
SOCKET_BUFFER = 4 << 20  # fewer, larger writes and reads for a result that streams
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
KEEP_FREED = 32 << 20  # memory a worker's C heap keeps once freed, for the next batch (see _keep_freed_memory)
# Workers are forked from a small server process that has imported this module once and runs no threads:
# a worker starts in milliseconds, not the half second a fresh interpreter takes, and a threaded gateway
# is never forked itself.
_CONTEXT = multiprocessing.get_context("forkserver")
_CONTEXT.set_forkserver_preload([__name__])


class ProcessEngine:
    """The DuckDB engine for one user, each query in a worker process.

    Up to ``max_concurrent`` idle workers are kept warm; beyond the first, one idle for ``IDLE_SECONDS``
    is stopped."""

    spec = DUCKDB

    def __init__(self, sources: dict[str, Attachment], token_key: Secret | None, limits: Limits) -> None:
        self._setup = (sources, token_key.reveal() if token_key else None, limits)
        self._warm = limits.max_concurrent or 1
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._running: set[_Worker] = set()
        self._long_ended = -priority.RECENT_SECONDS  # when this user's last long query ended
        self._closed = False
        worker = self._spawn()
        try:
            self._catalog: Catalog = {(k[0], k[1], k[2]): v for k, v in worker.call("catalog")}
        except BaseException:
            worker.stop()
            raise
        self._release(worker)

    def fixed_tables(self) -> frozenset[tuple[str, str, str]]:
        return frozenset()  # a worker's attachments are not this process's to inspect: views kept

    def key_rows(self, table: tuple[str, str, str], column: str) -> KeyRows | None:
        return None  # a worker's attachments are not this process's to inspect: nothing to prove once

    def catalog(self) -> Catalog:
        return self._catalog

    def column_types(self, sql: str) -> list[tuple[str, str]]:
        worker = self._acquire()
        try:
            types = [(name, kind) for name, kind in worker.call("types", sql)]
        finally:
            self._release(worker)
        return types

    def stream(self, sql: str, batch_size: int = 65536, timeout: float | None = None,
               cancel: Cancel | None = None) -> pa.RecordBatchReader:
        """Run ``sql`` in a worker; ``cancel`` (or ``timeout`` passing) interrupts it there."""
        behind = self._behind()
        cancel, worker = cancel or Cancel(), self._acquire()
        query = _Query(worker, cancel, timeout, short=not behind)
        try:
            worker.send(("stream", sql, batch_size))
            schema = query.schema()
        except BaseException:
            query.end(self)
            raise
        messages = IpcMessages()
        reader = pa.RecordBatchReader.from_batches(schema, self._batches(query, schema, messages))
        FORWARDED[reader] = messages  # the gateway sends these bytes on as they came
        SENDERS[reader] = functools.partial(self._send_to, query)  # or the worker writes them to the client itself
        return reader

    def _batches(self, query: _Query, schema: pa.Schema, messages: IpcMessages) -> Iterator[pa.RecordBatch]:
        try:
            query.go(("pipe",))
            while (message := query.next()) is not None:
                yield messages.read(message, schema)
        finally:
            query.end(self)

    def _send_to(self, query: _Query, sock: socket.socket, head: bytes, max_rows: int | None, stall: float,
                 memory: bool = False) -> Sent:
        """``head``, then the worker writes the result to ``sock`` itself (see ``SENDERS``): as a stream, or into
        the client's memory files; a client that left has its query cancelled before the worker is given back."""
        try:
            send_within(sock, head, stall)
            query.go(("memory" if memory else "socket", max_rows, stall))
            query.worker.send_handle(sock.fileno())
            return query.sent()
        except OSError as exc:  # the client left before its result began
            query.cancel(_left(exc))
            return Sent(0, 0, False, None, whole=False)
        except SaferoomError as exc:  # the worker ended mid-stream (killed): the stream stops where it was
            return Sent(0, 0, False, exc, whole=False)
        finally:
            query.end(self)

    def close(self) -> None:
        """Stop the idle workers now; a query still running keeps its worker until it ends, then that stops too."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.stop()

    def _acquire(self) -> _Worker:
        with self._lock:
            worker = self._idle.pop() if self._idle else None
        worker = worker or self._spawn()
        with self._lock:
            self._running.add(worker)
        return worker

    def _behind(self) -> bool:
        """Whether this user has a heavy query running, or had one end within ``priority.RECENT_SECONDS`` (see
        ``_Worker.heavy``): then a new one starts as long work, so that one user's many queries (or one
        abandoned and sent again) never take from others the processor each would get for its short start."""
        with self._lock:
            recent = time.monotonic() - self._long_ended < priority.RECENT_SECONDS
            return recent or any(worker.heavy for worker in self._running)

    def _busy(self) -> set[_Worker]:
        with self._lock:
            return set(self._running)

    def _release(self, worker: _Worker) -> None:
        """Keep a healthy worker warm at normal priority, up to the pool's size; stop long-idle spares."""
        now = time.monotonic()
        with self._lock:
            self._running.discard(worker)
            self._long_ended = now if worker.heavy else self._long_ended
            stale = [w for w in self._idle[1:] if now - w.idle_since > IDLE_SECONDS]
            self._idle = [w for w in self._idle if w not in stale]
            keep = worker.reusable and len(self._idle) < self._warm and not self._closed
            if keep:
                worker.idle_since = now
                self._idle.append(worker)
        for each in stale if keep else [*stale, worker]:
            each.stop()

    def _spawn(self) -> _Worker:
        return _Worker.start(self._setup)


class _Worker:
    """One worker process and the parent's end of its pipe."""

    def __init__(self, process: Any, conn: Connection, spill: str | None) -> None:
        self.process, self.conn, self.spill = process, conn, spill
        self.handle = priority.Process(process.pid)  # taken while it runs: never signals a process that reused the pid
        self.reusable, self.lowered = True, False
        self.ran_long = False  # its query used a short one's processor time
        self.stopping = False  # its query is being stopped (hang-up, timeout, shutdown)
        self.idle_since = 0.0

    @classmethod
    def start(cls, setup: tuple[Any, ...]) -> _Worker:
        parent, child = _CONTEXT.Pipe()
        _widen(parent)
        _widen(child)
        process = _CONTEXT.Process(target=_serve, args=(child,), name="saferoom-query", daemon=True)
        process.start()
        child.close()
        # the spill folder is made and removed here: a killed worker (a query that would not stop) removes nothing
        _, _, limits = setup
        spill = spill_folder(limits)
        worker = cls(process, parent, spill)
        try:
            worker.send(("setup", *setup, spill))  # the key travels over the pipe, never on a command line or in the environment
            worker.expect_ready()
        except BaseException:
            worker.stop()
            raise
        return worker

    def expect_ready(self) -> None:
        message = self.receive()
        if message[:1] == ERROR:
            raise _error(message)

    def send(self, request: tuple[Any, ...]) -> None:
        try:
            self.conn.send(request)
        except (OSError, ValueError):
            self.reusable = False
            raise EngineError(ENDED) from None

    def send_handle(self, fd: int) -> None:
        """A descriptor of this process's, given to the worker (SCM_RIGHTS: the pipe is a Unix socket pair)."""
        try:
            reduction.send_handle(self.conn, fd, self.process.pid)
        except OSError:
            self.reusable = False
            raise EngineError(ENDED) from None

    def receive(self) -> bytes:
        try:
            return _read_message(self.conn.fileno())
        except (EOFError, OSError):
            self.reusable = False
            raise EngineError(ENDED) from None

    def call(self, *request: Any) -> Any:
        self.send(request)
        message = self.receive()
        if message[:1] == ERROR:
            raise _error(message)
        return json.loads(message[1:])

    def interrupt(self) -> None:
        """Ask the worker to stop its query. Through a pidfd: once the worker is reaped its pid may be another
        process's, or a thread's of this one (``kill`` of a thread's id signals its whole process)."""
        if self.handle.pidfd is not None or self.process.exitcode is None:
            self.handle.signal(signal.SIGUSR1)

    def alive(self) -> bool:
        return bool(self.process.exitcode is None)

    def lower(self) -> None:
        """Low priority for every thread of the process, which is stopped while short work runs; it is not
        reused after this query."""
        self.reusable, self.lowered = False, True
        priority.lower_process(self.process.pid)
        priority.BACKGROUND.add(self.handle)

    @property
    def heavy(self) -> bool:
        """Its query used a short one's processor time, or ran as long work until stopped (abandoned, timed out):
        a user with such a query running or just ended starts the next as long work."""
        return self.ran_long or (self.lowered and self.stopping)

    def resume(self) -> None:
        """Let the process run (a stopped one must, to hear a stop or a close); it leaves the background."""
        priority.BACKGROUND.discard(self.handle)

    def stop(self) -> None:
        """End the worker and close its pipe; only the thread that holds the worker calls this."""
        self.resume()
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(("close",))
        self.process.join(KILL_AFTER_SECONDS)
        self.kill()
        self.conn.close()

    def kill(self) -> None:
        """End the process, from any thread. The pipe stays open: a reader blocked on it sees the end of the
        stream, and its file descriptor cannot be reused under it."""
        self.reusable = False
        self.resume()  # before the process is reaped, while its pid is still ours
        with contextlib.suppress(OSError, ValueError):
            self.process.kill()
        self.process.join()
        if self.spill is not None:  # what it spilled may be rows of the data: none stays on disk
            scratch.remove(self.spill)


@dataclass
class _Query:
    """One query running in a worker: its stop, its timer, and its demotion to low priority."""

    worker: _Worker
    cancel: Cancel
    timeout: float | None
    short: bool = True  # starts as short work (else as long work at once)

    def __post_init__(self) -> None:
        self.done = threading.Event()
        self.way: str | None = None  # where the rows go, once told: the pipe, or the client's socket
        self._lock = threading.Lock()
        self._short = self._ended = False
        self.cancel.on_cancel(self._stop)
        self.timer = self.cancel.after(self.timeout)
        self._started, self._cpu = time.monotonic(), priority.cpu_seconds(self.worker.process.pid)
        self.demotion: threading.Timer | None = None
        if self.short:
            self._enter_short()
        else:
            self._demote()
        self._watch_in(priority.SHORT_SECONDS)

    def _watch_in(self, seconds: float) -> None:
        with self._lock:
            if not self._ended:
                self.demotion = threading.Timer(seconds, self._watch)
                self.demotion.daemon = True
                self.demotion.start()

    def _watch(self) -> None:
        """Long once the worker has used a short query's processor time: on a busy machine, wall time would
        call every query long (and stop it behind the others). A query past ``LONG_SECONDS`` that has not
        (one waiting on its reader, say) no longer holds long work back, but keeps its priority."""
        used = priority.cpu_seconds(self.worker.process.pid) - self._cpu
        if used >= priority.SHORT_SECONDS:
            self.worker.ran_long = True
            self._demote()
            return
        if time.monotonic() - self._started >= priority.LONG_SECONDS:
            with self._lock:
                self._leave_short()
        self._watch_in(max(priority.SHORT_SECONDS - used, WATCH_SECONDS if self._short else priority.SHORT_SECONDS))

    def _enter_short(self) -> None:
        priority.BACKGROUND.enter()
        self._short = True

    def _leave_short(self) -> None:
        if self._short:
            self._short = False
            priority.BACKGROUND.leave()

    def _demote(self) -> None:
        """Long work from now on: it used a short query's processor time, or its user is behind (never after
        the query ended, whose process may be reaped already)."""
        with self._lock:
            if not self._ended and self.cancel.reason is None and not self.worker.lowered:
                self.worker.lower()
            self._leave_short()

    def schema(self) -> pa.Schema:
        message = self._receive()
        assert message is not None and message[:1] == SCHEMA
        return pa.ipc.read_schema(pa.py_buffer(message[1:]))

    def go(self, way: tuple[Any, ...]) -> None:
        """Tell the worker, waiting after the schema, where the rows go: once, to the pipe or to a socket."""
        if self.way is not None:
            raise EngineError(f"the query's rows already go to the {self.way}")
        self.way = way[0]
        self.worker.send(way)

    def next(self) -> bytes | None:
        return self._receive()

    def sent(self) -> Sent:
        """What the worker wrote to the client's socket; a client that left (hung up, or took no byte for its
        stall limit) has its query cancelled, with that reason."""
        message = self._receive()
        assert message is not None and message[:1] == SENT
        report = json.loads(message[1:])
        if report["left"] is not None:
            self.cancel(report["left"])
        error = None if report["error"] is None else from_fields(*report["error"])
        if error is not None and self.cancel.reason is not None:
            error = stopped(self.cancel, self.timeout)
        return Sent(report["rows"], report["bytes"], report["truncated"], error, whole=report["left"] is None)

    def _receive(self) -> bytes | None:
        try:
            message = self.worker.receive()
        except EngineError:
            self.done.set()
            if self.cancel.reason is not None:  # killed because it did not stop: it was stopped
                raise stopped(self.cancel, self.timeout) from None
            raise
        if message[:1] == ERROR:
            self.done.set()
            raise stopped(self.cancel, self.timeout) if self.cancel.reason is not None else _error(message)
        if message[:1] == END:
            self.done.set()
            return None
        if message[:1] == SENT:
            self.done.set()
        return message

    def _stop(self) -> None:
        """Interrupt the query (again and again, as a stop can arrive before the worker starts it); a worker
        still busy with it after KILL_AFTER_SECONDS is killed."""
        self.worker.reusable, self.worker.stopping = False, True  # no stray stop may reach its next query
        with self._lock:  # after a demotion under way, never before it
            # never reused: no reason to let it run until it hears the interrupt, unless it writes to the client,
            # whose stream it then ends whole for the gateway's status line to say why
            if self.worker.lowered and self.way not in WRITERS:
                threading.Thread(target=self.worker.kill, daemon=True).start()
                return
            self.worker.resume()
        until_done(self.worker.interrupt, self.done, alive=self.worker.alive)()
        killer = threading.Timer(KILL_AFTER_SECONDS, lambda: None if self.done.is_set() else self.worker.kill())
        killer.daemon = True
        killer.start()

    def end(self, engine: ProcessEngine) -> None:
        """The query is over for its reader: a worker still sending (an early stop) is drained or killed."""
        with self._lock:
            self._ended = True
            self._leave_short()
            if self.demotion is not None:
                self.demotion.cancel()
        if self.timer is not None:
            self.timer.cancel()
        if not self.done.is_set():
            self.worker.reusable = False
            self.worker.kill()
        engine._release(self.worker)


def _read_message(fd: int) -> bytes:
    """One message of the pipe, as ``Connection.send_bytes`` framed it (a 4-byte length, or -1 then 8 bytes), read
    straight into one buffer: ``recv_bytes`` copies each byte of a result twice more on its way into a bytes."""
    (size,) = struct.unpack("!i", _read_exactly(fd, 4))
    if size == -1:
        (size,) = struct.unpack("!Q", _read_exactly(fd, 8))
    return _read_exactly(fd, size)


def _read_exactly(fd: int, size: int) -> bytes:
    block = bytearray(size)
    view, filled = memoryview(block), 0
    while filled < size:
        got = os.readv(fd, [view[filled:]])
        if not got:
            raise EOFError("the worker's pipe closed")
        filled += got
    return block  # type: ignore[return-value]  # a bytearray is read as bytes everywhere it goes


def _widen(conn: Connection) -> None:
    """Larger socket buffers for the pipe (a duplex Pipe is a Unix socket pair)."""
    with contextlib.suppress(OSError):
        sock = socket.socket(fileno=os.dup(conn.fileno()))
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)


def _left(exc: OSError) -> str:
    """Why a client's socket took no more: it stopped reading (the stall limit's message), or hung up."""
    return str(exc) if isinstance(exc, TimeoutError) else HUNG_UP


def _error(message: bytes) -> SaferoomError:
    kind, text, fields = json.loads(message[1:])
    return from_fields(kind, text, fields)


# --- the worker process ---------------------------------------------------------------------------------------


def _serve(conn: Connection) -> None:
    """A worker's life: open the engine, then answer requests one at a time until told to close."""
    _die_with_parent()
    _keep_freed_memory()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server's Ctrl-C is the server's; the parent stops us
    running: list[Cancel] = []

    def stop(*_: object) -> None:  # the parent's stop: DuckDB runs Python's signal handlers between its tasks
        for cancel in running:
            cancel("stopped by the gateway")

    signal.signal(signal.SIGUSR1, stop)
    try:
        engine = _open(conn.recv())
    except SaferoomError as exc:
        conn.send_bytes(ERROR + _json(_described(exc)))
        return
    conn.send_bytes(END)
    with contextlib.suppress(_Closing):
        while (request := conn.recv())[0] != "close":
            _answer(conn, engine, request, running)
    engine.close()


def _die_with_parent() -> None:
    """A worker never outlives the server: its parent, the fork server, ends with the gateway (even on kill -9),
    and the kernel then kills the worker, however long its query would have run."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent was already gone before the line above
        os._exit(1)


def _keep_freed_memory() -> None:
    """A result's batches are made and freed one after another. By default glibc gives each batch's memory back
    to the kernel (blocks past its threshold are mapped and unmapped, the heap's top trimmed) and takes it again
    for the next: a page fault and a page cleared for every 4 KB of the result, a tenth of the worker's time.
    Up to ``KEEP_FREED`` bytes freed stay in the worker for its next batch (other C libraries: unchanged)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, KEEP_FREED // 2)
        libc.mallopt(M_TRIM_THRESHOLD, KEEP_FREED)


def _open(setup: tuple[Any, ...]) -> DuckDBEngine:
    _, sources, key, limits, spill = setup
    return DuckDBEngine(sources, Secret(key) if key else None, limits, Path(spill) if spill else None)


def _answer(conn: Connection, engine: DuckDBEngine, request: tuple[Any, ...], running: list[Cancel]) -> None:
    try:
        if request[0] == "catalog":
            conn.send_bytes(END + _json([[list(k), v] for k, v in engine.catalog().items()]))
        elif request[0] == "types":
            conn.send_bytes(END + _json(engine.column_types(request[1])))
        else:
            _stream(conn, engine, request[1], request[2], running)
    except SaferoomError as exc:
        conn.send_bytes(ERROR + _json(_described(exc)))


class _Closing(Exception):
    """The parent closed the worker while a query waited to be told where its rows go."""


def _stream(conn: Connection, engine: DuckDBEngine, sql: str, batch_size: int, running: list[Cancel]) -> None:
    cancel = Cancel()
    running.append(cancel)
    try:
        reader = engine.stream(sql, batch_size, cancel=cancel)
        conn.send_bytes(SCHEMA + reader.schema.serialize().to_pybytes())
        way = conn.recv()
        if way[0] in WRITERS:
            conn.send_bytes(SENT + _json(WRITERS[way[0]](reduction.recv_handle(conn), reader, *way[1:], cancel)))
            return
        if way[0] != "pipe":
            raise _Closing
        for batch in reader:
            conn.send_bytes(batch.serialize())
        conn.send_bytes(END)
    finally:
        running.remove(cancel)


def _write_to(fd: int, reader: pa.RecordBatchReader, max_rows: int | None, stall: float,
              cancel: Cancel) -> dict[str, Any]:
    """The result as an Arrow IPC stream on the client's socket ``fd``, cut at ``max_rows``; the socket is closed
    here (it is the gateway's again) before the parent hears what was sent. An engine error ends the stream
    whole, its end-of-stream marker written: the gateway's status line carries the error."""
    out = _Out(socket.socket(fileno=fd), stall)
    report: dict[str, Any] = {"rows": 0, "truncated": False, "error": None, "left": None}
    try:
        writer = pa.ipc.new_stream(pa.PythonFile(out, mode="w"), reader.schema)
        try:
            _write(reader, writer, max_rows, report)
        except SaferoomError as exc:
            report["error"] = _described(exc)
        writer.close()  # the end-of-stream marker
        out.flush()
    except _Left as exc:
        report["left"] = str(exc)
    finally:
        out.sock.close()
        reader.close()
    return {**report, "bytes": out.sent}


class _Writer(Protocol):
    def write_batch(self, batch: pa.RecordBatch) -> None: ...


def _write(reader: pa.RecordBatchReader, writer: _Writer, max_rows: int | None,
           report: dict[str, Any]) -> None:
    """Every batch, or the rows up to ``max_rows`` when there are more (as ``Result`` cuts them)."""
    for batch in reader:
        room = None if max_rows is None else max_rows - report["rows"]
        if room is not None and (batch.num_rows > room or (room == 0 and batch.num_rows)):
            report["truncated"] = True
            if room:
                writer.write_batch(batch.slice(0, room))
            report["rows"] += room
            return
        writer.write_batch(batch)
        report["rows"] += batch.num_rows


def _write_chunks(fd: int, reader: pa.RecordBatchReader, max_rows: int | None, stall: float,
                  cancel: Cancel) -> dict[str, Any]:
    """The result in the client's memory files (saferoom/chunks.py), cut at ``max_rows``; the socket closed here
    before the parent hears what was written. The worker reads the socket here (the gateway stopped), so it
    also watches it for a hang-up while the query runs: a client that leaves has its query interrupted."""
    sock = socket.socket(fileno=fd)
    out = chunks.ChunkWriter(reader.schema, chunks.receiver(sock, stall), chunks.framer(sock, stall))
    report: dict[str, Any] = {"rows": 0, "truncated": False, "error": None, "left": None}
    unwatch = chunks.watch_hangup(sock, lambda: cancel(HUNG_UP))
    try:
        try:
            _write(reader, out, max_rows, report)
        except SaferoomError as exc:
            if cancel.reason == HUNG_UP:
                raise ConnectionResetError(HUNG_UP) from None
            report["error"] = _described(exc)
        out.close()
    except chunks.Broken as exc:
        report["left"] = str(exc)
    except OSError as exc:
        report["left"] = _left(exc)
    finally:
        unwatch()
        out.abandon()
        sock.close()
        reader.close()
    if report["left"] is not None:  # the rows of chunks never framed did not reach the client: not counted
        report["rows"] = out.rows
    return {**report, "bytes": out.bytes}


class _Out:
    """The client's socket as the file Arrow's IPC writer writes to: small writes (a message's length, its
    metadata, small buffers) gathered and sent with the next large one; the large ones (the columns' buffers)
    sent as they are, each byte counted."""

    closed = False

    def __init__(self, sock: socket.socket, stall: float) -> None:
        self.sock, self.stall, self.sent = sock, stall, 0
        self._small = bytearray()

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if len(view) < SMALL_WRITE:
            self._small += view
            if len(self._small) >= SMALL_WRITE:  # many small batches in a row: never more than this held
                self.flush()
            return len(view)
        self.flush()
        self._send(view)
        return len(view)

    def flush(self) -> None:
        if self._small:
            self._send(self._small)
            self._small = bytearray()

    def _send(self, data: Any) -> None:
        try:
            send_within(self.sock, data, self.stall)
        except OSError as exc:  # raised through Arrow's writer as it is: the engine's failures are SaferoomErrors
            raise _Left(_left(exc)) from None
        self.sent += len(data)


class _Left(Exception):
    """The client's socket took no more: it hung up, or took no byte for the stall limit."""


WRITERS: dict[str, Callable[..., dict[str, Any]]] = {"socket": _write_to, "memory": _write_chunks}  # the ways a worker writes a result to a client itself


def _described(exc: SaferoomError) -> list[Any]:
    """An error as it crosses the pipe: its type's name, message and fields (``from_fields`` on the other side)."""
    return [type(exc).__name__, exc.message, exc.fields()]


def _json(value: object) -> bytes:
    return json.dumps(value).encode()
