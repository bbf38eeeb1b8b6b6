"""Files several processes share: exclusive locks, and flushes that make a rename survive a crash."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO


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


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` whole or not at all: a reader, or a crash, never sees half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
