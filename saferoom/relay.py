"""Doors through a room's wall, each between a Unix socket and one host and port, kept by the room's starter.

:class:`Relay` is a Unix socket that carries each connection to a server reached by URL: a room's door to a
remote gateway (or to a JupyterHub's API). A room has no network, only sockets; when its gateway listens on a
host and port rather than on a socket on this machine, the room's starter opens this relay and the room is
given its socket. The relay goes to that one host and port and nowhere else; for an ``https`` URL it speaks
TLS, verified against the system's certificates, so inside the room the client speaks plain HTTP to the socket.

:class:`Opening` is the other way: a port on this host's loopback whose connections reach a Unix socket a
server in the room listens on (a notebook server, which a JupyterHub outside the room must reach).
"""

from __future__ import annotations

import errno
import os
import selectors
import shutil
import socket
import ssl
import stat
import tempfile
import threading
import urllib.parse
from pathlib import Path
from types import TracebackType

from saferoom.errors import RoomError, UsageError

CONNECT_SECONDS = 30.0
CHUNK = 1 << 20  # a result crosses in large reads, each into the same buffer


class _Door:
    """A listener whose every connection is carried, both ways, to a new connection made by ``_upstream``."""

    def __init__(self) -> None:
        self._folder = Path(tempfile.mkdtemp(prefix="saferoom-relay-"))
        self._thread = threading.Thread(target=self._accept, name="saferoom-relay", daemon=True)

    def _listen(self) -> socket.socket:
        raise NotImplementedError

    def _upstream(self) -> socket.socket:
        raise NotImplementedError

    def _open(self) -> None:
        try:
            self._listener = self._listen()
        except OSError as exc:
            shutil.rmtree(self._folder, ignore_errors=True)
            raise RoomError(f"cannot open the room's door: {exc}") from None
        self._listener.listen()
        self._thread.start()

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
            upstream = self._upstream()
        except OSError:
            client.close()  # the client sees the connection close, and says it cannot reach the server
            return
        try:
            _pump(client, upstream)
        finally:
            upstream.close()
            client.close()


class Relay(_Door):
    """``with Relay(url) as path:`` a socket at ``path`` whose connections reach the server at ``url``."""

    def __init__(self, url: str, option: str = "--gateway") -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"{option} {url!r}: give the server's URL, like https://saferoom.internal:8470")
        super().__init__()
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.tls = ssl.create_default_context() if parts.scheme == "https" else None
        self.path = self._folder / "gateway.sock"

    def __enter__(self) -> Path:
        self._open()
        return self.path

    def _listen(self) -> socket.socket:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        self.path.chmod(0o666)  # the room's account connects to it; the token says who is asking
        return listener

    def _upstream(self) -> socket.socket:
        upstream = socket.create_connection((self.host, self.port), timeout=CONNECT_SECONDS)
        if self.tls is not None:
            upstream = self.tls.wrap_socket(upstream, server_hostname=self.host)
        upstream.settimeout(None)
        return upstream


class Opening(_Door):
    """``with Opening(port) as folder:`` connections to 127.0.0.1:``port`` reach the socket ``SOCKET_NAME`` that a
    server in the room listens on, in ``folder`` (which the room is given, writable, to make it in)."""

    SOCKET_NAME = "server.sock"

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port

    def __enter__(self) -> Path:
        self._open()
        return self._folder

    def _listen(self) -> socket.socket:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))  # loopback only: a hub on this host reaches it, nothing else
        return listener

    def _upstream(self) -> socket.socket:
        """The room's server socket, and only that: the room can write its folder, so a symlink there (or a
        socket someone else made) would have this process, root, connect wherever the room points it. The
        name is opened without following a link, checked to be a socket owned by the folder's owner (the
        room's account), and connected to through that same open file."""
        fd = os.open(self._folder / self.SOCKET_NAME, os.O_PATH | os.O_NOFOLLOW)
        try:
            found, owner = os.fstat(fd), os.stat(self._folder).st_uid
            if not stat.S_ISSOCK(found.st_mode) or found.st_uid != owner:
                raise OSError(errno.EACCES, "the room's published name is not a socket its server made")
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(f"/proc/self/fd/{fd}")
            except OSError:
                upstream.close()
                raise
            return upstream
        finally:
            os.close(fd)


def _pump(one: socket.socket, other: socket.socket) -> None:
    """Copy both ways on one thread until either side ends: a TLS socket must not be read on one thread while
    written on another, and HTTP needs no half-open connection."""
    buffer = memoryview(bytearray(CHUNK))  # one direction at a time, on this one thread
    with selectors.DefaultSelector() as selector:
        selector.register(one, selectors.EVENT_READ, other)
        selector.register(other, selectors.EVENT_READ, one)
        while True:
            for key, _ in selector.select():
                if not _forward(key.fileobj, key.data, buffer):  # type: ignore[arg-type]
                    return


def _forward(source: socket.socket, target: socket.socket, buffer: memoryview) -> bool:
    """Move what ``source`` has (for TLS, also what it decrypted past one read) to ``target``; False at its end."""
    try:
        got = source.recv_into(buffer)
        if not got:
            return False
        target.sendall(buffer[:got])
        while isinstance(source, ssl.SSLSocket) and source.pending():
            got = source.recv_into(buffer, min(source.pending(), len(buffer)))
            target.sendall(buffer[:got])
        return True
    except OSError:
        return False


def _hang_up(sock: socket.socket) -> None:
    """Shut the listener down, which wakes the thread waiting in ``accept``."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass
