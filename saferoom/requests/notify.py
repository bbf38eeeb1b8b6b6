"""Webhooks: a JSON POST for each state change, sent from a thread of its own.

The change is already recorded and kept when its notice is queued: a webhook that fails or hangs costs
a few bounded retries and a log line, never the change. Notices carry ids, names, states and file
names, never file contents, reasons, comments or credentials.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence
from typing import Any

import httpx

log = logging.getLogger("saferoom.requests")
ATTEMPTS = 3
TIMEOUT = 5.0
BACKLOG = 10_000  # notices waiting past this are dropped (and logged): a dead hook must not hold memory


class Webhooks:
    def __init__(self, urls: Sequence[str], *, attempts: int = ATTEMPTS, timeout: float = TIMEOUT, pause: float = 1.0) -> None:
        self.urls, self.attempts, self.pause = list(urls), attempts, pause
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(BACKLOG)
        self._stop = threading.Event()
        self._http = httpx.Client(timeout=timeout, follow_redirects=False)
        self._thread = threading.Thread(target=self._run, name="saferoom-webhooks", daemon=True)
        if self.urls:
            self._thread.start()

    def __call__(self, event: dict[str, Any]) -> None:
        if not self.urls:
            return
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            log.error("webhook backlog full: the notice of %s %s was dropped", event.get("request_id"), event.get("state"))

    def close(self) -> None:
        if self.urls:
            self._queue.put(None)
            self._thread.join()
        self._http.close()

    def _run(self) -> None:
        while (event := self._queue.get()) is not None:
            for url in self.urls:
                self._send(url, event)

    def _send(self, url: str, event: dict[str, Any]) -> None:
        for attempt in range(1, self.attempts + 1):
            try:
                if self._http.post(url, json=event).status_code < 300:
                    return
            except httpx.HTTPError:
                pass
            if attempt < self.attempts:
                self._stop.wait(self.pause * 2 ** (attempt - 1))
        log.error("webhook %s did not take the notice of %s (%s) after %d attempts", _host(url), event.get("request_id"),
                  event.get("state"), self.attempts)


def _host(url: str) -> str:
    """The URL without its path or query, which may hold a token (Slack's hooks do)."""
    parsed = httpx.URL(url)
    return f"{parsed.scheme}://{parsed.host}"
