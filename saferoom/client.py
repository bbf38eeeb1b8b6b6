"""The gateway client: the same session API as embedded mode, over HTTP.

Results arrive as an Arrow IPC stream and are decoded batch by batch as the
bytes come in; nothing buffers the whole body. Errors arrive as the same
exception classes, with the same explanations, as in embedded mode.

Over the gateway's Unix socket (a room's only way out), whoami and queries go through the standard library's
HTTP client: each block Arrow asks for is filled straight from the socket, with no copy but the kernel's and no
Python work per network read, which is what the socket's throughput rests on (see bench/room.py). The other
JSON routes, and everything over TCP (TLS, proxies), go through httpx, loaded when first needed: a room's start
(whoami, then nothing) loads neither httpx nor Arrow.
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import socket as sockets
import ssl
import urllib.parse
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from saferoom.decision import Decision, TableInfo
from saferoom.errors import AuthError, SaferoomError, UsageError, from_fields
from saferoom.files import atomic_write

if TYPE_CHECKING:
    import httpx

    from saferoom.chunks import MemoryFiles
    from saferoom.result import Result

CHUNK = 1 << 20
DOOR = b"SAFEROOM-ARROW/1 "  # opens a request to the gateway's result door; no HTTP method looks like it
ANSWER_LINE = 1 << 16  # the door's answer line is short: an id, or an error and its explanation
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
            self._trust = ssl.create_default_context(cafile=verify) if isinstance(verify, str) else verify  # a CA bundle's path
        except (OSError, ssl.SSLError) as exc:
            raise UsageError(f"the CA bundle {verify} cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
        self._socket = str(socket) if socket else None
        self._headers = {"Authorization": f"Bearer {token}"}
        self._streams: weakref.WeakSet[_SocketConnection] = weakref.WeakSet()  # results still streaming, closed with the session
        me = self._whoami(role)
        self.user: str = me["user"]
        self.role: str = me["role"]
        self.dialect: str = me.get("dialect") or "duckdb"  # a gateway from before it said so ran DuckDB
        self.requested_role = role
        self._door = bool(me.get("door")) and self._socket is not None  # the gateway's result door on this socket

    def query(self, sql: str) -> Result:
        from saferoom.streamed import ChunksFile, RemoteResult, SocketBody  # Arrow: loaded by the first query

        payload = {"sql": sql, "role": self.requested_role}
        if self._door:
            connection, body, request_id = self._through_door(payload)
            return RemoteResult(body if callable(body) else SocketBody(body), connection.close, request_id)
        if self._socket is not None:
            connection, answer = self._over_socket("POST", "/v1/query", json.dumps(payload).encode(), ARROW)
            return RemoteResult(SocketBody(answer), connection.close, answer.getheader("X-Saferoom-Request"))
        response = self._send(self._http.build_request("POST", "/v1/query", json=payload), stream=True)
        return RemoteResult(ChunksFile(_chunks(response)), response.close, response.headers.get("X-Saferoom-Request"))

    def _whoami(self, role: str | None) -> Any:
        if self._socket is None:
            return self._json("GET", "/v1/whoami", params=_role(role))
        connection, answer = self._over_socket("GET", f"/v1/whoami?{urllib.parse.urlencode(_role(role))}", None, "application/json")
        try:
            return json.loads(answer.read())
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise UsageError(f"cannot reach the gateway at {self.url}: {exc}") from None
        finally:
            connection.close()

    def _over_socket(self, method: str, target: str, payload: bytes | None,
                     expected: str) -> tuple[_SocketConnection, http.client.HTTPResponse]:
        """A request on a connection of its own to the socket, with http.client; its answer checked, its body unread."""
        assert self._socket is not None
        connection = _SocketConnection(self._socket)
        self._streams.add(connection)
        headers = {**self._headers, **({"Content-Type": "application/json"} if payload is not None else {})}
        try:
            connection.request(method, target, body=payload, headers=headers)
            answer = connection.getresponse()
            problem = self._problem(answer.status, answer.getheader("content-type", ""), answer.read, expected)
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise UsageError(f"cannot reach the gateway at {self.url}: {exc}") from None
        if problem is not None:
            connection.close()
            raise problem
        return connection, answer

    def _through_door(self, payload: dict[str, Any]) -> tuple[_SocketConnection, Any, str | None]:
        """A query through the gateway's result door (saferoom/server/door.py): one request line, one answer line,
        then the Arrow stream read straight from the socket, no HTTP framing to undo."""
        assert self._socket is not None
        from saferoom import chunks
        from saferoom.streamed import DoorSource

        connection = _SocketConnection(self._socket)
        self._streams.add(connection)
        request = {**payload, "authorization": self._headers["Authorization"], **({"memory": 1} if chunks.available() else {})}
        try:
            connection.connect()
            connection.sock.sendall(DOOR + json.dumps(request).encode() + b"\n")
            line, ahead = _answer_line(connection.sock)
            answer = json.loads(line or b"null")
        except (OSError, ValueError) as exc:
            connection.close()
            raise UsageError(f"cannot reach the gateway at {self.url}: {exc}") from None
        if not isinstance(answer, dict) or "error" in answer:
            connection.close()
            error = answer.get("error") if isinstance(answer, dict) else None
            if not isinstance(error, dict):
                raise UsageError(f"{self.url} did not answer as a saferoom gateway's result door; check the socket")
            raise from_fields(error.get("type", "SaferoomError"), error.get("message", ""), error)
        if answer.get("memory") == 1:  # the result in memory files this process gives (saferoom/chunks.py)
            sock = connection.sock
            return connection, lambda: chunks.ChunkReader(sock, self._memory, ahead), answer.get("request")
        return connection, DoorSource(connection.sock, ahead), answer.get("request")

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
        if "_http" in self.__dict__:  # made by a route that needed it
            self._http.close()
        if "_memory" in self.__dict__:
            self._memory.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RemoteSession user={self.user!r} role={self.role!r} url={self.url!r}>"

    @functools.cached_property
    def _memory(self) -> MemoryFiles:
        """The memory files results through the door are read from, kept for the next result."""
        from saferoom.chunks import MemoryFiles

        return MemoryFiles()

    @functools.cached_property
    def _http(self) -> httpx.Client:
        """httpx, for the JSON routes and for results over TCP. Over a socket the host name is only a label in the
        request line: the socket alone says where it goes, and no TLS is spoken on it, so no certificate store is
        loaded."""
        import httpx

        transport = httpx.HTTPTransport(uds=self._socket, verify=False) if self._socket else None
        return httpx.Client(base_url=SOCKET_BASE if self._socket else self.url, transport=transport, headers=self._headers,
                            timeout=httpx.Timeout(CONNECT_SECONDS, read=None), verify=self._trust)

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(self._http.build_request(method, path, **kwargs))
        return response.json()

    def _send(self, request: httpx.Request, stream: bool = False) -> httpx.Response:
        import httpx

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


def _answer_line(sock: sockets.socket) -> tuple[bytes, bytes]:
    """The door's answer line, and what arrived after it (the stream's first bytes)."""
    received = b""
    while b"\n" not in received:
        got = sock.recv(ANSWER_LINE)
        if not got or len(received) > ANSWER_LINE:
            raise ValueError("the answer line did not arrive whole")
        received += got
    line, ahead = received.split(b"\n", 1)
    return line, ahead


def _chunks(response: httpx.Response) -> Iterator[bytes]:
    """The body's chunks as httpx reads them; a stream that ends early raises :func:`saferoom.streamed.cut`."""
    import httpx

    from saferoom.streamed import cut

    try:
        yield from response.iter_raw()
    except httpx.HTTPError as exc:
        raise cut(exc) from None


def _error(status: int, body: bytes) -> SaferoomError:
    try:
        error = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return SaferoomError(f"the gateway answered {status}: {body[:200].decode(errors='replace')}")
    return from_fields(error.get("type", "SaferoomError"), error.get("message", ""), error)


def _role(role: str | None) -> dict[str, str]:
    return {"role": role} if role else {}

