"""CPU priority of threads: work that runs long yields the processor to work that runs short.

On Linux each thread has its own nice value. An unprivileged process can lower a thread's priority but
never raise it again, so only what will not serve anything short afterwards is lowered: a query's own
thread, or a query's own process, once the query has run long.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path

SHORT_SECONDS = 0.25  # work that has used this much processor time is long: it is lowered, so that short work keeps it
LONG_SECONDS = 2.0  # work still running after this (waiting, not computing) is long too
_TICKS = os.sysconf("SC_CLK_TCK")  # Linux: /proc is read only there
LOW = 10  # CFS gives a nice-10 thread about a tenth of a nice-0 thread's share of a busy processor


def cpu_seconds(pid: int) -> float:
    """Processor time a process has used, all its threads together; 0 where there is no /proc to tell."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return 0.0
    fields = stat[stat.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime (proc(5)), in clock ticks


def lower(thread_id: int | None = None) -> None:
    """Move a thread (this one by default) to the low priority; where threads have none, nothing changes.

    On Linux that is SCHED_IDLE: the thread runs only when no other wants the processor, and any other that
    wakes takes it at once (a nice value alone still let long queries take half the processor and delay
    every wake-up of a short one). The nice value is raised too, for systems without SCHED_IDLE."""
    thread = thread_id or threading.get_native_id()
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, thread, LOW)
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(thread, os.SCHED_IDLE, os.sched_param(0))


def lower_process(pid: int) -> None:
    """Move every thread of another process (a query's own) to the low priority."""
    try:
        threads = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        threads = [pid]  # no /proc: the process's main thread is what there is
    for thread in threads:
        lower(thread)


class Background:
    """Processes of long work, stopped while any short work runs, and let run again when none does.

    A low CPU priority alone still let long queries take a third of the processor from short ones: each
    short query hands its work between several threads and processes, and every hand-off waited for a core
    that a long query was using. A stopped process takes none. Long work therefore runs only in the gaps
    between short work, which is what it was promised: the processor when nothing short wants it.

    The caller adds a process only while it is its child and not yet reaped, and discards it before reaping
    it, so a pid here never names a stranger's process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pids: set[int] = set()
        self._short = 0

    def add(self, pid: int) -> None:
        """``pid`` now runs long work: stopped at once if short work is running."""
        with self._lock:
            self._pids.add(pid)
            if self._short:
                _signal(pid, signal.SIGSTOP)

    def discard(self, pid: int) -> None:
        """``pid`` is ending (or must hear a stop): it runs again and is no longer managed."""
        with self._lock:
            if pid in self._pids:
                self._pids.remove(pid)
                _signal(pid, signal.SIGCONT)

    def enter(self) -> None:
        """Short work starts: the first stops every long process."""
        with self._lock:
            self._short += 1
            if self._short == 1:
                self._send(signal.SIGSTOP)

    def leave(self) -> None:
        """Short work ends (or became long): the last lets every long process run again."""
        with self._lock:
            self._short -= 1
            if self._short == 0:
                self._send(signal.SIGCONT)

    def _send(self, signum: signal.Signals) -> None:
        for pid in self._pids:
            _signal(pid, signum)


def _signal(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(OSError):  # already ended: nothing to stop or continue
        os.kill(pid, signum)


BACKGROUND = Background()  # one per server process: short work anywhere in it pauses long work everywhere in it
