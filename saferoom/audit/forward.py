"""Forwarding: each committed line of the log, records and checkpoints, sent where the gateway's host
cannot rewrite it.

Destinations, given as ``--audit-forward`` (repeatable):

- ``syslog+tcp://HOST:PORT`` — RFC 5424 messages over TCP with octet-counting framing (RFC 6587), one
  per line of the log, facility 13 (log audit), severity info, APP-NAME ``saferoom``, MSGID ``audit``;
  the message is the line itself.
- ``file:PATH`` — appended to and flushed (fsync) on every commit; meant for a file the gateway may only
  append to (another disk, a mount with ``chattr +a``).

Forwarding is part of the commit and fails closed: the lines are written and flushed locally first, then
sent with bounded timeouts; if a destination cannot take them, the callers waiting on that commit get an
``AuditError`` (the query does not run), the lines stay in the local log, and the destination is sent
everything it missed, in order, at the next commit that reaches it. Delivery is at least once: after a
reconnection the lines since the last checkpoint are sent again, and a verifier accepts identical repeats.
"""

from __future__ import annotations

import os
import select
import socket
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from saferoom.errors import UsageError

TIMEOUT, RETRY = 2.0, 1.0
PRI = 13 * 8 + 6  # facility 13 (log audit), severity 6 (informational)


class ForwardError(OSError):
    """A destination did not take a commit; the lines are in the local log and will be sent again."""


class Destination(ABC):
    name: str

    @abstractmethod
    def connect(self) -> bool:
        """Make sure the destination can be written; True when it was (re)opened, so lines sent on an
        earlier connection may not have arrived."""

    @abstractmethod
    def send(self, data: bytes) -> None:
        """Send whole lines; raise OSError when they may not have arrived."""

    @abstractmethod
    def close(self) -> None: ...


class AppendFile(Destination):
    def __init__(self, path: Path) -> None:
        self.path, self.name = path, f"file:{path}"
        self._fd: int | None = None

    def connect(self) -> bool:
        if self._fd is not None:
            return False
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.send(b"\n")  # ends a line a failed write may have left half-written; readers skip blank lines
        return True

    def send(self, data: bytes) -> None:
        assert self._fd is not None
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class SyslogTCP(Destination):
    def __init__(self, host: str, port: int, timeout: float = TIMEOUT, retry: float = RETRY) -> None:
        self.host, self.port, self.timeout, self.retry = host, port, timeout, retry
        self.name = f"syslog+tcp://{host}:{port}"
        self._sock: socket.socket | None = None
        self._next_try = 0.0
        self._header = f" {_hostname()} saferoom {os.getpid()} audit - ".encode()

    def connect(self) -> bool:
        if self._sock is not None and not _peer_closed(self._sock):
            return False
        self.close()
        if time.monotonic() < self._next_try:
            raise ForwardError(f"{self.name} did not answer; trying again in {self._next_try - time.monotonic():.1f} s")
        try:
            self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError:
            self._next_try = time.monotonic() + self.retry  # a dead server costs one timeout per retry period, not per query
            raise
        return True

    def send(self, data: bytes) -> None:
        assert self._sock is not None
        stamp = b"<%d>1 " % PRI + datetime.now(UTC).isoformat(timespec="microseconds").encode() + self._header
        frames = b"".join(b"%d %s%s" % (len(stamp) + len(text), stamp, text) for text in data.splitlines() if text)
        try:
            self._sock.sendall(frames)
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _hostname() -> str:
    name = socket.gethostname()
    return name if name and name.isascii() and " " not in name else "-"


def _peer_closed(sock: socket.socket) -> bool:
    """A syslog server never writes back: a readable socket means it closed or reset the connection."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def destination(spec: str, timeout: float = TIMEOUT) -> Destination:
    """A destination from its ``--audit-forward`` form; a clear error for anything else."""
    if spec.startswith("file:") and spec[5:]:
        return AppendFile(Path(spec[5:]).expanduser().absolute())
    if spec.startswith("syslog+tcp://"):
        url = urlsplit(spec)
        try:
            port = url.port or 514
        except ValueError:
            port = 0
        if url.hostname and 0 < port < 65536 and url.path in ("", "/"):
            return SyslogTCP(url.hostname, port, timeout)
    raise UsageError(f"cannot forward the audit log to {spec!r}: use syslog+tcp://HOST:PORT or file:PATH")


@dataclass
class _Target:
    destination: Destination
    offset: int  # the log's bytes before this were sent


class Forwarder:
    """Sends each commit's bytes to every destination, catching each up from the log when it fell behind."""

    def __init__(self, destinations: list[Destination], log: Path, offset: int, rewind: int) -> None:
        self._targets = [_Target(d, offset) for d in destinations]
        self._log = log
        self.rewind = rewind  # where a reconnected destination starts again: the last checkpoint

    def send(self, start: int, data: bytes) -> ForwardError | None:
        """Forward the bytes the log holds at ``start``; the error names every destination that failed."""
        failed = []
        for target in self._targets:
            try:
                self._catch_up(target, start, data)
            except OSError as exc:
                failed.append(f"{target.destination.name} ({exc.strerror or exc})")
        if failed:
            return ForwardError(f"the audit record could not be forwarded to {', '.join(failed)}; it is in the local "
                                "log and will be sent when the destination answers")
        return None

    def _catch_up(self, target: _Target, start: int, data: bytes) -> None:
        if target.destination.connect():
            target.offset = min(target.offset, self.rewind)
        missed = self._read(target.offset, start) if target.offset < start else b""
        target.destination.send(missed + data)
        target.offset = start + len(data)

    def _read(self, begin: int, end: int) -> bytes:
        with self._log.open("rb") as handle:
            handle.seek(begin)
            return handle.read(end - begin)

    def close(self) -> None:
        for target in self._targets:
            target.destination.close()
