"""Access on request: a role, or one column's action, for a bounded time, then gone by itself.

A grant is not an edit of the policy file: the gateway gives the requester's sessions a policy derived
from the current one plus their grants in force, recomputed on every request, so an expired grant stops
working at the next query, mid-session included.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from saferoom.audit import now
from saferoom.errors import RequestRefused
from saferoom.identity import Identity, parse_ttl
from saferoom.policy import Policy
from saferoom.policy.model import Action, Role, Tag, User
from saferoom.requests.engine import Engine
from saferoom.requests.model import Kind, Request, State

MAX_DURATION = "7d"


def command(*, role: str | None = None, column: str | None = None) -> str:
    """The exact command that asks for what was refused, for the guard's refusals to name."""
    what = f"--role {role}" if role else f"--column {column}"
    return f'saferoom access request {what} --for 4h --reason "..."'


class Access:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._active: list[Request] = []
        self._refresh()
        engine.on_change.append(self._changed)

    def request(self, who: Identity, reason: str, duration: str, role: str | None = None,
                column: str | None = None, action: str = "allow") -> Request:
        if (role is None) == (column is None):
            raise RequestRefused("ask for a role (--role NAME) or one column (--column source.table.column), one of them")
        seconds = self._seconds(duration)
        detail = {"role": self._role(who, role)} if role else {"column": self._column(column or ""), "action": _action(action)}
        return self.engine.create(Kind.ACCESS, who, reason, {**detail, "seconds": seconds}, State.SUBMITTED)

    def grants(self, user: str) -> list[Request]:
        """The user's grants in force now: a grant past its time is not one, whether or not it was swept yet."""
        moment = datetime.now(UTC)
        return [g for g in self._active if g.requester == user and g.expires and datetime.fromisoformat(g.expires) > moment]

    def sweep(self) -> None:
        """Mark the grants past their time expired (they stopped working at their time already), and take in
        grants another gateway sharing the folder approved."""
        if self.engine.store.stamp() != self._seen:
            self._refresh()
        moment = datetime.now(UTC)
        for grant in [g for g in self._active if g.expires and datetime.fromisoformat(g.expires) <= moment]:
            with self.engine.store.locked():
                current = self.engine.store.get(grant.id)
                if current is not None and current.state is State.APPROVED:
                    self.engine.change(current, State.EXPIRED, "saferoom")

    def _changed(self, request: Request) -> None:
        if request.kind is not Kind.ACCESS:
            return
        if request.state is State.APPROVED and request.expires is None:
            moment = datetime.now(UTC)
            request.expires = (moment + timedelta(seconds=int(request.detail["seconds"]))).isoformat(timespec="microseconds")
            self.engine.record(request, "grant", "saferoom", starts=now(), expires=request.expires)
        self._refresh()

    def _refresh(self) -> None:
        self._seen = self.engine.store.stamp()
        self._active = [r for r in self.engine.store.all() if r.kind is Kind.ACCESS and r.state is State.APPROVED]

    def _seconds(self, duration: str) -> int:
        rule = self.engine.rule(Kind.ACCESS)
        longest = parse_ttl((rule.max_duration if rule else None) or MAX_DURATION)
        asked = parse_ttl(duration)
        if asked is None or longest is None or not timedelta(0) < asked <= longest:
            raise RequestRefused(f"--for {duration!r}: ask for a time up to {longest} (like 4h or 90m)")
        return int(asked.total_seconds())

    def _role(self, who: Identity, role: str | None) -> str:
        policy = self.engine.policy()
        if role not in policy.model.roles:
            raise RequestRefused(f"there is no role {str(role)[:80]!r} in the policy to ask for")
        if role in policy.user(who.user).roles:
            raise RequestRefused(f"you already hold role `{role}`; act as it with --role {role}")
        return role

    def _column(self, column: str) -> str:
        policy = self.engine.policy()
        table, _, name = column.rpartition(".")
        if table not in policy.tables or name.lower() not in policy.columns(table):
            raise RequestRefused(f"there is no column {column[:120]!r} in the policy; write it source.table.column")
        return f"{table}.{name.lower()}"


def _action(action: str) -> str:
    if action not in {a.value for a in Action} or action == Action.DENY:
        raise RequestRefused(f"--action {action[:40]!r}: one of {', '.join(a.value for a in Action if a is not Action.DENY)}")
    return action


def granted_policy(policy: Policy, user: str, grants: list[Request]) -> Policy:
    """``policy`` as ``user`` sees it with ``grants`` in force: granted roles held, granted columns shown."""
    if not grants:
        return policy
    model = policy.model
    roles_held = [*model.users[user].roles, *(g.detail["role"] for g in grants if "role" in g.detail)]
    users = {**model.users, user: User(roles=list(dict.fromkeys(roles_held)), attributes=model.users[user].attributes)}
    tags, tables, roles = dict(model.tags), {k: dict(v) for k, v in model.tables.items()}, dict(model.roles)
    for grant in (g for g in grants if "column" in g.detail):
        table, _, column = grant.detail["column"].rpartition(".")
        tag = f"granted_{grant.id}"
        key = next(k for k in tables[table] if k.lower() == column)
        tags[tag] = Tag(threats=sorted({t for old in policy.columns(table)[column] for t in model.tags[old].threats}),
                        description=f"access granted by request {grant.id} until {grant.expires}")
        tables[table][key] = tag
        for name in users[user].roles:
            roles[name] = Role(**{**roles[name].model_dump(), "columns": {**roles[name].columns, tag: Action(grant.detail["action"])}})
    changed = model.model_copy(update={"users": users, "tags": tags, "tables": tables, "roles": roles})
    digest = hashlib.sha256("\n".join([policy.hash, *sorted(g.id for g in grants)]).encode()).hexdigest()
    return Policy(changed, path=policy.path, lines=policy.lines, digest=digest)
