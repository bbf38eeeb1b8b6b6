"""A Unix socket that carries each connection to a gateway reached by URL: a room's door to a remote gateway.

A room has no network, only a socket; when its gateway listens on a host and port rather than on a
socket on this machine, the room's starter opens this relay and the room is given its socket. The relay
goes to that one host and port and nowhere else; for an ``https`` URL it speaks TLS to the gateway,
verified against the system's certificates, so inside the room the client speaks plain HTTP to the socket.
"""

from __future__ import annotations

import selectors
import shutil
import socket
import ssl
import tempfile
import threading
import urllib.parse
from pathlib import Path
from types import TracebackType

from saferoom.errors import UsageError

CONNECT_SECONDS = 30.0
CHUNK = 1 << 16


class Relay:
    """``with Relay(url) as path:`` a socket at ``path`` whose connections reach the gateway at ``url``."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"--gateway {url!r}: give the gateway's URL, like https://saferoom.internal:8470")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.tls = ssl.create_default_context() if parts.scheme == "https" else None
        self._folder = Path(tempfile.mkdtemp(prefix="saferoom-relay-"))
        self.path = self._folder / "gateway.sock"
        self._thread = threading.Thread(target=self._accept, name="saferoom-relay", daemon=True)

    def __enter__(self) -> Path:
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.path))
        self.path.chmod(0o666)  # the room's account connects to it; the token says who is asking
        self._listener.listen()
        self._thread.start()
        return self.path

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        _hang_up(self._listener)
        self._listener.close()
        self._thread.join()
        shutil.rmtree(self._folder, ignore_errors=True)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # the listener was closed: the room has ended
            threading.Thread(target=self._carry, args=(client,), name="saferoom-relay-conn", daemon=True).start()

    def _carry(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection((self.host, self.port), timeout=CONNECT_SECONDS)
            if self.tls is not None:
                upstream = self.tls.wrap_socket(upstream, server_hostname=self.host)
            upstream.settimeout(None)
        except OSError:
            client.close()  # the client sees the connection close, and says it cannot reach the gateway
            return
        try:
            _pump(client, upstream)
        finally:
            upstream.close()
            client.close()


def _pump(one: socket.socket, other: socket.socket) -> None:
    """Copy both ways on one thread until either side ends: a TLS socket must not be read on one thread while
    written on another, and HTTP needs no half-open connection."""
    with selectors.DefaultSelector() as selector:
        selector.register(one, selectors.EVENT_READ, other)
        selector.register(other, selectors.EVENT_READ, one)
        while True:
            for key, _ in selector.select():
                if not _forward(key.fileobj, key.data):  # type: ignore[arg-type]
                    return


def _forward(source: socket.socket, target: socket.socket) -> bool:
    """Move what ``source`` has (for TLS, also what it decrypted past one read) to ``target``; False at its end."""
    try:
        data = source.recv(CHUNK)
        if not data:
            return False
        target.sendall(data)
        while isinstance(source, ssl.SSLSocket) and source.pending():
            target.sendall(source.recv(source.pending()))
        return True
    except OSError:
        return False


def _hang_up(sock: socket.socket) -> None:
    """Shut the listener down, which wakes the thread waiting in ``accept``."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass
