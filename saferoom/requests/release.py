"""The airlock: files uploaded into the request area, checked, reviewed, and written to the outbox once approved.

Uploads are streamed to disk and hashed as they arrive (nothing holds a file in memory), with a cap per
file and per request. Names are a flat allowlist: no folders, no `..`, no NUL, nothing hidden. Files are
opened with O_NOFOLLOW and O_EXCL, so a link planted in the request area is never followed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from saferoom.audit import now
from saferoom.errors import RequestRefused, TooLarge
from saferoom.files import atomic_write, fsync_dir
from saferoom.identity import Identity
from saferoom.requests.engine import Engine
from saferoom.requests.model import File, Kind, Request, State

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ +()-]{0,199}$")
CHECK_REPORT = "check.json"
MANIFEST = "manifest.json"


def safe_name(name: str) -> str:
    """The name as given when it is a plain file name; otherwise refused, saying what is allowed."""
    if not NAME.match(name) or ".." in name or name in (CHECK_REPORT, MANIFEST):
        raise RequestRefused(f"the file name {name[:80]!r} is not allowed: give a plain name (letters, digits, "
                             "and . _ - + ( ) or spaces; no folders, no leading dot, no `..`)")
    return name


class Airlock:
    """Release requests over an :class:`Engine`; approved releases go to ``outbox``."""

    def __init__(self, engine: Engine, outbox: Path) -> None:
        self.engine, self.outbox = engine, outbox
        outbox.mkdir(parents=True, exist_ok=True, mode=0o700)
        engine.on_change.append(self._released)

    def request(self, who: Identity, reason: str) -> Request:
        return self.engine.create(Kind.RELEASE, who, reason, {})

    def upload(self, request_id: str, who: Identity, name: str, chunks: Iterable[bytes], declared: int | None = None) -> File:
        """Stream one file into the request (replacing one of the same name); a changed file needs review again."""
        receiving = self.receive(request_id, who, name, declared)
        try:
            for chunk in chunks:
                receiving.write(chunk)
        except BaseException:
            receiving.abort()
            raise
        return receiving.finish()

    def receive(self, request_id: str, who: Identity, name: str, declared: int | None = None) -> Upload:
        """An upload to feed chunk by chunk (the HTTP layer's body as it arrives), then finish or abort."""
        name = safe_name(name)
        limits = self.engine.limits
        request = self._editable(request_id, who)
        others = [f for f in request.files if f.name != name]
        if len(others) >= limits.max_files:
            raise RequestRefused(f"a request holds at most {limits.max_files} files; make a second request")
        room = min(limits.max_file_bytes, limits.max_request_bytes - sum(f.size for f in others))
        refusal = _too_large(limits.max_file_bytes, limits.max_request_bytes)
        if declared is not None and declared > room:
            raise TooLarge(refusal)
        folder = self.engine.store.folder(request.id)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        return Upload(folder / name, room, refusal, lambda written: self._kept(request_id, who, written))

    def _kept(self, request_id: str, who: Identity, written: File) -> None:
        folder = self.engine.store.folder(request_id)
        with self.engine.store.locked():
            request = self._editable(request_id, who)  # again, under the lock: a review may have come meanwhile
            os.replace(folder / f".{written.name}.part", folder / written.name)
            fsync_dir(folder)
            request.files = sorted([f for f in request.files if f.name != written.name] + [written], key=lambda f: f.name)
            if request.state is State.SUBMITTED:  # a new version: checked and submitted again before anyone reviews it
                request.move(State.RETURNED, now())
            self.engine.record(request, "upload", who.user, file=written.name, sha256=written.sha256, size=written.size)

    def submit(self, request_id: str, who: Identity) -> Request:
        """Run `saferoom check` on the files, keep its report, and put the request before its reviewers."""
        request = self._editable(request_id, who)
        if not request.files:
            raise RequestRefused("the request holds no file; upload one first")
        folder = self.engine.store.folder(request.id)
        report = _check(folder, request)
        with self.engine.store.locked():
            current = self._editable(request_id, who)
            if current.hashes != request.hashes:
                raise RequestRefused("the files changed while they were checked; submit again")
            atomic_write(folder / CHECK_REPORT, json.dumps(report, indent=1).encode())
            current.findings = len(report["findings"])
            self.engine.change(current, State.SUBMITTED, who.user, findings=current.findings)
        return current

    def report(self, request: Request) -> dict[str, Any]:
        path = self.engine.store.folder(request.id) / CHECK_REPORT
        loaded: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"files": 0, "findings": [], "errors": []}
        return loaded

    def path(self, request: Request, name: str) -> Path:
        if name not in request.hashes:
            raise RequestRefused(f"the request holds no file named {name[:80]!r}")
        return self.engine.store.folder(request.id) / name

    def _editable(self, request_id: str, who: Identity) -> Request:
        request = self.engine.show(request_id, who)
        if request.kind is not Kind.RELEASE or request.requester != who.user:
            raise RequestRefused("only the requester changes a release request's files")
        if request.state not in (State.DRAFT, State.RETURNED, State.SUBMITTED):
            raise RequestRefused(f"request {request.id} is {request.state}; its files can no longer change")
        return request

    def _released(self, request: Request) -> None:
        """On the last approval: write the files, exactly as approved, to the outbox, with a manifest."""
        if request.kind is not Kind.RELEASE or request.state is not State.APPROVED:
            return
        folder = self.engine.store.folder(request.id)
        approved = request.approvals()
        for file in request.files:  # what leaves is what was reviewed, byte for byte, or nothing leaves
            if _sha256(folder / file.name) != file.sha256 or any(r.seen.get(file.name) != file.sha256 for r in approved):
                raise RequestRefused(f"{file.name} is not the version its reviewers approved; nothing was released")
        target = self.outbox / request.id
        staging = self.outbox / f".{request.id}.part"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        for file in request.files:
            shutil.copyfile(folder / file.name, staging / file.name, follow_symlinks=False)
        shutil.copyfile(folder / CHECK_REPORT, staging / CHECK_REPORT)
        atomic_write(staging / MANIFEST, json.dumps(_manifest(request, approved), indent=1).encode())
        os.replace(staging, target)
        fsync_dir(self.outbox)
        self.engine.change(request, State.RELEASED, "saferoom", outbox=str(target))


class Upload:
    """One file arriving: written to a part file beside its name and hashed as it comes; refused past ``room``
    bytes; kept (renamed into place, recorded) by ``finish``."""

    def __init__(self, path: Path, room: int, refusal: str, keep: Callable[[File], None]) -> None:
        self.path, self.room, self.refusal, self.keep = path, room, refusal, keep
        self.part = path.with_name(f".{path.name}.part")
        self.part.unlink(missing_ok=True)
        fd = os.open(self.part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        self.out = os.fdopen(fd, "wb")
        self.digest, self.size = hashlib.sha256(), 0

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.room:
            self.abort()
            raise TooLarge(self.refusal)
        self.digest.update(chunk)
        self.out.write(chunk)

    def finish(self) -> File:
        try:
            self.out.flush()
            os.fsync(self.out.fileno())
            self.out.close()
            written = File(self.path.name, self.size, self.digest.hexdigest())
            self.keep(written)
        except BaseException:
            self.abort()
            raise
        return written

    def abort(self) -> None:
        self.out.close()
        self.part.unlink(missing_ok=True)


def _too_large(per_file: int, per_request: int) -> str:
    return (f"the file is larger than the request area takes: at most {per_file:,} bytes a file and "
            f"{per_request:,} a request; release a summary, or ask the gateway's operator to raise --max-upload-bytes")


def _check(folder: Path, request: Request) -> dict[str, Any]:
    from saferoom.check import check

    report = check([folder / f.name for f in request.files]).to_dict()
    prefix = str(folder) + os.sep
    for item in [*report["findings"], *report["errors"]]:  # name files as the request does, not by where they sit
        item["file"] = str(item["file"]).removeprefix(prefix)
    return report


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _manifest(request: Request, approved: list[Any]) -> dict[str, Any]:
    return {"request": request.id, "requester": request.requester, "reason": request.reason, "created": request.created,
            "released": now(), "files": [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in request.files],
            "reviewers": [{"user": r.reviewer, "role": r.role, "time": r.time, "comment": r.comment,
                           "comments": r.comments} for r in approved],
            "findings": request.findings, "check_report": CHECK_REPORT}
