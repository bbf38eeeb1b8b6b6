"""A request as data, and the one state machine every kind of request follows.

    draft ──submit──► submitted ──approve (enough)──► approved ──► released (release) / landed (packages)
      │                  │  ▲                            │ └──► delivery-failed (release: outbox not written)
      │                  │  │                            │          └─deliver again──► released
      │                  │  └─update files── returned    └──► expired (access, at its time)
      │                  ├──return──────────► returned
      │                  └──reject──────────► rejected
      └──withdraw (draft, submitted, returned) ──► withdrawn

A transition not drawn here is refused (:class:`RequestRefused`), so no surface can skip a step.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from saferoom.errors import RequestRefused


class Kind(StrEnum):
    RELEASE = "release"
    ACCESS = "access"
    PACKAGES = "packages"


class State(StrEnum):
    DRAFT = "draft"
    SUBMITTED = "submitted"
    RETURNED = "returned"
    APPROVED = "approved"
    DELIVERY_FAILED = "delivery-failed"
    REJECTED = "rejected"
    RELEASED = "released"
    LANDED = "landed"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"


OPEN = frozenset({State.DRAFT, State.SUBMITTED, State.RETURNED})
MOVES: dict[State, frozenset[State]] = {
    State.DRAFT: frozenset({State.SUBMITTED, State.WITHDRAWN}),
    State.SUBMITTED: frozenset({State.SUBMITTED, State.APPROVED, State.REJECTED, State.RETURNED, State.WITHDRAWN}),
    State.RETURNED: frozenset({State.SUBMITTED, State.WITHDRAWN}),
    State.APPROVED: frozenset({State.RELEASED, State.DELIVERY_FAILED, State.LANDED, State.EXPIRED}),
    State.DELIVERY_FAILED: frozenset({State.RELEASED, State.DELIVERY_FAILED}),
}


class Verdict(StrEnum):
    APPROVE = "approve"
    REJECT = "reject"
    RETURN = "return"


@dataclass(frozen=True)
class File:
    """One uploaded file: its safe name, size and content hash."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Review:
    """One reviewer's verdict on exactly the versions of the files they saw (name -> sha256)."""

    reviewer: str
    role: str
    verdict: Verdict
    time: str
    seen: dict[str, str]
    comment: str = ""
    comments: dict[str, str] = field(default_factory=dict)


@dataclass
class Request:
    id: str
    kind: Kind
    requester: str
    reason: str
    created: str
    state: State = State.DRAFT
    files: list[File] = field(default_factory=list)
    findings: int = 0
    detail: dict[str, Any] = field(default_factory=dict)  # access: role/column/action/seconds; packages: requirement
    reviews: list[Review] = field(default_factory=list)
    expires: str | None = None
    updated: str = ""

    @property
    def hashes(self) -> dict[str, str]:
        return {f.name: f.sha256 for f in self.files}

    def approvals(self) -> list[Review]:
        """Approvals of the files as they are now: an approval of an earlier version no longer counts."""
        current = self.hashes
        return [r for r in self.reviews if r.verdict is Verdict.APPROVE and r.seen == current]

    def move(self, to: State, when: str) -> None:
        if to not in MOVES.get(self.state, frozenset()):
            raise RequestRefused(f"request {self.id} is {self.state}; it cannot become {to}")
        self.state, self.updated = to, when

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Request:
        files = [File(**f) for f in data.pop("files", [])]
        reviews = [Review(**{**r, "verdict": Verdict(r["verdict"])}) for r in data.pop("reviews", [])]
        return cls(**{**data, "kind": Kind(data["kind"]), "state": State(data["state"])}, files=files, reviews=reviews)


def new_id() -> str:
    """Unguessable, so an id seen in a log does not let anyone else find the request."""
    return "rq_" + secrets.token_hex(10)
