"""Requests and reviews: release (the airlock), access for a while, and packages, on one engine.

:class:`Requests` is what the gateway holds: the engine and its three kinds over one store.
See docs/requests.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from saferoom.policy import Policy
from saferoom.requests.access import Access, command, granted_policy
from saferoom.requests.engine import Engine, Limits
from saferoom.requests.model import File, Kind, Request, Review, State, Verdict
from saferoom.requests.notify import Webhooks
from saferoom.requests.packages import PackageRequests
from saferoom.requests.release import Airlock
from saferoom.requests.store import FileStore, RequestStore
from saferoom.store.base import AuditWriter

__all__ = ["Access", "Airlock", "Engine", "File", "FileStore", "Kind", "Limits", "PackageRequests", "Request",
           "RequestStore", "Requests", "Review", "State", "Verdict", "Webhooks", "command", "granted_policy"]


class Requests:
    """The gateway's request engine: ``store`` keeps the requests (by default a folder store on ``root``, where
    the approved packages list is written too), ``outbox`` receives approved releases,
    ``snapshots`` is where package syncs publish (to tell requesters their package landed)."""

    def __init__(self, root: Path, audit: AuditWriter, policy: Callable[[], Policy], *, outbox: Path | None,
                 snapshots: Path | None = None, limits: Limits | None = None, webhooks: Sequence[str] = (),
                 store: RequestStore | None = None) -> None:
        self.webhooks = Webhooks(webhooks)
        self.store = store or FileStore(root)
        self.engine = Engine(self.store, audit, policy, limits=limits, notify=self.webhooks)
        self.release = Airlock(self.engine, outbox)
        self.access = Access(self.engine)
        self.packages = PackageRequests(self.engine, root, snapshots)

    def sweep(self) -> None:
        """Expire grants past their time; mark packages a published snapshot admitted as landed."""
        self.access.sweep()
        self.packages.sweep()

    def close(self) -> None:
        self.webhooks.close()
        self.store.close()
