"""The request engine: one state machine, one audit trail and one set of reviewer rules for every kind.

Identity always comes from the caller (the gateway's authenticated user), never from a request's body.
Every state change is written to the audit log before it is kept, so a change the log did not take
did not happen; then webhooks are told.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from saferoom.audit import now
from saferoom.errors import LimitExceeded, NotFound, RequestRefused
from saferoom.identity import Identity
from saferoom.policy import Policy
from saferoom.policy.model import ReviewRule
from saferoom.requests.model import OPEN, Kind, Request, Review, State, Verdict, new_id
from saferoom.requests.store import RequestStore
from saferoom.store.base import AuditWriter

log = logging.getLogger("saferoom.requests")
DEFAULT_APPROVALS = {Kind.RELEASE: 2, Kind.ACCESS: 1, Kind.PACKAGES: 1}
MIB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """What one user may put in the request area; each has a safe default."""

    max_file_bytes: int = 256 * MIB
    max_request_bytes: int = 1024 * MIB
    max_files: int = 50
    max_open: int = 20  # open requests (draft, submitted, returned) per user: abandoned drafts count too
    max_text: int = 4000  # characters of a reason or a comment


Notify = Callable[[dict[str, Any]], None]


class Engine:
    """Requests kept in ``store``, recorded in ``audit``, reviewed under the current policy's ``reviews:``."""

    def __init__(self, store: RequestStore, audit: AuditWriter, policy: Callable[[], Policy], *,
                 limits: Limits | None = None, notify: Notify | None = None) -> None:
        self.store, self.audit, self.policy = store, audit, policy
        self.limits = limits or Limits()
        self.notify = notify or (lambda _event: None)
        self.on_change: list[Callable[[Request], None]] = []  # kinds that act on a change (a grant, an outbox)

    # reading -------------------------------------------------------------------------------------------
    def show(self, request_id: str, who: Identity) -> Request:
        """The request, when ``who`` may see it; anyone else is told it does not exist (no hint that it does)."""
        request = self.store.get(request_id)
        if request is None or not self.may_see(request, who):
            raise NotFound(f"no request {request_id!r} that you may see; `saferoom requests list` shows yours")
        return request

    def visible(self, who: Identity, state: str | None = None) -> list[Request]:
        return [r for r in self.store.all() if self.may_see(r, who) and (state is None or r.state == state)]

    def may_see(self, request: Request, who: Identity) -> bool:
        return request.requester == who.user or self.reviewer_role(request.kind, who) is not None

    def reviewer_role(self, kind: Kind, who: Identity) -> str | None:
        """The role ``who`` reviews ``kind`` as, or None; a token bound to a role reviews as that role only."""
        rule = self.rule(kind)
        policy = self.policy()
        if rule is None or who.user not in policy.model.users:
            return None
        held = [who.role] if who.role else policy.model.users[who.user].roles
        return next((role for role in held if role in rule.roles and role in policy.user(who.user).roles), None)

    def rule(self, kind: Kind) -> ReviewRule | None:
        rule: ReviewRule | None = getattr(self.policy().model.reviews, kind.value)
        return rule

    def needed(self, kind: Kind) -> int:
        rule = self.rule(kind)
        return (rule.approvals if rule and rule.approvals else None) or DEFAULT_APPROVALS[kind]

    # making ---------------------------------------------------------------------------------------------
    def create(self, kind: Kind, who: Identity, reason: str, detail: dict[str, Any], state: State = State.DRAFT) -> Request:
        self.policy().user(who.user)  # an unknown user makes no request
        reason = self.text(reason, "--reason")
        if not reason.strip():
            raise RequestRefused("say why with --reason: reviewers decide on it")
        with self.store.locked():
            mine = [r for r in self.store.all() if r.requester == who.user and r.state in OPEN]
            if len(mine) >= self.limits.max_open:
                raise LimitExceeded(f"{who.user} has {len(mine)} open requests, the most allowed; withdraw one "
                                    "(`saferoom requests withdraw ID`) or wait for a review")
            request = Request(new_id(), kind, who.user, reason, now(), detail=detail, updated=now())
            self.record(request, "create", who.user)
            if state is not State.DRAFT:
                self.change(request, state, who.user)
        return request

    def text(self, value: str, name: str) -> str:
        if len(value) > self.limits.max_text or "\x00" in value:
            raise RequestRefused(f"{name} is over {self.limits.max_text:,} characters (or holds NUL); shorten it")
        return value

    # reviewing ------------------------------------------------------------------------------------------
    def review(self, request_id: str, who: Identity, verdict: Verdict, seen: dict[str, str], comment: str = "",
               comments: dict[str, str] | None = None) -> Request:
        """Approve, reject or return a request; ``seen`` is the content hash of each file as the reviewer saw it."""
        with self.store.locked():
            request = self.show(request_id, who)
            role = self._may_review(request, who, verdict, seen)
            notes = {name: self.text(text, "a file's comment") for name, text in (comments or {}).items()}
            unknown = set(notes) - set(request.hashes)
            if unknown:
                raise RequestRefused(f"comments name files the request does not hold: {', '.join(sorted(unknown))}")
            request.reviews.append(Review(who.user, role, verdict, now(), dict(seen), self.text(comment, "the comment"), notes))
            self.change(request, _after(request, verdict, self.needed(request.kind)), who.user, verdict=verdict.value)
        return request

    def _may_review(self, request: Request, who: Identity, verdict: Verdict, seen: dict[str, str]) -> str:
        role = self.reviewer_role(request.kind, who)
        if role is None:
            raise RequestRefused(f"you may not review {request.kind} requests; the policy's `reviews.{request.kind}` "
                                 "names the roles that may")
        if who.user == request.requester:
            raise RequestRefused("nobody reviews their own request; another reviewer must")
        if request.state is not State.SUBMITTED:
            raise RequestRefused(f"request {request.id} is {request.state}, not waiting for review")
        if seen != request.hashes:
            raise RequestRefused("the files changed since you looked (their content hashes differ); open the request "
                                 "again and review what it holds now")
        if verdict is Verdict.APPROVE and any(r.reviewer == who.user for r in request.approvals()):
            raise RequestRefused("you have already approved this version; another reviewer must approve it too")
        return role

    def withdraw(self, request_id: str, who: Identity) -> Request:
        with self.store.locked():
            request = self.show(request_id, who)
            if request.requester != who.user:
                raise RequestRefused("only the requester withdraws a request; reviewers reject it")
            self.change(request, State.WITHDRAWN, who.user)
        return request

    # recording ------------------------------------------------------------------------------------------
    def change(self, request: Request, to: State, actor: str, **extra: Any) -> None:
        """Move ``request`` to ``to``: audit record first (no record, no change), then the store, then hooks."""
        before = request.state
        request.move(to, now())
        try:
            self.record(request, "state", actor, before=before.value, **extra)
        except BaseException:
            request.state = before
            raise
        for hook in self.on_change:
            hook(request)

    def record(self, request: Request, action: str, actor: str, **extra: Any) -> None:
        event = {"event": "request", "action": action, "time": now(), "user": actor, "request_id": request.id,
                 "kind": request.kind.value, "requester": request.requester, "state": request.state.value,
                 "files": request.hashes, **extra}
        self.audit.append(event)
        self.store.put(request)
        self.notify({k: v for k, v in event.items() if k != "files"} | {"files": sorted(request.hashes)})

def _after(request: Request, verdict: Verdict, needed: int) -> State:
    if verdict is Verdict.REJECT:
        return State.REJECTED
    if verdict is Verdict.RETURN:
        return State.RETURNED
    return State.APPROVED if len({r.reviewer for r in request.approvals()}) >= needed else State.SUBMITTED
