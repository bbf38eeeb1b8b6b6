"""Run the gateway under uvicorn, reloading the policy on SIGHUP or when its file changes."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import uvicorn

from saferoom.identity import JWTSettings, JWTVerifier
from saferoom.server.app import create_app
from saferoom.server.gateway import Gateway

WATCH_SECONDS = 1.0


def serve(policy: Path, state: Path, *, host: str = "127.0.0.1", port: int = 8470,
          tls_cert: Path | None = None, tls_key: Path | None = None, jwt: JWTSettings | None = None,
          packages: Path | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    gateway = Gateway(policy, state, JWTVerifier(jwt) if jwt else None, packages)
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(gateway, stop), name="saferoom-policy-watch", daemon=True)
    watcher.start()
    signal.signal(signal.SIGHUP, lambda *_: gateway.reload())
    # the audit log is the request log: every query, who asked, what left; no second, weaker copy
    config = uvicorn.Config(create_app(gateway), host=host, port=port, log_level="info", access_log=False,
                            ssl_certfile=str(tls_cert) if tls_cert else None,
                            ssl_keyfile=str(tls_key) if tls_key else None)
    try:
        uvicorn.Server(config).run()
    finally:
        stop.set()
        gateway.close()


def _watch(gateway: Gateway, stop: threading.Event) -> None:
    while not stop.wait(WATCH_SECONDS):
        gateway.reload_if_changed()
