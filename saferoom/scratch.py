"""Scratch folders: files that must not outlive the process that wrote them, even one killed with -9.

DuckDB spills rows of a query to disk, and a gateway keeps uploads under review and local copies of them;
both are data. A process removes its own scratch folders when it ends normally, but a process killed with
``kill -9`` (or by the kernel when memory runs out) removes nothing. So each scratch folder holds a lock
file that its process keeps locked; the next process of the same account that makes a scratch folder of
the same kind removes every one whose lock is free, that is whose process has ended, however it ended.

>>> folder = make("saferoom-doctest-")
>>> (folder / "rows").write_text("spilled")
7
>>> sweep("saferoom-doctest-")  # its process (this one) still holds it
[]
>>> remove(folder); folder.exists()
False
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
import tempfile
import threading
from pathlib import Path
from typing import IO

HELD = ".held"  # the lock file: locked by the folder's process for as long as it lives
_held: dict[str, IO[bytes]] = {}
_guard = threading.Lock()


def make(prefix: str) -> Path:
    """A new folder (mode 0700) in the system's temporary folder, after removing this kind's orphans.

    The lock file is locked under a passing name and only then renamed to :data:`HELD`, so a sweep never
    finds a folder whose lock file is not yet held."""
    sweep(prefix)
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    claim = tempfile.NamedTemporaryFile(dir=folder, prefix=".claim-", delete=False)
    fcntl.flock(claim, fcntl.LOCK_EX)
    os.rename(claim.name, folder / HELD)
    with _guard:
        _held[str(folder)] = claim
    return folder


def remove(folder: Path | str) -> None:
    """Remove a folder :func:`make` made, with everything in it; its lock goes last."""
    shutil.rmtree(folder, ignore_errors=True)
    with _guard:
        claim = _held.pop(str(folder), None)
    if claim is not None:
        claim.close()


def sweep(prefix: str) -> list[Path]:
    """Remove this account's scratch folders of this kind whose process has ended; returns them."""
    removed = []
    with contextlib.suppress(OSError), os.scandir(tempfile.gettempdir()) as entries:
        for entry in entries:
            if entry.name.startswith(prefix) and _ours(entry) and _orphaned(Path(entry.path)):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(Path(entry.path))
    return removed


def _ours(entry: os.DirEntry[str]) -> bool:
    """A real folder (not a link to one) of this account: another account's files are not this one's to judge."""
    try:
        info = entry.stat(follow_symlinks=False)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()


def _orphaned(folder: Path) -> bool:
    """True when the folder's lock file is there and no process holds it. A folder without one is left: it
    is being made, or is not a scratch folder of this kind."""
    try:
        fd = os.open(folder / HELD, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a lock is per open file: this process's own folders hold too
    except OSError:
        return False
    finally:
        os.close(fd)
    return True
