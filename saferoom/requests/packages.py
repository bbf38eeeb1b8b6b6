"""Package requests: an approved package joins the requirements the next `saferoom packages sync` resolves,
and its request is marked landed once a published snapshot admits it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

from packaging.utils import canonicalize_name

from saferoom.errors import RequestRefused
from saferoom.files import atomic_write
from saferoom.identity import Identity
from saferoom.requests.engine import Engine
from saferoom.requests.model import Kind, Request, State

REQUIREMENT = re.compile(r"^([A-Za-z0-9](?:[A-Za-z0-9._-]{0,98}[A-Za-z0-9])?)(?:==([0-9][A-Za-z0-9.+!_-]{0,49}))?$")
APPROVED = "approved-packages.txt"


class PackageRequests:
    """Approved requirements are kept in ``ROOT/approved-packages.txt``; ``snapshots`` is where syncs publish."""

    def __init__(self, engine: Engine, root: Path, snapshots: Path | None) -> None:
        self.engine, self.file, self.snapshots = engine, root / APPROVED, snapshots
        self._seen: tuple[float, int] | None = None  # the snapshot report last read: only a new one is read again
        engine.on_change.append(self._changed)

    def request(self, who: Identity, requirement: str, reason: str) -> Request:
        found = REQUIREMENT.match(requirement.strip())
        if not found:
            raise RequestRefused(f"{requirement[:100]!r} is not NAME or NAME==VERSION (for example polars==1.12.0)")
        name, version = canonicalize_name(found.group(1)), found.group(2)
        return self.engine.create(Kind.PACKAGES, who, reason, {"requirement": f"{name}=={version}" if version else name,
                                                                "project": name, "version": version}, State.SUBMITTED)

    def requirements(self) -> list[str]:
        return requirements(self.engine.store.all())

    def sweep(self) -> None:
        """Mark approved packages landed once a newly published snapshot admits them."""
        admitted = self._new_snapshot()
        if admitted is None:
            return
        waiting = [r for r in self.engine.store.all() if r.kind is Kind.PACKAGES and r.state is State.APPROVED]
        for request in waiting:
            wanted, version = request.detail["project"], request.detail["version"]
            found = next((v for name, v in admitted if name == wanted and version in (None, v)), None)
            if found is not None:
                with self.engine.store.locked():
                    self.engine.change(request, State.LANDED, "saferoom", version=found)

    def _new_snapshot(self) -> list[tuple[str, str]] | None:
        """(project, version) of each package the newest snapshot admitted, when it is new since the last look."""
        if self.snapshots is None:
            return None
        report = self.snapshots / "latest" / "report.json"
        try:
            stat = report.stat()
            if (stat.st_mtime, stat.st_ino) == self._seen:
                return None
            admitted = json.loads(report.read_text()).get("admitted", [])
        except (OSError, ValueError):
            return None
        self._seen = (stat.st_mtime, stat.st_ino)
        return [(canonicalize_name(str(e.get("project"))), str(e.get("version"))) for e in admitted]

    def _changed(self, request: Request) -> None:  # with PostgreSQL state, `packages sync --requested URL` reads them
        if request.kind is Kind.PACKAGES and request.state is State.APPROVED:
            atomic_write(self.file, "".join(f"{r}\n" for r in self.requirements()).encode(), 0o644)


def requirements(requests: Iterable[Request]) -> list[str]:
    """The requirements approved package requests add to the next sync, each once."""
    kept = (r for r in requests if r.kind is Kind.PACKAGES and r.state in (State.APPROVED, State.LANDED))
    return sorted({str(r.detail["requirement"]) for r in kept})
