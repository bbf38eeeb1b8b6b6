"""Run the gateway under uvicorn, reloading the policy on SIGHUP or when its file changes."""

from __future__ import annotations

import logging
import signal
import ssl
import threading
from collections.abc import Sequence
from pathlib import Path

import uvicorn

from saferoom.audit import AuditKey, AuditLog
from saferoom.errors import UsageError
from saferoom.identity import JWTSettings, JWTVerifier
from saferoom.server.app import create_app
from saferoom.server.gateway import Gateway

WATCH_SECONDS = 1.0
log = logging.getLogger("saferoom.gateway")


def serve(policy: Path, state: Path, *, host: str = "127.0.0.1", port: int = 8470,
          tls_cert: Path | None = None, tls_key: Path | None = None, jwt: JWTSettings | None = None,
          packages: Path | None = None, audit_key: AuditKey | None = None, audit_forward: Sequence[str] = ()) -> None:
    _check_tls(tls_cert, tls_key)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    audit = _audit_log(state, audit_key, audit_forward)
    try:
        gateway = Gateway(policy, state, JWTVerifier(jwt) if jwt else None, packages, audit=audit)
    except BaseException:
        audit.close()
        raise
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


def _audit_log(state: Path, key: AuditKey | None, forward: Sequence[str]) -> AuditLog:
    """The audit log as configured; without a key, say loudly what that leaves open."""
    audit = AuditLog(state, key=key, forward=forward)
    if key is None:
        log.warning("the audit log is NOT sealed (no --audit-key): its hash chain is plain SHA-256, so whoever can "
                    "write %s can rewrite, cut or empty it and `saferoom audit verify` will not notice; give "
                    "--audit-key env:NAME (or file:PATH) from outside the state folder", state)
    else:
        log.info("the audit log is sealed; checkpoints are signed by %s%s", key.public,
                 "".join(f"; forwarded to {spec}" for spec in forward))
    return audit


def _check_tls(cert: Path | None, key: Path | None) -> None:
    """A certificate that cannot be used is a clear error before anything starts, not a traceback after."""
    if (cert is None) != (key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    if cert is None or key is None:
        return
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise UsageError(f"the TLS certificate {cert.name} or key {key.name} cannot be used: "
                         f"{getattr(exc, 'strerror', None) or exc}") from None


def _watch(gateway: Gateway, stop: threading.Event) -> None:
    while not stop.wait(WATCH_SECONDS):
        gateway.reload_if_changed()
