"""CPU priority of threads: work that runs long yields the processor to work that runs short.

On Linux each thread has its own nice value. An unprivileged process can lower a thread's priority but
never raise it again, so only what will not serve anything short afterwards is lowered: a query's own
thread, or a query's own process, once the query has run long.
"""

from __future__ import annotations

import contextlib
import os
import threading

SHORT_SECONDS = 0.25  # work still running after this is long: it is lowered, so that short work keeps the processor
LOW = 10  # CFS gives a nice-10 thread about a tenth of a nice-0 thread's share of a busy processor


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
