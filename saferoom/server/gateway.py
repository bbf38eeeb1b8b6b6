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
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from saferoom.audit import AuditLog, now
from saferoom.engines.duckdb import DuckDBEngine
from saferoom.errors import AccessDenied, LimitExceeded, PolicyError, SaferoomError
from saferoom.guard import GuardedQuery
from saferoom.identity import Authenticator, Identity, JWTVerifier, TokenStore
from saferoom.policy import Policy, load_policy
from saferoom.result import Result
from saferoom.session import Session, open_engine

log = logging.getLogger("saferoom.gateway")


@dataclass
class Room:
    """One loaded policy and the engine that serves it; swapped whole on reload."""

    policy: Policy
    engine: DuckDBEngine
    sessions: dict[tuple[str, str | None], Session]
    mtime: float


class Gateway:
    def __init__(self, policy_path: Path, state: Path, jwt: JWTVerifier | None = None, packages: Path | None = None,
                 *, audit: AuditLog | None = None) -> None:
        self.policy_path = policy_path.resolve()
        self.packages = packages
        self.state = state
        self.auth = Authenticator(TokenStore(state), jwt)
        self.audit = audit or AuditLog(state)  # sealed and forwarded when the caller passes one so configured
        self._lock = threading.Lock()
        self._room = self._load()
        self._running: dict[str, int] = defaultdict(int)
        self._bytes: dict[tuple[str, str], int] = defaultdict(int)
        self._count_bytes_today()

    # policy ----------------------------------------------------------------
    def _load(self) -> Room:
        policy = load_policy(self.policy_path)
        return Room(policy, open_engine(policy), {}, self.policy_path.stat().st_mtime)

    @property
    def policy(self) -> Policy:
        return self._room.policy

    def reload(self) -> bool:
        """Load the policy again; a policy that does not validate never replaces a good one."""
        try:
            room = self._load()
        except (PolicyError, SaferoomError, OSError) as exc:
            log.error("policy reload refused, still serving the previous policy: %s", exc)
            self._room.mtime = _mtime(self.policy_path)  # do not retry the same broken file in a loop
            return False
        with self._lock:
            self._room = room
        log.info("policy reloaded: %s", room.policy.hash)
        return True

    def reload_if_changed(self) -> bool:
        return _mtime(self.policy_path) != self._room.mtime and self.reload()

    # identity and sessions ---------------------------------------------------
    def identify(self, authorization: str | None) -> Identity:
        return self.auth.identify(authorization)

    def session(self, identity: Identity, role: str | None = None) -> Session:
        if identity.role and role and role != identity.role:
            raise AccessDenied(f"this token acts as role `{identity.role}`; it cannot act as `{role}`")
        room = self._room
        key = (identity.user, role or identity.role)
        with self._lock:
            if key not in room.sessions:
                room.sessions[key] = Session(room.policy, identity.user, key[1], engine=room.engine)
            return room.sessions[key]

    def may_audit(self, session: Session) -> bool:
        return session.policy.model.roles[session.role].audit

    # queries -----------------------------------------------------------------
    def start(self, session: Session, sql: str, identity: Identity) -> tuple[Result, dict[str, Any]]:
        """Guard, check limits, write the decision durably, then start the query."""
        base = {"request_id": uuid.uuid4().hex, "time": now(), "user": session.user, "role": session.role,
                "method": identity.method, "query": sql}
        try:
            guarded = session.guard(sql)
        except SaferoomError as exc:
            self.audit.append({**base, "event": "decision", "decision": "refused", "reason": str(exc)})
            raise
        record = {**base, **self._touched(session, guarded), "event": "decision", "decision": "allowed",
                  "reason": "the policy allows it"}
        with self._limits(session):
            self.audit.append(record)  # durable before any result byte exists
            try:
                return session.query(sql), record
            except SaferoomError as exc:  # _limits releases the slot as this propagates
                self.finish(record, rows=0, size=0, started=time.perf_counter(), error=exc)
                raise

    def finish(self, decision: dict[str, Any], *, rows: int, size: int, started: float,
               truncated: bool = False, error: SaferoomError | None = None) -> None:
        """The second record of a query: what actually left, queued when the stream ends.

        The decision record was made durable before the first byte; this one joins
        the next group commit without holding the response open.
        """
        self._bytes[(decision["user"], _today())] += size
        self.audit.append_later({"event": "result", "request_id": decision["request_id"], "time": now(),
                           "user": decision["user"], "role": decision["role"], "rows": rows, "bytes": size,
                           "truncated": truncated, "error": str(error) if error else None,
                           "error_type": type(error).__name__ if error else None,
                           "duration_ms": round((time.perf_counter() - started) * 1000, 3)})

    def _touched(self, session: Session, guarded: GuardedQuery) -> dict[str, Any]:
        rules = [session.policy.rule(session.role, t, c) for t, c in guarded.columns]
        columns = [{"table": r.table, "column": r.column, "tags": list(r.tags), "action": r.action.value} for r in rules]
        return {"tables": list(guarded.tables), "columns": columns, "tags": sorted({t for r in rules for t in r.tags})}

    @contextlib.contextmanager
    def _limits(self, session: Session) -> Iterator[None]:
        role = session.policy.model.roles[session.role]
        user = session.user
        if role.max_bytes_per_day and self._bytes[(user, _today())] >= role.max_bytes_per_day:
            raise LimitExceeded(f"{user} has received {role.max_bytes_per_day:,} bytes today, the role's max_bytes_per_day")
        with self._lock:
            if role.max_concurrent and self._running[user] >= role.max_concurrent:
                raise LimitExceeded(f"{user} already runs {role.max_concurrent} queries, the role's max_concurrent")
            self._running[user] += 1
        try:
            yield
        except BaseException:
            self.release(user)
            raise

    def release(self, user: str) -> None:
        with self._lock:
            self._running[user] -= 1

    def _count_bytes_today(self) -> None:
        """Today's bytes per user, from the log's tail: records are in time order, so reading stops at yesterday
        (a day back, in case a record was queued across midnight)."""
        from saferoom.audit import newest_first

        today = _today()
        yesterday = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%d")
        for record in newest_first(self.state):
            day = str(record.get("time", ""))[:10]
            if day < yesterday:
                break
            if record.get("event") == "result" and day == today:
                self._bytes[(record["user"], today)] += record.get("bytes") or 0

    def close(self) -> None:
        self.audit.close()


def _today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
