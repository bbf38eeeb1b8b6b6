"""Run the gateway under uvicorn, reloading the policy on SIGHUP or when its file changes."""

from __future__ import annotations

import logging
import signal
import socket
import ssl
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType, ModuleType

import uvicorn

from saferoom.audit import AuditKey
from saferoom.decision import MAX_SQL_BYTES
from saferoom.errors import UsageError
from saferoom.files import socket_path_problem
from saferoom.identity import JWTSettings, JWTVerifier
from saferoom.requests import Limits
from saferoom.server.app import create_app
from saferoom.server.door import door_protocol
from saferoom.server.gateway import Gateway
from saferoom.store import AuditWriter, Store, open_store

WATCH_SECONDS = 1.0
DRAIN_SECONDS = 10  # after SIGTERM: running queries are cancelled at once; responses get this long to end
log = logging.getLogger("saferoom.gateway")


def serve(policy: Path, state: str | Path, *, host: str = "127.0.0.1", port: int = 8470,
          tls_cert: Path | None = None, tls_key: Path | None = None, jwt: JWTSettings | None = None,
          packages: Path | None = None, audit_key: AuditKey | None = None, audit_forward: Sequence[str] = (),
          max_sql_bytes: int = MAX_SQL_BYTES, socket_path: Path | None = None, outbox: Path | None = None,
          webhooks: Sequence[str] = (), request_limits: Limits | None = None,
          requests_folder: Path | None = None, flight_sql_port: int | None = None) -> None:
    """Serve on ``host:port``, or on the Unix socket ``socket_path`` instead (what rooms reach the gateway through);
    with ``flight_sql_port``, Arrow Flight SQL on ``host:flight_sql_port`` too (ADBC clients)."""
    _check_tls(host, tls_cert, tls_key)
    flight_sql = _flight_sql_module() if flight_sql_port is not None else None
    if socket_path is not None:
        _check_socket(socket_path)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # it logs each URL whole, and a webhook's URL can hold a token
    store = open_store(state)
    try:
        audit = _audit_log(store, audit_key, audit_forward)
    except BaseException:
        store.close()
        raise
    try:
        gateway = Gateway(policy, store, JWTVerifier(jwt) if jwt else None, packages, max_sql_bytes, audit=audit,
                          outbox=outbox, webhooks=tuple(webhooks), request_limits=request_limits,
                          requests_folder=requests_folder)
    except BaseException:
        audit.close()
        store.close()
        raise
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(gateway, stop), name="saferoom-policy-watch", daemon=True)
    watcher.start()
    signal.signal(signal.SIGHUP, lambda *_: gateway.reload())
    # the audit log is the request log: every query, who asked, what left; no second, weaker copy
    # a socket is made readable and writable by every account (uvicorn's 0666), like a port on loopback:
    # rooms run as their users' own accounts, and a token, not the file's mode, says who may ask what
    # on a socket (without TLS), a room's results may leave through the result door, as Arrow with no HTTP around them
    door = socket_path is not None and tls_cert is None
    config = uvicorn.Config(create_app(gateway, door=door), host=host, port=port,
                            uds=str(socket_path) if socket_path else None, http=door_protocol(gateway) if door else "auto",
                            log_level="info", access_log=False,
                            ssl_certfile=str(tls_cert) if tls_cert else None,
                            ssl_keyfile=str(tls_key) if tls_key else None, timeout_graceful_shutdown=DRAIN_SECONDS)
    previous = {sig: signal.signal(sig, _stopping) for sig in (signal.SIGINT, signal.SIGTERM)}
    flight = None
    try:
        if flight_sql is not None and flight_sql_port is not None:
            tls = (tls_cert, tls_key) if tls_cert and tls_key else None
            flight = flight_sql.start(gateway, host, flight_sql_port, tls)
        _Server(config, gateway).run()
    finally:
        stop.set()
        if flight is not None:
            gateway.drain()  # its running queries end first, so its shutdown does not wait for them
            flight.shutdown()
        gateway.close()  # every queued audit record is written before the process ends
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _flight_sql_module() -> ModuleType:
    """The Flight SQL endpoint, which needs the ``adbc`` extra (protobuf, for its messages)."""
    try:
        from saferoom.server import flight_sql
    except ImportError as exc:
        raise UsageError(f"--flight-sql needs the adbc extra: pip install 'saferoom[adbc]' ({exc.name} is missing)") from None
    return flight_sql


def _check_socket(path: Path) -> None:
    """Refuse a socket path another account could squat (make first, or replace): rooms would give it their tokens."""
    found = socket_path_problem(path, listening=True)
    if found:
        raise UsageError(f"--socket {path}: {found}; give a path in a folder only this account (or root) can write, "
                         "such as /run/saferoom")


class _Server(uvicorn.Server):
    """uvicorn's server, which on SIGTERM or SIGINT also stops the gateway's running queries.

    uvicorn alone waits for requests in flight, and a query that runs for an hour would hold
    the shutdown for an hour; cancelled, each ends at once with its result record written."""

    def __init__(self, config: uvicorn.Config, gateway: Gateway) -> None:
        super().__init__(config)
        self.gateway = gateway

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.started:
            return
        # uvicorn's own line names its socket; people need the URL to give clients, and how in
        if self.config.uds:
            log.info("saferoom gateway at %s; rooms reach it with `saferoom room --socket %s`, other clients with "
                     "SAFEROOM_SOCKET=%s and a token from `saferoom token create`", self.url(), self.config.uds, self.config.uds)
        else:
            log.info("saferoom gateway at %s; each person needs a token from `saferoom token create`, then "
                     "`saferoom login --url %s`", self.url(), self.url())

    def url(self) -> str:
        """Where clients reach the gateway, with the port it listens on (the one asked for, or the one given for 0)."""
        if self.config.uds:
            return f"unix:{self.config.uds}"
        listening = [s.getsockname()[1] for server in self.servers for s in server.sockets]
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"{'https' if self.config.is_ssl else 'http'}://{host}:{listening[0] if listening else self.config.port}"

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # not on this thread: a signal handler must not wait for a lock the interrupted code may hold
        threading.Thread(target=self.gateway.drain, name="saferoom-drain", daemon=True).start()
        super().handle_exit(sig, frame)


def _stopping(sig: int, frame: FrameType | None) -> None:
    """What uvicorn raises again once it has stopped: the gateway is already closing, nothing more to do."""


def _audit_log(state: Store, key: AuditKey | None, forward: Sequence[str]) -> AuditWriter:
    """The audit log as configured; without a key, say loudly what that leaves open."""
    audit = state.open_audit(key, forward)
    if key is None:
        log.warning("the audit log is NOT sealed (no --audit-key): its hash chain is plain SHA-256, so whoever can "
                    "write %s can rewrite, cut or empty it and `saferoom audit verify` will not notice; give "
                    "--audit-key env:NAME (or file:PATH) from outside the state folder", state)
    else:
        log.info("the audit log is sealed; checkpoints are signed by %s%s", key.public,
                 "".join(f"; forwarded to {spec}" for spec in forward))
    return audit


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _check_tls(host: str, cert: Path | None, key: Path | None) -> None:
    """A certificate that cannot be used is a clear error before anything starts, not a traceback after."""
    if (cert is None) != (key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    if host not in LOOPBACK and cert is None:
        raise UsageError("serving beyond loopback needs --tls-cert and --tls-key")
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
        gateway.pages.sweep()  # kept results past their time go even when nobody asks for one
        try:
            if gateway.requests:
                gateway.requests.sweep()  # grants past their time are marked expired (they stopped working at their time)
        except Exception:
            log.exception("the request sweep failed")
