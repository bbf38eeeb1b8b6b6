"""The result door on the gateway's Unix socket: a query answered as a plain Arrow IPC stream, no HTTP around it.

A room reads its results through the gateway's socket, and HTTP costs them there: each chunk framed, copied
into the server's write buffer, and decoded again by the client. On the socket (never on TCP, which may
speak TLS), a connection that opens with :data:`PREAMBLE` instead of an HTTP request line is taken from the
HTTP server, and its query is answered on the socket itself:

    client:  PREAMBLE {"authorization": "Bearer ...", "sql": "...", "role": null, "memory": 1}\\n
    gateway: {"request": "<id>"}\\n  then the Arrow IPC stream and its status line, as the HTTP body's
             (see streams.py)
    or:      {"request": "<id>", "memory": 1}\\n  then the result in the client's memory files (a client that
             asked with "memory": see saferoom/chunks.py), then the status line
    or:      {"error": {"type", "message", ...}}\\n  and the connection closed

Everything else is the HTTP route's: the token and the role checked, the decision made and its audit record
committed before the first byte (``Gateway.start``), the same body, the same result record, the query on a
thread of its own (``QueryThread``), and a client that hangs up has its query cancelled. Every other
connection on the socket is HTTP as before (httpx, R, a relay's).

The query's worker process writes the stream to the socket itself when nothing is done to its batches on
the way (``Result.sendable``: a query in a worker, no noise added here): the gateway passes it the socket
and copies no byte of the result. The worker cuts the rows at ``max_rows``, holds the stall limit as its own,
closes its copy of the socket and says what it sent; the gateway writes the result record, then the status
line. Writing a stream, the worker never reads from the socket: what the client sends past its request is the
gateway's to read and drop. Writing into memory files, the worker reads them from the socket and watches it
for a hang-up; the gateway stops reading it before it answers. Any other result (noised, or from an engine in
the gateway's process) is relayed, each IPC message written to the socket as it came.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Generator
from typing import Any, NamedTuple

from pydantic import ValidationError

from saferoom.client import DOOR as PREAMBLE
from saferoom.engines.base import Cancel, Sent
from saferoom.engines.isolated import HUNG_UP
from saferoom.errors import SaferoomError, TooLarge, UsageError
from saferoom.files import send_within
from saferoom.server.app import QueryRequest, begin, body_limit
from saferoom.server.gateway import STALL_SECONDS, Gateway, Running
from saferoom.server.streams import Outcome, error_body, trailer
from saferoom.server.workers import QueryThread

REQUEST_SECONDS = 60.0  # a connection that has not sent its whole request by then is closed, holding nothing
SEND_BUFFER = 4 << 20  # a worker's message leaves in one or two writes, not dozens of waits on the client
log = logging.getLogger(__name__)


def door_protocol(gateway: Gateway) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol for the socket, with the result door in front of it."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class Door(asyncio.Protocol):
        """Looks at a connection's first bytes: the door's preamble takes the socket, anything else is HTTP."""

        def __init__(self, **options: Any) -> None:
            self._http = AutoHTTPProtocol(**options)
            self._head, self._deciding, self._taken = b"", True, False
            self._transport: asyncio.Transport | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self._transport = transport  # type: ignore[assignment]
            self._http.connection_made(transport)

        def data_received(self, data: bytes) -> None:
            if not self._deciding:
                self._http.data_received(data)
                return
            self._head += data
            if self._head.startswith(PREAMBLE):
                self._take()
            elif not PREAMBLE.startswith(self._head):
                head, self._head, self._deciding = self._head, b"", False
                self._http.data_received(head)

        def _take(self) -> None:
            """The socket leaves the event loop's transport (which closes its own descriptor only) for the door."""
            assert self._transport is not None
            self._deciding, self._taken = False, True
            sock = socket.socket(fileno=os.dup(self._transport.get_extra_info("socket").fileno()))
            self._transport.close()
            TASKS.add(task := asyncio.get_running_loop().create_task(serve(gateway, sock, self._head[len(PREAMBLE):])))
            task.add_done_callback(TASKS.discard)

        def eof_received(self) -> bool | None:
            return None if self._taken else self._http.eof_received()

        def connection_lost(self, exc: Exception | None) -> None:
            self._http.connection_lost(exc)

        def pause_writing(self) -> None:
            self._http.pause_writing()

        def resume_writing(self) -> None:
            self._http.resume_writing()

    return Door


TASKS: set[asyncio.Task[None]] = set()  # the doors' connections being served (a task needs a reference to live)


async def serve(gateway: Gateway, sock: socket.socket, head: bytes) -> None:
    """One connection of the door: its request read (holding no thread: a connection that never sends it costs
    a socket until ``REQUEST_SECONDS``), its query answered, its socket closed."""
    loop = asyncio.get_running_loop()
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        payload = await asyncio.wait_for(_request(loop, sock, head, body_limit(gateway.max_sql_bytes)), REQUEST_SECONDS)
        await _answering(loop, gateway, sock, payload)
    except (TimeoutError, OSError):
        pass  # the client left, or never said what it wanted: nothing ran
    except SaferoomError as exc:
        with contextlib.suppress(OSError):
            await loop.sock_sendall(sock, _line(error_body(exc)))
    except Exception:  # a fault of the gateway's: logged, and the client sees its stream cut
        log.exception("the result door failed")
    finally:
        sock.close()


async def _answering(loop: asyncio.AbstractEventLoop, gateway: Gateway, sock: socket.socket,
                     payload: tuple[Asked, str | None]) -> None:
    """The query on a thread of its own, while the loop watches for the client hanging up."""
    cancel, worker, ended = Cancel(), QueryThread(), threading.Event()
    loop.add_reader(sock.fileno(), _watch, sock, cancel, ended, loop)

    def unwatch() -> None:  # from the query's thread: the loop reads no more of the socket once this returns
        asyncio.run_coroutine_threadsafe(_unwatch(loop, sock), loop).result()

    try:
        await worker.run(answer, gateway, sock, payload, cancel, ended, unwatch)
    except BaseException:  # the gateway stopping, or a fault: the query ends with the connection
        cancel(HUNG_UP)
        raise
    finally:
        loop.remove_reader(sock.fileno())
        worker.close()


async def _unwatch(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    loop.remove_reader(sock.fileno())


async def _request(loop: asyncio.AbstractEventLoop, sock: socket.socket, head: bytes,
                   limit: int) -> tuple[Asked, str | None]:
    """The request line, at most ``limit`` bytes, as the HTTP route's request and its Authorization value."""
    while b"\n" not in head:
        if len(head) > limit:
            raise TooLarge(f"the request is over {limit:,} bytes")
        got = await loop.sock_recv(sock, 1 << 16)
        if not got:
            raise OSError("the client left before its request was whole")
        head += got
    line = head.split(b"\n", 1)[0]
    try:
        fields = json.loads(line)
        request = Asked(QueryRequest(sql=fields["sql"], role=fields.get("role"), format="arrow"),
                        fields.get("memory") == 1)
        authorization = fields.get("authorization")
    except (ValueError, TypeError, KeyError, ValidationError):
        raise UsageError("the request is not what the socket's result door takes: one JSON line with sql, role and "
                         "authorization") from None
    if not isinstance(authorization, str | None):
        raise UsageError("authorization must be the token's header value, like \"Bearer sr_...\"")
    return request, authorization


class Asked(NamedTuple):
    """A door's request: the HTTP route's, and whether the client reads its result from memory files."""

    query: QueryRequest
    memory: bool


def answer(gateway: Gateway, sock: socket.socket, request: tuple[Asked, str | None], cancel: Cancel,
           ended: threading.Event, unwatch: Callable[[], None]) -> None:
    """On the query's thread: the decision (and its audit record), then the result, written by the query's worker
    or relayed. Either way the status line leaves after the result record is written: a client that closes as
    soon as it has read it is not taken for one that left early (``ended``). The socket is non-blocking (shared
    with the event loop's watch): each write waits for room, up to the stall limit (``send_within``)."""
    try:
        running, body = begin(gateway, request[0].query, request[1], "arrow", cancel)
    except SaferoomError as exc:  # refused, or not let in: the explanation, as the HTTP route's
        send_within(sock, _line(error_body(exc)), STALL_SECONDS)
        return
    if running.result is not None and running.result.sendable:  # the body, never started, holds nothing
        if request[0].memory:
            unwatch()
        head = _line({"request": running.request_id, **({"memory": 1} if request[0].memory else {})})
        _from_worker(gateway, sock, running, head, ended, request[0].memory)
        return
    head = _line({"request": running.request_id})
    _relay(sock, running, (head, body), ended)


def _from_worker(gateway: Gateway, sock: socket.socket, running: Running, head: bytes, ended: threading.Event,
                 memory: bool) -> None:
    """The worker writes the result to the socket; the result record, then the status line, once it is done."""
    result, sent = running.result, Sent(0, 0, False, None, whole=False)
    assert result is not None
    try:
        sent = result.send_to(sock, head, running.stall, memory)
    finally:
        outcome = Outcome()
        outcome.rows, outcome.error = sent.rows, sent.error
        status = trailer(result, outcome)
        gateway.finish(running, rows=sent.rows, size=sent.bytes + (len(status) if sent.whole else 0),
                       truncated=sent.truncated, error=sent.error)
    if sent.whole:  # else the client left, or the stream stopped mid-message: it ends cut, with no status line
        ended.set()
        with contextlib.suppress(OSError):
            send_within(sock, status, running.stall)


def _relay(sock: socket.socket, running: Running, body: tuple[bytes, Generator[bytes, None, None]],
           ended: threading.Event) -> None:
    """Each chunk leaves once the next is made, so the last (the status line) leaves after the result record."""
    ready: Any = body[0]
    try:
        for chunk in body[1]:
            send_within(sock, ready, running.stall)  # the worker's IPC message as it came: no copy in this process
            ready = chunk
        ended.set()
        send_within(sock, ready, running.stall)
    except OSError:  # a hang-up, or a client that stopped reading (TimeoutError)
        running.cancel(HUNG_UP)
    finally:
        body[1].close()  # the result record, the user's slot given back


def _watch(sock: socket.socket, cancel: Cancel, ended: threading.Event, loop: asyncio.AbstractEventLoop) -> None:
    """The client has closed its end before its query ended: the query is cancelled."""
    try:
        if sock.recv(1 << 12, socket.MSG_DONTWAIT):
            return  # bytes past the request are read and dropped
    except BlockingIOError:
        return
    except OSError:
        pass
    loop.remove_reader(sock.fileno())
    if not ended.is_set():
        cancel(HUNG_UP)


def _line(value: dict[str, Any]) -> bytes:
    return json.dumps(value).encode() + b"\n"
