"""The gateway client: the same session API as embedded mode, over HTTP.

Results arrive as an Arrow IPC stream and are decoded batch by batch as the
bytes come in; nothing buffers the whole body. Errors arrive as the same
exception classes, with the same explanations, as in embedded mode.

Over the gateway's Unix socket (a room's only way out), a result is read with the standard library's HTTP
client: each block Arrow asks for is filled straight from the socket, with no copy but the kernel's and no
Python work per network read, which is what the socket's throughput rests on (see bench/room.py). The JSON
routes, and everything over TCP (TLS, proxies), go through httpx.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import socket as sockets
import ssl
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
import pyarrow as pa

from saferoom.decision import Decision, TableInfo
from saferoom.errors import AuthError, EngineError, SaferoomError, UsageError, from_fields
from saferoom.files import atomic_write
from saferoom.result import Result

CHUNK = 1 << 20
CONNECT_SECONDS = 30.0
ARROW = "application/vnd.apache.arrow.stream"  # the gateway's result media type
SOCKET_BASE = "http://saferoom.socket"


def credentials_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "saferoom" / "credentials.json"


def save_credentials(url: str, token: str) -> Path:
    """What `saferoom login` writes: readable by its owner only."""
    path = credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(path, json.dumps({"url": url, "token": token}).encode())  # mode 0600
    return path


def load_credentials() -> dict[str, str]:
    try:
        saved: dict[str, str] = json.loads(credentials_path().read_text())
    except (OSError, ValueError):
        return {}
    return saved


class RemoteSession:
    """A session against a gateway: ``query``, ``tables``, ``explain``, as embedded."""

    def __init__(self, url: str | None, token: str, role: str | None = None, *, verify: bool | str = True,
                 socket: str | Path | None = None) -> None:
        """A gateway at ``url``, or on the Unix socket ``socket`` (a room's only way out)."""
        if not token:
            raise AuthError("no token: pass token=, set SAFEROOM_TOKEN, or run `saferoom login`")
        if (url is None) == (socket is None):
            raise UsageError("give the gateway's url or its socket, not both")
        self.url = f"unix:{socket}" if socket else str(url).rstrip("/")
        try:
            trust = ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify  # a CA bundle's path
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"the CA bundle {verify} cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
        # over a socket the host name is only a label in the request line: the socket alone says where it goes,
        # and no TLS is spoken on it, so no certificate store is loaded (a tenth of a second of every room's start)
        transport = httpx.HTTPTransport(uds=str(socket), verify=False) if socket else None
        self._socket = str(socket) if socket else None
        self._headers = {"Authorization": f"Bearer {token}"}
        self._streams: weakref.WeakSet[_SocketConnection] = weakref.WeakSet()  # results still streaming, closed with the session
        self._http = httpx.Client(base_url=SOCKET_BASE if socket else self.url, transport=transport, headers=self._headers,
                                  timeout=httpx.Timeout(30.0, read=None), verify=trust)
        me = self._json("GET", "/v1/whoami", params=_role(role))
        self.user: str = me["user"]
        self.role: str = me["role"]
        self.dialect: str = me.get("dialect") or "duckdb"  # a gateway from before it said so ran DuckDB
        self.requested_role = role

    def query(self, sql: str) -> Result:
        payload = {"sql": sql, "role": self.requested_role}
        if self._socket is not None:
            return self._socket_query(self._socket, json.dumps(payload).encode())
        response = self._send(self._http.build_request("POST", "/v1/query", json=payload), stream=True)
        return RemoteResult(_ResponseFile(response.iter_raw()), response.close, response.headers.get("X-Saferoom-Request"))

    def _socket_query(self, path: str, payload: bytes) -> RemoteResult:
        """The query over the socket with http.client, whose body is read straight into Arrow's blocks."""
        connection = _SocketConnection(path)
        self._streams.add(connection)
        try:
            connection.request("POST", "/v1/query", body=payload, headers={**self._headers, "Content-Type": "application/json"})
            response = connection.getresponse()
            problem = self._problem(response.status, response.getheader("content-type", ""), response.read, ARROW)
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise UsageError(f"cannot reach the gateway at {self.url}: {exc}") from None
        if problem is not None:
            connection.close()
            raise problem
        return RemoteResult(_SocketBody(response), connection.close, response.getheader("X-Saferoom-Request"))

    def tables(self) -> list[TableInfo]:
        return [TableInfo.from_dict(t) for t in self._json("GET", "/v1/tables", params=_role(self.requested_role))]

    def explain(self, sql: str) -> Decision:
        return Decision.from_dict(self._json("POST", "/v1/explain", json={"sql": sql, "role": self.requested_role}))

    def audit(self, limit: int = 200) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = self._json("GET", "/v1/audit", params={"limit": limit, **_role(self.requested_role)})
        return records

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """A JSON route of the gateway (the request engine's, for instance), errors raised as saferoom's."""
        return self._json(method, path, **kwargs)

    def close(self) -> None:
        for connection in list(self._streams):  # a result still streaming ends: the gateway cancels its query
            connection.close()
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RemoteSession user={self.user!r} role={self.role!r} url={self.url!r}>"

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(self._http.build_request(method, path, **kwargs))
        return response.json()

    def _send(self, request: httpx.Request, stream: bool = False) -> httpx.Response:
        try:
            response = self._http.send(request, stream=stream)
        except httpx.HTTPError as exc:
            raise UsageError(f"cannot reach the gateway at {self.url}: {exc}") from None
        expected = ARROW if request.url.path.endswith("/v1/query") else "application/json"
        problem = self._problem(response.status_code, response.headers.get("content-type", ""), response.read, expected)
        if problem is not None:
            response.close()
            raise problem
        return response

    def _problem(self, status: int, kind: str, body: Callable[[], bytes], expected: str) -> SaferoomError | None:
        """The error a response is (its body read), or one that is not the gateway's kind of answer."""
        if status >= 400:
            return _error(status, body())
        if not kind.startswith(expected):  # a proxy's login page or another server: nothing of it is read as data
            return UsageError(f"{self.url} did not answer as a saferoom gateway (it sent {kind or 'no content type'}); "
                              "check the URL or SAFEROOM_URL (or the socket)")
        return None


class RemoteResult(Result):
    """Batches decoded as the stream arrives; the trailer says whether the result was cut, and its notices."""

    def __init__(self, body: io.RawIOBase, close: Callable[[], None], request_id: str | None) -> None:
        self._body, self._close = body, close
        try:
            reader = pa.ipc.open_stream(body)
        except BaseException:
            close()
            raise
        super().__init__(pa.RecordBatchReader.from_batches(reader.schema, self._receive(reader)), max_rows=None)
        self.request_id = request_id

    def _receive(self, reader: pa.ipc.RecordBatchStreamReader) -> Iterator[pa.RecordBatch]:
        try:
            yield from reader
            status = json.loads(self._body.read() or b"{}")
            self._truncated = bool(status.get("truncated"))
            self._notices = tuple(str(n) for n in status.get("notices") or ())  # the cut's among them, if any
            if "error" in status:
                raise from_fields(status["error"]["type"], status["error"]["message"], status["error"])
        finally:
            self._close()


class _ResponseFile(io.RawIOBase):
    """The response body as a file whose ``read(n)`` returns exactly n bytes (Arrow expects it).

    Each byte is copied once, from the network chunk into the block Arrow asked for.
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
            try:
                self._chunk, self._at = memoryview(next(self._chunks)), 0
            except StopIteration:
                return False
            except httpx.HTTPError as exc:
                raise _cut(exc) from None
        return True


class _SocketConnection(http.client.HTTPConnection):
    """HTTP/1.1 to the gateway's Unix socket; the host name is only a label in the request."""

    def __init__(self, path: str) -> None:
        super().__init__(SOCKET_BASE.removeprefix("http://"), timeout=CONNECT_SECONDS)
        self._path = path

    def connect(self) -> None:
        sock = sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM)
        try:
            sock.settimeout(CONNECT_SECONDS)
            sock.connect(self._path)
            sock.settimeout(None)  # a result takes as long as its query: no read timeout, as over httpx
        except OSError:
            sock.close()
            raise
        self.sock = sock


class _SocketBody(io.RawIOBase):
    """An http.client response body whose ``read(n)`` fills one buffer of n bytes straight from the socket
    (http.client decodes the chunks; past its small buffer, its reads go into ours)."""

    def __init__(self, response: http.client.HTTPResponse) -> None:
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
            raise _cut(exc) from None
        return filled

    def read(self, size: int = -1) -> bytes | bytearray:
        if size < 0:
            try:
                return self._response.read()
            except (OSError, ValueError, http.client.HTTPException) as exc:
                raise _cut(exc) from None
        block = bytearray(size)
        filled = self.readinto(block)
        return block if filled == size else block[:filled]


def _cut(exc: Exception) -> EngineError:
    return EngineError(f"the gateway closed the stream before the end of the result ({exc!r}); what arrived is "
                       "incomplete: run the query again")


def _error(status: int, body: bytes) -> SaferoomError:
    try:
        error = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return SaferoomError(f"the gateway answered {status}: {body[:200].decode(errors='replace')}")
    return from_fields(error.get("type", "SaferoomError"), error.get("message", ""), error)


def _role(role: str | None) -> dict[str, str]:
    return {"role": role} if role else {}

