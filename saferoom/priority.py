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
import time
import weakref
from pathlib import Path

SHORT_SECONDS = 0.25  # work that has used this much processor time is long: it is lowered, so that short work keeps it
LONG_SECONDS = 2.0  # short work still running after this (waiting, not computing) no longer holds long work back
RECENT_SECONDS = 2.0  # a user whose long work ended this recently starts new work as long work
QUIET_SECONDS = 0.02  # long work continues once no short work has run for this long
SHARE_EVERY, SHARE_SECONDS = 1.0, 0.05  # however busy, long work runs 50 ms of every second: slowed, never starved
_TICKS = os.sysconf("SC_CLK_TCK")  # Linux: /proc is read only there
LOW = 10  # CFS gives a nice-10 thread about a tenth of a nice-0 thread's share of a busy processor


def cpu_seconds(pid: int) -> float:
    """Processor time a process has used, all its threads together; 0 where there is no /proc to tell."""
    return _seconds(Path(f"/proc/{pid}/stat"))


def _seconds(stat_file: Path) -> float:
    try:
        stat = stat_file.read_bytes()
    except OSError:
        return 0.0
    fields = stat[stat.rfind(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime (proc(5)), in clock ticks


def thread_cpu_seconds(thread_id: int) -> float:
    """Processor time one thread of this process has used; 0 where there is no /proc to tell (or it has ended)."""
    return _seconds(Path(f"/proc/self/task/{thread_id}/stat"))


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


class Process:
    """Another process, signalled through a pidfd taken while it runs: once it is reaped its pid may name a
    stranger's process, or a thread of this one (``kill`` of a thread's id signals its whole process), and
    the kernel refuses a signal through the pidfd however the number was handed on.

    Where there are no pidfds (an old kernel) signals go by pid, so the caller must not signal a process it
    has reaped. The pidfd is closed when the object is collected."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.pidfd = _pidfd(pid)
        if self.pidfd is not None:
            weakref.finalize(self, os.close, self.pidfd)

    def signal(self, signum: signal.Signals) -> None:
        """Send ``signum``; nothing happens when the process has ended."""
        with contextlib.suppress(OSError):  # already ended: nothing to stop, continue or interrupt
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, signum)
            else:
                os.kill(self.pid, signum)


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # an old kernel, or the process has ended already
        return None


class Background:
    """Processes of long work, stopped while short work runs and continued once none has run for a moment.

    A low CPU priority alone still let long queries take a third of the processor from short ones: each
    short query hands its work between several threads and processes, and every hand-off waited for a core
    that a long query was using. A stopped process takes none. Long work therefore runs in the gaps short
    work leaves (``QUIET_SECONDS`` and longer), which is what it was promised: the processor when nothing
    short wants it. So that it is slowed but never starved, it also runs ``SHARE_SECONDS`` of every
    ``SHARE_EVERY`` however busy the server is.

    Processes are signalled through their pidfds (:class:`Process`), so a process reaped while still here
    (one that died by itself) is never mistaken for whatever takes its pid next."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._processes: set[Process] = set()
        self._short = 0
        self._paused = False
        self._paused_at = self._share_ends = 0.0
        self._thread: threading.Thread | None = None

    def add(self, process: Process) -> None:
        """``process`` now runs long work: stopped at once if long work is paused."""
        with self._cond:
            self._processes.add(process)
            if self._paused:
                process.signal(signal.SIGSTOP)

    def discard(self, process: Process) -> None:
        """``process`` is ending (or must hear a stop): it runs again and is no longer managed."""
        with self._cond:
            if process in self._processes:
                self._processes.remove(process)
                process.signal(signal.SIGCONT)

    def enter(self) -> None:
        """Short work starts: long work pauses (unless it is having its share)."""
        with self._cond:
            self._short += 1
            if not self._paused and time.monotonic() >= self._share_ends:
                self._pause()
            self._start()

    def leave(self) -> None:
        """Short work ends (or became long): once none has run for ``QUIET_SECONDS``, long work continues."""
        with self._cond:
            self._short -= 1
            self._cond.notify()

    def _start(self) -> None:
        if self._thread is None:  # started on first use: a process forked from this one has none of its threads
            self._thread = threading.Thread(target=self._run, name="saferoom-background", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        with self._cond:
            while True:
                self._cond.wait(self._step(time.monotonic()))

    def _step(self, now: float) -> float | None:
        """Pause or continue long work as short work requires; returns how long to wait before looking again."""
        if not self._paused:
            if not self._short:
                return None  # until short work comes (enter pauses at once, then wakes this)
            if now < self._share_ends:
                return self._share_ends - now  # long work's share: pause when it ends
            self._pause()
        if self._short == 0 and not self._cond.wait_for(lambda: self._short > 0, QUIET_SECONDS):
            self._continue()
            return None
        if now - self._paused_at >= SHARE_EVERY:
            self._continue()
            self._share_ends = now + SHARE_SECONDS
            return SHARE_SECONDS
        return self._paused_at + SHARE_EVERY - now

    def _pause(self) -> None:
        self._paused, self._paused_at = True, time.monotonic()
        self._send(signal.SIGSTOP)
        self._cond.notify()

    def _continue(self) -> None:
        self._paused = False
        self._send(signal.SIGCONT)

    def _send(self, signum: signal.Signals) -> None:
        for process in self._processes:
            process.signal(signum)


BACKGROUND = Background()  # one per server process: short work anywhere in it pauses long work everywhere in it
