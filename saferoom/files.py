"""Files several processes share: exclusive locks, flushes that make a rename survive a crash, and writes to a
socket a reader may stop taking bytes from."""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def fsync_dir(folder: Path) -> None:
    """Flush ``folder``'s entries, so a file created or renamed in it is there after a power cut."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def try_lock(path: Path) -> IO[str] | None:
    """An exclusive lock on ``path`` (created if missing), held until the returned file is closed;
    None when another process holds it. The OS drops it if the holder dies, even by kill -9."""
    handle = path.open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def socket_path_problem(path: Path, *, listening: bool) -> str | None:
    """Why a Unix socket at ``path`` cannot be trusted, or None.

    A socket is found by name, so whoever can make that name first can squat it and be the gateway to whoever
    connects (and read their token). Every folder on the way must be one only this account or root can add
    names to (a world-writable folder such as /tmp only with its sticky bit, which keeps others from replacing
    names they do not own), owned by this account or root; the socket's own folder may belong to another account
    (the gateway's) when root gave it to that account, in a folder only root writes. An existing socket must
    belong to one of them too. ``listening``: for the gateway itself, which must own its folder outright.
    """
    trusted = {0, os.geteuid()}
    folder = Path(os.path.realpath(path.parent))
    for above in reversed(folder.parents):
        found = _open_to_others(above) or _owner_problem(above, trusted)
        if found:
            return found
    owner = os.stat(folder).st_uid
    parent_closed = not os.stat(folder.parent).st_mode & 0o022
    if owner not in trusted and (listening or not parent_closed):
        return f"the folder {folder} belongs to uid {owner}, who could replace the socket in it"
    return _open_to_others(folder) or _socket_problem(folder / path.name, {*trusted, owner})


def _open_to_others(folder: Path) -> str | None:
    mode = os.stat(folder).st_mode
    if mode & 0o022 and not mode & stat.S_ISVTX:
        return f"the folder {folder} is writable by other accounts (mode {stat.filemode(mode)}, no sticky bit)"
    return None


def _owner_problem(folder: Path, trusted: set[int]) -> str | None:
    owner = os.stat(folder).st_uid
    return None if owner in trusted else f"the folder {folder} belongs to uid {owner}, who could rename what it holds"


def _socket_problem(path: Path, trusted: set[int]) -> str | None:
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISSOCK(found.st_mode):
        return f"{path} is not a socket"
    if found.st_uid not in trusted:
        return f"the socket {path} belongs to uid {found.st_uid}: another account may have made it first"
    return None


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created if missing) for the block, waiting for another holder to let go."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` whole or not at all: a reader, or a crash, never sees half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def send_within(sock: socket.socket, data: Any, stall: float) -> None:
    """All of ``data`` on a non-blocking socket, waiting while the reader's buffer is full; a reader that takes no
    byte for ``stall`` seconds has left (``TimeoutError``): without that, one that stops reading would hold
    whatever writes to it for ever."""
    view, writable = memoryview(data).cast("B"), select.poll()  # poll: a gateway's descriptors can pass select's 1024
    writable.register(sock, select.POLLOUT)
    while view:
        try:
            view = view[sock.send(view):]
        except BlockingIOError:
            if not writable.poll(stall * 1000):
                raise TimeoutError(f"the client took no byte of its result for {stall:g} s") from None
