"""The request engine from a client: what `saferoom release|access|packages request` and `saferoom requests` call.

Files are streamed to the gateway a chunk at a time; symbolic links are refused here, before any byte
leaves (the gateway refuses unsafe names too).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from saferoom.client import RemoteSession, load_credentials
from saferoom.errors import UsageError

CHUNK = 1 << 20


def gateway() -> RemoteSession:
    """The gateway this shell reaches: the room's socket, SAFEROOM_URL, or what `saferoom login` saved."""
    saved = load_credentials()
    token = os.environ.get("SAFEROOM_TOKEN") or saved.get("token") or ""
    if os.environ.get("SAFEROOM_SOCKET"):
        return RemoteSession(None, token, socket=os.environ["SAFEROOM_SOCKET"])
    url = os.environ.get("SAFEROOM_URL") or saved.get("url")
    if not url:
        raise UsageError("requests go to the gateway: set SAFEROOM_URL and SAFEROOM_TOKEN, or run `saferoom login`")
    return RemoteSession(url, token)


class RequestsClient:
    def __init__(self, session: RemoteSession) -> None:
        self.session = session

    def release(self, files: list[Path], reason: str) -> dict[str, Any]:
        """Upload ``files`` into a new release request, check them, and submit it for review."""
        for path in files:
            if path.is_symlink() or not path.is_file():
                raise UsageError(f"{path} is not a regular file (links and folders are not released); name the file itself")
        request: dict[str, Any] = self.session.call("POST", "/v1/requests/release", json={"reason": reason})
        for path in files:
            self.upload(request["id"], path)
        submitted: dict[str, Any] = self.session.call("POST", f"/v1/requests/{request['id']}/submit")
        return submitted

    def upload(self, request_id: str, path: Path, name: str | None = None) -> dict[str, Any]:
        size = path.stat().st_size
        written: dict[str, Any] = self.session.call(
            "PUT", f"/v1/requests/{request_id}/files/{quote(name or path.name, safe='')}", content=_chunks(path),
            headers={"Content-Length": str(size), "Content-Type": "application/octet-stream"})
        return written

    def access(self, reason: str, duration: str, role: str | None, column: str | None, action: str) -> dict[str, Any]:
        body = {"reason": reason, "duration": duration, "role": role, "column": column, "action": action}
        asked: dict[str, Any] = self.session.call("POST", "/v1/requests/access", json=body)
        return asked

    def package(self, requirement: str, reason: str) -> dict[str, Any]:
        asked: dict[str, Any] = self.session.call("POST", "/v1/requests/packages", json={"requirement": requirement, "reason": reason})
        return asked

    def list(self, state: str | None = None) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.session.call("GET", "/v1/requests", params={"state": state} if state else {})
        return found

    def show(self, request_id: str) -> dict[str, Any]:
        shown: dict[str, Any] = self.session.call("GET", f"/v1/requests/{quote(request_id, safe='')}")
        return shown

    def review(self, request_id: str, verdict: str, seen: dict[str, str], comment: str = "",
               comments: dict[str, str] | None = None) -> dict[str, Any]:
        body = {"verdict": verdict, "files": seen, "comment": comment, "comments": comments or {}}
        reviewed: dict[str, Any] = self.session.call("POST", f"/v1/requests/{quote(request_id, safe='')}/review", json=body)
        return reviewed

    def withdraw(self, request_id: str) -> dict[str, Any]:
        withdrawn: dict[str, Any] = self.session.call("POST", f"/v1/requests/{quote(request_id, safe='')}/withdraw")
        return withdrawn

    def deliver(self, request_id: str) -> dict[str, Any]:
        delivered: dict[str, Any] = self.session.call("POST", f"/v1/requests/{quote(request_id, safe='')}/deliver")
        return delivered


def _chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            yield chunk
