"""The embedded engine in processes of its own: one process per running query, at the gateway.

In one process, DuckDB's Python binding takes the interpreter lock between every task of a query (to
look for Ctrl-C), so a few long queries from one analyst slow every other thread of the server, however
low their CPU priority. A query in its own process shares nothing with the server but the machine:

- A query still running after a short one's time (``priority.SHORT_SECONDS``) has its process moved to a low CPU
  priority, which cannot be raised again; that process ends with the query, and a fresh one takes its place.
- A stop (hang-up, timeout, shutdown) interrupts the query in its process; a process that does not answer
  within ``KILL_AFTER_SECONDS`` (an allocation no interrupt reaches) is killed.
- A query's memory is its process's: the server stays small, and whatever the kernel must kill is that.

The parent speaks to each worker over a pipe: a request, then the schema, record batches as Arrow IPC
messages, and an end or an error.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import pyarrow as pa

from saferoom import priority
from saferoom.engines.base import Cancel, Catalog, stopped, until_done
from saferoom.engines.duckdb import DUCKDB, Attachment, DuckDBEngine
from saferoom.errors import EngineError, SaferoomError, from_fields
from saferoom.policy.limits import Limits
from saferoom.secrets import Secret

KILL_AFTER_SECONDS = 5.0  # a stopped query whose process has not answered by then is killed
ENDED = "the query's engine process ended unexpectedly (out of memory, or killed); run the query again"
IDLE_SECONDS = 60.0  # a spare worker idle this long is stopped (one per user stays)
# control messages start with a letter; every other message is an Arrow IPC message (which starts 0xFFFFFFFF)
# sent as the buffer pyarrow wrote, so a batch is never copied to add a header
SCHEMA, END, ERROR = b"S", b"Z", b"E"
SOCKET_BUFFER = 4 << 20  # fewer, larger writes and reads for a result that streams
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
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
        self._closed = False
        worker = self._spawn()
        try:
            self._catalog: Catalog = {(k[0], k[1], k[2]): v for k, v in worker.call("catalog")}
        except BaseException:
            worker.stop()
            raise
        self._release(worker)

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
        cancel, worker = cancel or Cancel(), self._acquire()
        query = _Query(worker, cancel, timeout)
        try:
            worker.send(("stream", sql, batch_size))
            schema = query.schema()
        except BaseException:
            query.end(self)
            raise
        return pa.RecordBatchReader.from_batches(schema, self._batches(query, schema))

    def _batches(self, query: _Query, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
        try:
            while (message := query.next()) is not None:
                yield pa.ipc.read_record_batch(pa.py_buffer(message), schema)
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

    def _busy(self) -> set[_Worker]:
        with self._lock:
            return set(self._running)

    def _release(self, worker: _Worker) -> None:
        """Keep a healthy worker warm at normal priority, up to the pool's size; stop long-idle spares."""
        now = time.monotonic()
        with self._lock:
            self._running.discard(worker)
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

    def __init__(self, process: Any, conn: Connection) -> None:
        self.process, self.conn = process, conn
        self.reusable = True
        self.idle_since = 0.0

    @classmethod
    def start(cls, setup: tuple[Any, ...]) -> _Worker:
        parent, child = _CONTEXT.Pipe()
        _widen(parent)
        _widen(child)
        process = _CONTEXT.Process(target=_serve, args=(child,), name="saferoom-query", daemon=True)
        process.start()
        child.close()
        worker = cls(process, parent)
        worker.send(("setup", *setup))  # the key travels over the pipe, never on a command line or in the environment
        worker.expect_ready()
        return worker

    def expect_ready(self) -> None:
        message = self.receive()
        if message[:1] == ERROR:
            self.stop()
            raise _error(message)

    def send(self, request: tuple[Any, ...]) -> None:
        try:
            self.conn.send(request)
        except (OSError, ValueError):
            self.reusable = False
            raise EngineError(ENDED) from None

    def receive(self) -> bytes:
        try:
            return self.conn.recv_bytes()
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
        with contextlib.suppress(OSError):
            os.kill(self.process.pid, signal.SIGUSR1)

    def lower(self) -> None:
        """Low priority for every thread of the process; it is not reused after this query."""
        self.reusable = False
        priority.lower_process(self.process.pid)

    def stop(self) -> None:
        """End the worker and close its pipe; only the thread that holds the worker calls this."""
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(("close",))
        self.process.join(KILL_AFTER_SECONDS)
        self.kill()
        self.conn.close()

    def kill(self) -> None:
        """End the process, from any thread. The pipe stays open: a reader blocked on it sees the end of the
        stream, and its file descriptor cannot be reused under it."""
        self.reusable = False
        with contextlib.suppress(OSError, ValueError):
            self.process.kill()
        self.process.join()


@dataclass
class _Query:
    """One query running in a worker: its stop, its timer, and its demotion to low priority."""

    worker: _Worker
    cancel: Cancel
    timeout: float | None

    def __post_init__(self) -> None:
        self.done = threading.Event()
        self.cancel.on_cancel(self._stop)
        self.timer = self.cancel.after(self.timeout)
        self.demotion = threading.Timer(priority.SHORT_SECONDS, self.worker.lower)
        self.demotion.daemon = True
        self.demotion.start()

    def schema(self) -> pa.Schema:
        message = self._receive()
        assert message is not None and message[:1] == SCHEMA
        return pa.ipc.read_schema(pa.py_buffer(message[1:]))

    def next(self) -> bytes | None:
        return self._receive()

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
        return message

    def _stop(self) -> None:
        """Interrupt the query (again and again, as a stop can arrive before the worker starts it); a worker
        still busy with it after KILL_AFTER_SECONDS is killed."""
        self.worker.reusable = False  # no stray stop may reach its next query
        until_done(self.worker.interrupt, self.done)()
        killer = threading.Timer(KILL_AFTER_SECONDS, lambda: None if self.done.is_set() else self.worker.kill())
        killer.daemon = True
        killer.start()

    def end(self, engine: ProcessEngine) -> None:
        """The query is over for its reader: a worker still sending (an early stop) is drained or killed."""
        self.demotion.cancel()
        if self.timer is not None:
            self.timer.cancel()
        if not self.done.is_set():
            self.worker.reusable = False
            self.worker.kill()
        engine._release(self.worker)


def _widen(conn: Connection) -> None:
    """Larger socket buffers for the pipe (a duplex Pipe is a Unix socket pair)."""
    with contextlib.suppress(OSError):
        sock = socket.socket(fileno=os.dup(conn.fileno()))
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)


def _error(message: bytes) -> SaferoomError:
    kind, text, fields = json.loads(message[1:])
    return from_fields(kind, text, fields)


# --- the worker process ---------------------------------------------------------------------------------------


def _serve(conn: Connection) -> None:
    """A worker's life: open the engine, then answer requests one at a time until told to close."""
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server's Ctrl-C is the server's; the parent stops us
    running: list[Cancel] = []

    def stop(*_: object) -> None:  # the parent's stop: DuckDB runs Python's signal handlers between its tasks
        for cancel in running:
            cancel("stopped by the gateway")

    signal.signal(signal.SIGUSR1, stop)
    try:
        engine = _open(conn.recv())
    except SaferoomError as exc:
        conn.send_bytes(ERROR + _json([type(exc).__name__, exc.message, exc.fields()]))
        return
    conn.send_bytes(END)
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


def _open(setup: tuple[Any, ...]) -> DuckDBEngine:
    _, sources, key, limits = setup
    return DuckDBEngine(sources, Secret(key) if key else None, limits)


def _answer(conn: Connection, engine: DuckDBEngine, request: tuple[Any, ...], running: list[Cancel]) -> None:
    try:
        if request[0] == "catalog":
            conn.send_bytes(END + _json([[list(k), v] for k, v in engine.catalog().items()]))
        elif request[0] == "types":
            conn.send_bytes(END + _json(engine.column_types(request[1])))
        else:
            _stream(conn, engine, request[1], request[2], running)
    except SaferoomError as exc:
        conn.send_bytes(ERROR + _json([type(exc).__name__, exc.message, exc.fields()]))


def _stream(conn: Connection, engine: DuckDBEngine, sql: str, batch_size: int, running: list[Cancel]) -> None:
    cancel = Cancel()
    running.append(cancel)
    try:
        reader = engine.stream(sql, batch_size, cancel=cancel)
        conn.send_bytes(SCHEMA + reader.schema.serialize().to_pybytes())
        for batch in reader:
            conn.send_bytes(batch.serialize())
        conn.send_bytes(END)
    finally:
        running.remove(cancel)


def _json(value: object) -> bytes:
    return json.dumps(value).encode()
