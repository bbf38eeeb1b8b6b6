"""A gateway's result as it streams in: an Arrow IPC stream decoded batch by batch, then the status line.

The client (:mod:`saferoom.client`) hands :class:`RemoteResult` a file over the response body: over the
gateway's Unix socket, :class:`SocketBody`, whose every block is read straight from the socket (through the
result door, :class:`DoorSource`; by the standard library's HTTP client from a gateway without it); over TCP,
:class:`ChunksFile` over httpx's chunks. Kept apart from the client so that what only asks the gateway
questions (a room's start asks whose token it is) never loads Arrow.
"""

from __future__ import annotations

import http.client
import io
import json
import socket
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import pyarrow as pa

from saferoom.chunks import ChunkReader
from saferoom.errors import EngineError, from_fields
from saferoom.result import Result


class RemoteResult(Result):
    """Batches decoded as the stream arrives (or read where they lie, from the result door's memory files);
    the trailer says whether the result was cut, and its notices."""

    def __init__(self, body: io.RawIOBase | Callable[[], ChunkReader], close: Callable[[], None],
                 request_id: str | None) -> None:
        try:
            reader = body() if callable(body) else pa.ipc.open_stream(body)
        except (OSError, EOFError) as exc:
            close()
            raise cut(exc) from None
        except BaseException:
            close()
            raise
        if isinstance(reader, ChunkReader):
            self._rest, self._close = reader.rest, _both(reader.close, close)
        else:
            self._rest, self._close = body.read, close  # type: ignore[union-attr]
        super().__init__(pa.RecordBatchReader.from_batches(reader.schema, self._receive(reader)), max_rows=None)
        self.request_id = request_id

    def _receive(self, reader: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        try:
            try:
                yield from reader
            except (OSError, EOFError) as exc:
                raise cut(exc) from None
            line = self._rest()
            if not line:  # every stream ends with its status line: without it, it was cut at a batch's edge
                raise cut(EOFError("no status line"))
            status = json.loads(line)
            self._truncated = bool(status.get("truncated"))
            self._notices = tuple(str(n) for n in status.get("notices") or ())  # the cut's among them, if any
            if "error" in status:
                raise from_fields(status["error"]["type"], status["error"]["message"], status["error"])
        finally:
            self._close()


def _both(first: Callable[[], None], then: Callable[[], None]) -> Callable[[], None]:
    def close() -> None:
        try:
            first()
        finally:
            then()

    return close


class Readable(Protocol):
    """What :class:`SocketBody` reads: an http.client response, or a :class:`DoorSource`."""

    def readinto(self, buffer: Any) -> int: ...

    def read(self) -> bytes: ...


class DoorSource:
    """The socket past the result door's answer line (see saferoom/server/door.py): the bytes that arrived with
    that line first, then the socket's, each read straight into the buffer Arrow asked for."""

    def __init__(self, sock: socket.socket, ahead: bytes) -> None:
        self._sock, self._ahead = sock, memoryview(ahead)

    def readinto(self, buffer: Any) -> int:
        if not self._ahead:
            return self._sock.recv_into(buffer)
        size = min(len(buffer), len(self._ahead))
        buffer[:size], self._ahead = self._ahead[:size], self._ahead[size:]
        return size

    def read(self) -> bytes:
        """The rest, to the end of the stream."""
        block, chunks = bytearray(1 << 16), []
        while got := self.readinto(block):
            chunks.append(bytes(block[:got]))
        return b"".join(chunks)


class SocketBody(io.RawIOBase):
    """A body whose ``read(n)`` fills one buffer of n bytes straight from the socket: an http.client response
    (which decodes the chunks; past its small buffer, its reads go into ours) or the result door's stream. No
    copy but the kernel's."""

    def __init__(self, response: Readable) -> None:
        self._response = response

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        filled = 0
        try:
            while filled < len(view) and (got := self._response.readinto(view[filled:])):
                filled += got
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise cut(exc) from None
        return filled

    def read(self, size: int = -1) -> bytes | bytearray:
        if size < 0:
            try:
                return self._response.read()
            except (OSError, ValueError, http.client.HTTPException) as exc:
                raise cut(exc) from None
        block = bytearray(size)
        filled = self.readinto(block)
        return block if filled == size else block[:filled]


class ChunksFile(io.RawIOBase):
    """Chunks as a file whose ``read(n)`` returns exactly n bytes (Arrow expects it).

    Each byte is copied once, from the network chunk into the block Arrow asked for. The chunks raise
    :func:`cut` if the stream ends early.
    """

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._chunk = memoryview(b"")
        self._at = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes | bytearray:
        if size < 0:
            return b"".join([bytes(self._chunk[self._at:]), *self._chunks])
        if len(self._chunk) - self._at >= size:
            self._at += size
            return self._chunk[self._at - size : self._at].tobytes()
        out = bytearray(size)
        filled = 0
        while filled < size and self._more():
            take = min(size - filled, len(self._chunk) - self._at)
            out[filled : filled + take] = self._chunk[self._at : self._at + take]
            self._at += take
            filled += take
        return out if filled == size else out[:filled]

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def _more(self) -> bool:
        while self._at >= len(self._chunk):
            chunk = next(self._chunks, None)
            if chunk is None:
                return False
            self._chunk, self._at = memoryview(chunk), 0
        return True


def cut(exc: Exception) -> EngineError:
    """The error of a stream that ended before its result did."""
    return EngineError(f"the gateway closed the stream before the end of the result ({exc!r}); what arrived is "
                       "incomplete: run the query again")
