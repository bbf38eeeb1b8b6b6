"""The gateway's library half: identity, sessions, limits and the audit trail around each query.

The HTTP layer (:mod:`saferoom.server.app`) is a thin shell over this class;
everything that decides or records lives here.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from saferoom import scratch
from saferoom.audit import now
from saferoom.audit.commits import Pending
from saferoom.decision import MAX_SQL_BYTES, Decision, refused
from saferoom.engines.base import Cancel, Engine
from saferoom.errors import (
    AccessDenied,
    LimitExceeded,
    PolicyError,
    QueryCancelled,
    QueryRejected,
    SaferoomError,
    TooLarge,
)
from saferoom.guard import GuardedQuery
from saferoom.identity import Authenticator, Identity, JWTVerifier
from saferoom.policy import Policy, load_policy
from saferoom.policy.limits import gateway_limits
from saferoom.privacy import StoreLedger
from saferoom.requests import Limits, Requests, command, granted_policy
from saferoom.requests.pgstore import PgRequests
from saferoom.result import Result
from saferoom.server.pages import Pages
from saferoom.session import Session, open_engine
from saferoom.store import AuditWriter, FileStore, Store
from saferoom.store.postgres import PostgresStore

log = logging.getLogger("saferoom.gateway")


QUEUE_SECONDS = 2.0  # how long a query waits for one of its user's slots before it is refused
STALL_SECONDS = 300.0  # a client that takes no byte of its result for this long has left (or the query's timeout)


@dataclass
class Running:
    """One allowed query from its decision to its result record."""

    request_id: str
    decision: Decision
    cancel: Cancel
    started: float
    result: Result | None = None
    stall: float = STALL_SECONDS  # seconds the client may take no byte before its query is ended as abandoned

    def status(self, error: SaferoomError | None) -> str:
        """How it ended, for the result record: completed, cancelled, timed_out or failed."""
        if self.cancel.timed_out:
            return "timed_out"
        if self.cancel.reason is not None:
            return "cancelled"
        return "failed" if error is not None else "completed"


@dataclass
class Room:
    """One loaded policy and the engine that serves it; swapped whole on reload."""

    policy: Policy
    engine: Engine
    sessions: dict[tuple[str, str | None, tuple[str, ...]], Session]  # user, role, the access grants in force
    stamp: tuple[float, ...]  # when the policy file and the fragments it includes were last written


class Gateway:
    def __init__(self, policy_path: Path, state: Path | Store, jwt: JWTVerifier | None = None, packages: Path | None = None,
                 max_sql_bytes: int = MAX_SQL_BYTES, *, audit: AuditWriter | None = None, outbox: Path | None = None,
                 webhooks: tuple[str, ...] = (), request_limits: Limits | None = None,
                 requests_folder: Path | None = None) -> None:
        self.policy_path = policy_path.resolve()
        self.packages = packages
        self.store = FileStore(state) if isinstance(state, Path) else state
        self.auth = Authenticator(self.store.tokens, jwt)
        self.audit = audit or self.store.open_audit()  # sealed and forwarded when the caller passes one so configured
        self.pages = Pages(self.store.results_folder())  # after the log: a second gateway on a folder has been refused
        self.ledger = StoreLedger(self.store)  # each user's privacy budget, spent before a noisy query runs
        self._lock = threading.Lock()
        # per user: one of their query slots came back, or the gateway is stopping (one condition for all
        # would wake every waiting query of a flooding user each time anyone's query ends)
        self._freed: dict[str, threading.Condition] = defaultdict(lambda: threading.Condition(self._lock))
        self._room = self._load()
        self.max_sql_bytes = max_sql_bytes
        self._active: dict[str, Cancel] = {}
        self._draining = False
        self.flight_sql_port: int | None = None  # where ADBC clients reach its Flight SQL endpoint, when served
        self.requests = _requests(self, requests_folder, outbox, packages, request_limits, webhooks)

    # policy ----------------------------------------------------------------
    def _load(self) -> Room:
        policy = load_policy(self.policy_path)
        return Room(policy, open_engine(policy), {}, _stamp(self.policy_path, policy))

    @property
    def policy(self) -> Policy:
        return self._room.policy

    def reload(self) -> bool:
        """Load the policy again; a policy that does not validate never replaces a good one."""
        try:
            room = self._load()
        except (PolicyError, SaferoomError, OSError) as exc:
            log.error("policy reload refused, still serving the previous policy: %s", exc)
            self._room.stamp = _stamp(self.policy_path, self._room.policy)  # do not retry the same broken file in a loop
            return False
        with self._lock:
            old, self._room = self._room, room
        for session in old.sessions.values():  # their idle workers stop now; running queries finish first
            session.close()
        log.info("policy reloaded: %s", room.policy.hash)
        return True

    def reload_if_changed(self) -> bool:
        return _stamp(self.policy_path, self._room.policy) != self._room.stamp and self.reload()

    # identity and sessions ---------------------------------------------------
    def identify(self, authorization: str | None) -> Identity:
        return self.auth.identify(authorization)

    def session(self, identity: Identity, role: str | None = None) -> Session:
        """The user's session as the role asked for, with the access grants in force at this moment."""
        if identity.role and role and role != identity.role:
            raise AccessDenied(f"this token acts as role `{identity.role}`; it cannot act as `{role}`")
        room = self._room
        grants = self.requests.access.grants(identity.user) if self.requests else []
        key = (identity.user, role or identity.role, tuple(sorted(g.id for g in grants)))
        with self._lock:
            existing = room.sessions.get(key)
        if existing is not None:
            return existing
        policy = granted_policy(room.policy, identity.user, grants)
        # opened outside the lock (it starts a worker process), so no other request waits behind it
        opened = self._open_session(room, policy, identity.user, key[1])
        with self._lock:
            kept = room.sessions.setdefault(key, opened)
            stale = [k for k in room.sessions if k[:2] == key[:2] and k != key]  # opened under grants since changed
            closing = [room.sessions.pop(k) for k in stale]
        for session in [*closing, *([opened] if kept is not opened else [])]:
            session.close()
        return kept

    def _open_session(self, room: Room, policy: Policy, user: str, role: str | None) -> Session:
        """An embedded engine is opened per user, each query in a process of its own, so that user's memory,
        threads and processor time are theirs alone (see :mod:`saferoom.engines.isolated`)."""
        try:
            limits = gateway_limits(policy.role_for(user, role)[1])
        except AccessDenied as exc:
            known = role in policy.model.roles and user in policy.model.users
            raise AccessDenied(f"{exc}. To ask for it for a while: {command(role=role)}" if known else str(exc)) from None
        engine = None if room.engine.spec.per_user else room.engine
        return Session(policy, user, role, engine=engine, limits=limits, isolated=True, ledger=self.ledger)

    def may_audit(self, session: Session) -> bool:
        return session.policy.model.roles[session.role].audit

    # queries -----------------------------------------------------------------
    def start(self, session: Session, sql: str, identity: Identity, cancel: Cancel | None = None) -> Running:
        """Guard, check limits, write the decision durably, then start the query; ``cancel`` stops it."""
        event = {"event": "decision", "request_id": uuid.uuid4().hex, "time": now(), "method": identity.method}
        try:
            self._admissible(sql)
            decision = session.decide(sql, _asking(session, sql), limit=self.max_sql_bytes)
            self._admit(session, cancel, event["request_id"])
        except SaferoomError as exc:
            self.audit.append({**event, **refused(session.user, session.role, sql, exc, limit=self.max_sql_bytes).to_dict()})
            raise
        running = Running(event["request_id"], decision, cancel or Cancel(), time.perf_counter(),
                          stall=session.timeout or STALL_SECONDS)
        decided = self.audit.submit({**event, **decision.to_dict()})  # durable before any result byte exists:
        try:  # the query starts while its record is written, and nothing of it leaves before that is done
            with self._lock:
                self._active[running.request_id] = running.cancel
            running.result = session.query(sql, running.cancel)
        except SaferoomError as exc:
            self._decided(decided, running, session.user)
            self.finish(running, rows=0, size=0, error=exc)
            raise
        except BaseException:
            self.release(session.user, running.request_id)
            raise
        self._decided(decided, running, session.user)
        return running

    def _decided(self, decided: Pending, running: Running, user: str) -> None:
        """The decision's record durable, or the query stopped, its slot given back, and the error raised."""
        try:
            self.audit.settled(decided)
        except BaseException:
            running.cancel("the audit log could not be written")
            if running.result is not None:
                _end_unread(running.result)
            self.release(user, running.request_id)
            raise

    def finish(self, running: Running, *, rows: int, size: int, truncated: bool = False,
               error: SaferoomError | None = None) -> None:
        """The second record of every allowed query: how it ended and what left, queued when the stream ends.

        The decision record was made durable before the first byte; this one joins
        the next group commit without holding the response open.
        """
        decision = running.decision
        with self._lock:
            self._active.pop(running.request_id, None)
        self.release(decision.user, running.request_id, size)
        self.audit.append_later({"event": "result", "request_id": running.request_id, "time": now(),
                                 "user": decision.user, "role": decision.role, "status": running.status(error),
                                 "rows": rows, "bytes": size, "truncated": truncated,
                                 "error": str(error) if error else None,
                                 "error_type": type(error).__name__ if error else None,
                                 "duration_ms": round((time.perf_counter() - running.started) * 1000, 3)})

    def drain(self, reason: str = "the gateway is shutting down") -> None:
        """Refuse new queries and stop the running ones (each still gets its result record)."""
        with self._lock:
            self._draining = True
            running = list(self._active.values())
            for freed in self._freed.values():
                freed.notify_all()
        for cancel in running:
            cancel(reason)

    def _admissible(self, sql: str) -> None:
        if self._draining:
            raise QueryCancelled("the gateway is shutting down; send the query again in a moment")
        size = len(sql.encode("utf-8", "surrogatepass"))
        if size > self.max_sql_bytes:
            raise TooLarge(f"the query is {size:,} bytes; the gateway accepts at most {self.max_sql_bytes:,} "
                           "(start it with --max-sql-bytes to change that); pass large value lists as a table instead")

    def _admit(self, session: Session, cancel: Cancel | None, slot: str) -> None:
        """Take one of the user's query slots, waiting up to QUEUE_SECONDS for one, or refuse.

        Waiting (not refusing at once) keeps a notebook that sends a few queries together working, and
        keeps a user who floods the gateway from spinning it with refusals. The slots are the store's, so
        with PostgreSQL state the limit holds across gateways; a slot freed on another gateway is seen at the
        next slice."""
        user, limits = session.user, session.limits
        role = session.policy.model.roles[session.role]
        if role.max_bytes_per_day and self.store.bytes_today(user) >= role.max_bytes_per_day:
            raise LimitExceeded(f"{user} has received {role.max_bytes_per_day:,} bytes today, the role's max_bytes_per_day")
        deadline = time.monotonic() + QUEUE_SECONDS
        while not self.store.take_slot(user, slot, limits.max_concurrent):
            with self._lock:
                left = deadline - time.monotonic()
                if left <= 0 or self._draining or (cancel is not None and cancel.reason is not None):
                    raise LimitExceeded(f"{user} already runs {limits.max_concurrent} queries, the role's max_concurrent "
                                        "(the gateway's default when the role sets none); wait for one to finish")
                self._freed[user].wait(min(left, 0.25))  # a slice at a time: a client that hangs up stops waiting

    def release(self, user: str, slot: str, size: int | None = None) -> None:
        """Give the query's slot back and, once its result ended, count the ``size`` bytes that left.

        A store that cannot do it now is logged: with PostgreSQL state the slot's lease runs out by itself,
        and the result record still holds the bytes."""
        try:
            if size is None:
                self.store.give_slot(user, slot)
            else:
                self.store.end_query(user, slot, size)
        except SaferoomError as exc:
            log.error("a query slot of %s was not given back, or its bytes not counted: %s", user, exc)
        with self._lock:
            self._freed[user].notify()

    def close(self) -> None:
        self.drain()
        for session in list(self._room.sessions.values()):
            session.close()
        self.pages.close()
        if self.requests:
            self.requests.close()
        self.audit.close()
        self.store.close()


def _asking(session: Session, sql: str) -> GuardedQuery:
    """The guard's verdict; a column refused names the command that asks for it for a while."""
    try:
        return session.guard(sql)
    except QueryRejected as exc:
        if exc.column is None or "saferoom access request" in exc.message:
            raise
        raise QueryRejected(f"{exc.message} To ask for it for a while: {command(column=exc.column)}", column=exc.column,
                            tag=exc.tag, threats=exc.threats, allowed_roles=exc.allowed_roles) from None


def _requests(gateway: Gateway, folder: Path | None, outbox: Path | None, packages: Path | None,
              limits: Limits | None, webhooks: tuple[str, ...]) -> Requests | None:
    """The request engine, keeping requests in the gateway's store: the state folder's ``requests`` (or
    ``folder`` when given), or its PostgreSQL state, files included (then ``outbox`` must be given for
    releases, and a local folder of its own holds uploads and copies of files as they are read)."""
    store = gateway.store
    root = folder or (store.folder / "requests" if isinstance(store, FileStore) else None)
    if root is not None:
        return Requests(root, gateway.audit, lambda: gateway.policy, outbox=outbox or root.parent / "outbox",
                        snapshots=packages, limits=limits, webhooks=webhooks)
    if not isinstance(store, PostgresStore):
        return None
    cache = scratch.make("saferoom-requests-")  # uploads under review: gone even if this gateway is killed
    return Requests(cache, gateway.audit, lambda: gateway.policy, outbox=outbox, snapshots=packages, limits=limits,
                    webhooks=webhooks, store=PgRequests(store, cache))


def _stamp(path: Path, policy: Policy) -> tuple[float, ...]:
    """The policy file's time and its fragments': a build rewrites its fragment when it swaps in a new
    target, and a reload opens the engines afresh on it (one opened earlier may read files the build removed)."""
    return (_mtime(path), *(_mtime(path.parent / name) for name in policy.model.includes))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _end_unread(result: Result) -> None:
    """A started query nobody will read, ended by its engine: its reader is begun (an engine ends a query when
    its reader, once begun, is closed; a worker's query holds its worker until then) and closed at once."""
    with contextlib.suppress(SaferoomError):
        for _ in result.batches():
            break
    result.close()
