"""CPU priority of threads: work that runs long yields the processor to work that runs short.

On Linux each thread has its own nice value, and a thread starts with its creator's. An unprivileged
process can lower a thread's priority but never raise it again, so a thread is lowered only when it
will not serve anything short afterwards: a query's own thread once the query has run long, or a
throwaway thread that starts an engine's worker threads (which inherit its priority).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable

LOW = 10  # CFS gives a nice-10 thread about a tenth of a nice-0 thread's share of a busy processor


def lower(thread_id: int | None = None) -> None:
    """Move a thread (this one by default) to the low priority; where threads have none, nothing changes."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, thread_id or threading.get_native_id(), LOW)


def on_low_thread(work: Callable[[], object]) -> None:
    """Run ``work`` on a throwaway thread of low priority, so threads it starts have that priority too."""
    failures: list[BaseException] = []

    def run() -> None:
        lower()
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - raised again on the calling thread
            failures.append(exc)

    thread = threading.Thread(target=run, name="saferoom-low")
    thread.start()
    thread.join()
    if failures:
        raise failures[0]
