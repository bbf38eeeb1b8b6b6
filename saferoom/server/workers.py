"""One thread per query, from its decision to its last byte.

Queries never run on the server's shared thread pool, so however many hang, the health check, the
catalog and the web page still answer. A query whose thread has used a short one's processor time (a
body encoded here, as JSON or CSV, say) is moved to a lower CPU priority, so one user's runaway queries
cannot take the processor from everyone else's short ones; the thread ends with the query, so no pooled
thread keeps that priority (an unprivileged process cannot raise a thread's priority back). Processor
time, not time passed: on a busy machine every query takes long, and a thread that only passes its
worker's Arrow bytes on, lowered, would hold its result back from the client behind everyone else's work.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from saferoom import priority

T = TypeVar("T")

_Task = tuple[concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...]]


class QueryThread:
    """Runs one query's calls in order, on a thread of its own."""

    def __init__(self) -> None:
        self._tasks: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        self._started = threading.Event()
        self._tid = 0
        self._thread = threading.Thread(target=self._loop, name="saferoom-query", daemon=True)
        self._thread.start()
        self._demotion: asyncio.TimerHandle | None = None
        self._closed = False

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """Run ``function(*args)`` on this query's thread; demote the thread once it has used a short query's processor time."""
        if self._demotion is None:
            self._watch_in(priority.SHORT_SECONDS)
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._tasks.put((future, function, args))
        return await asyncio.shield(asyncio.wrap_future(future))

    def demote(self) -> None:
        self._started.wait()
        priority.lower(self._tid)

    def _watch_in(self, seconds: float) -> None:
        if not self._closed:
            self._demotion = asyncio.get_running_loop().call_later(seconds, self._watch)

    def _watch(self) -> None:
        """Demote the thread if it has used ``priority.SHORT_SECONDS`` of processor time; else look again when it
        could have (it cannot use more than the time that passes)."""
        self._started.wait()
        used = priority.thread_cpu_seconds(self._tid)
        if used >= priority.SHORT_SECONDS:
            self.demote()
        else:
            self._watch_in(priority.SHORT_SECONDS - used)

    def close(self) -> None:
        """The thread ends after the calls already given to it."""
        self._closed = True
        if self._demotion is not None:
            self._demotion.cancel()
        self._tasks.put(None)

    def _loop(self) -> None:
        self._tid = threading.get_native_id()
        self._started.set()
        while (task := self._tasks.get()) is not None:
            future, function, args = task
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(function(*args))
                except BaseException as exc:  # noqa: BLE001 - handed to the awaiting request, which raises it
                    future.set_exception(exc)
