"""Webhooks: a JSON POST for each state change, each hook sent from a thread of its own.

The change is already recorded and kept when its notice is queued: a webhook that fails or hangs costs
a few bounded retries and a log line, never the change, and never delays another hook. Notices carry
ids, user names, states and file names, never file contents, reasons, comments or credentials.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Sequence
from typing import Any

import httpx

from saferoom.errors import UsageError

log = logging.getLogger("saferoom.requests")
ATTEMPTS = 3
TIMEOUT = 5.0
BACKLOG = 10_000  # notices waiting past this are dropped (and logged): a dead hook must not hold memory


class Webhooks:
    def __init__(self, urls: Sequence[str], *, attempts: int = ATTEMPTS, timeout: float = TIMEOUT, pause: float = 1.0) -> None:
        for url in urls:
            if httpx.URL(url).scheme not in ("http", "https"):
                raise UsageError(f"--webhook {_host(url)}…: give an http:// or https:// URL")
        self.hooks = [_Hook(url, attempts, timeout, pause) for url in urls]

    def __call__(self, event: dict[str, Any]) -> None:
        for hook in self.hooks:
            hook.put(event)

    def close(self) -> None:
        for hook in self.hooks:
            hook.close()


class _Hook:
    def __init__(self, url: str, attempts: int, timeout: float, pause: float) -> None:
        self.url, self.attempts, self.pause = url, attempts, pause
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(BACKLOG)
        self._http = httpx.Client(timeout=timeout, follow_redirects=False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="saferoom-webhook", daemon=True)
        self._thread.start()

    def put(self, event: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            log.error("webhook %s: backlog full, the notice of %s (%s) was dropped", _host(self.url), event.get("request_id"),
                      event.get("state"))

    def close(self) -> None:
        """Stop at once: a gateway that is stopping does not wait out a dead hook's retries (each unsent
        notice is logged; the changes themselves are kept)."""
        self._stop.set()
        self._queue.put(None)
        self._thread.join()
        self._http.close()

    def _run(self) -> None:
        while (event := self._queue.get()) is not None:
            if self._stop.is_set():
                log.error("webhook %s: the gateway stopped before the notice of %s (%s) was sent", _host(self.url),
                          event.get("request_id"), event.get("state"))
                continue
            self._send(event)

    def _send(self, event: dict[str, Any]) -> None:
        for attempt in range(1, self.attempts + 1):
            try:
                if self._http.post(self.url, json=event).status_code < 300:
                    return
            except httpx.HTTPError:
                pass
            if attempt < self.attempts and self._stop.wait(self.pause * 2 ** (attempt - 1)):
                break
        log.error("webhook %s did not take the notice of %s (%s) after %d attempts", _host(self.url), event.get("request_id"),
                  event.get("state"), self.attempts)


def _host(url: str) -> str:
    """The URL without its path or query, which may hold a token (Slack's hooks do)."""
    parsed = httpx.URL(url)
    return f"{parsed.scheme}://{parsed.host}"
