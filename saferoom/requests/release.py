"""The airlock: files uploaded into the request area, checked, reviewed, and written to the outbox once approved.

Uploads are streamed to disk and hashed as they arrive (nothing holds a file in memory), with a cap per
file and per request, then kept by the request store (the folder, or the gateway's PostgreSQL state).
Names are a flat allowlist: no folders, no `..`, no NUL, nothing hidden. Files are opened with O_NOFOLLOW
and O_EXCL, so a link planted in the request area is never followed.

Delivery to the outbox is all or nothing: the files are written to a hidden folder beside their place and
renamed into it. When that fails (a full disk, an outbox that cannot be written) the request becomes
``delivery-failed``, with the reason in the audit log, and :meth:`Airlock.deliver` (`saferoom requests
deliver ID`) writes it again; delivering a request the outbox already holds, as approved, only records it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from saferoom.audit import now
from saferoom.errors import RequestRefused, TooLarge, UsageError
from saferoom.files import atomic_write, fsync_dir
from saferoom.identity import Identity
from saferoom.requests.engine import Engine
from saferoom.requests.model import File, Kind, Request, Review, State
from saferoom.requests.store import REPORT

log = logging.getLogger("saferoom.requests")

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ +()-]{0,199}$")
CHECK_REPORT = REPORT
MANIFEST = "manifest.json"


def safe_name(name: str) -> str:
    """The name as given when it is a plain file name; otherwise refused, saying what is allowed."""
    if not NAME.match(name) or ".." in name or name in (CHECK_REPORT, MANIFEST):
        raise RequestRefused(f"the file name {name[:80]!r} is not allowed: give a plain name (letters, digits, "
                             "and . _ - + ( ) or spaces; no folders, no leading dot, no `..`)")
    return name


class Airlock:
    """Release requests over an :class:`Engine`; approved releases go to ``outbox``."""

    def __init__(self, engine: Engine, outbox: Path | None) -> None:
        self.engine, self._outbox = engine, outbox
        if outbox is not None:
            outbox.mkdir(parents=True, exist_ok=True, mode=0o700)
        engine.on_change.append(self._released)

    @property
    def outbox(self) -> Path:
        if self._outbox is None:
            raise UsageError("this gateway keeps its state in PostgreSQL and was started without `--outbox DIR`: "
                             "releases need a folder outside every room to be written to (the same one on every gateway)")
        return self._outbox

    def request(self, who: Identity, reason: str) -> Request:
        _ = self.outbox  # refused before anything is uploaded, not at the last approval
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
            self.engine.store.keep(request_id, folder / f".{written.name}.part", written)
            request.files = sorted([f for f in request.files if f.name != written.name] + [written], key=lambda f: f.name)
            if request.state is State.SUBMITTED:  # a new version: checked and submitted again before anyone reviews it
                request.move(State.RETURNED, now())
            self.engine.record(request, "upload", who.user, file=written.name, sha256=written.sha256, size=written.size)

    def submit(self, request_id: str, who: Identity) -> Request:
        """Run `saferoom check` on the files, keep its report, and put the request before its reviewers."""
        request = self._editable(request_id, who)
        if not request.files:
            raise RequestRefused("the request holds no file; upload one first")
        report = _check({self.engine.store.path(request.id, f): f.name for f in request.files})
        with self.engine.store.locked():
            current = self._editable(request_id, who)
            if current.hashes != request.hashes:
                raise RequestRefused("the files changed while they were checked; submit again")
            self.engine.store.save_report(request.id, json.dumps(report, indent=1).encode())
            current.findings = len(report["findings"])
            self.engine.change(current, State.SUBMITTED, who.user, findings=current.findings)
        return current

    def report(self, request: Request) -> dict[str, Any]:
        kept = self.engine.store.load_report(request.id)
        loaded: dict[str, Any] = json.loads(kept) if kept is not None else {"files": 0, "findings": [], "errors": []}
        return loaded

    def path(self, request: Request, name: str) -> Path:
        file = next((f for f in request.files if f.name == name), None)
        if file is None:
            raise RequestRefused(f"the request holds no file named {name[:80]!r}")
        return self.engine.store.path(request.id, file)

    def _editable(self, request_id: str, who: Identity) -> Request:
        request = self.engine.show(request_id, who)
        if request.kind is not Kind.RELEASE or request.requester != who.user:
            raise RequestRefused("only the requester changes a release request's files")
        if request.state not in (State.DRAFT, State.RETURNED, State.SUBMITTED):
            raise RequestRefused(f"request {request.id} is {request.state}; its files can no longer change")
        return request

    def _released(self, request: Request) -> None:
        """On the last approval: write the files, exactly as approved, to the outbox, with a manifest."""
        if request.kind is Kind.RELEASE and request.state is State.APPROVED:
            self._deliver(request)  # a failure is recorded in the request's state, not raised at its last reviewer

    def deliver(self, request_id: str, who: Identity) -> Request:
        """Write an approved release the outbox did not take, again; a reviewer of releases asks for it."""
        with self.engine.store.locked():
            request = self.engine.show(request_id, who)
            if self.engine.reviewer_role(request.kind, who) is None or who.user == request.requester:
                raise RequestRefused("a reviewer of releases, not its requester, delivers a release again; ask one")
            if request.kind is not Kind.RELEASE or request.state not in (State.APPROVED, State.DELIVERY_FAILED):
                raise RequestRefused(f"request {request.id} is {request.state}: only an approved release whose "
                                     "delivery failed is delivered again")
            problem = self._deliver(request)
        if problem is not None:
            raise RequestRefused(f"request {request.id} is still not delivered: the outbox did not take it ({problem}); "
                                 f"make the outbox writable and run `saferoom requests deliver {request.id}` again")
        return request

    def _deliver(self, request: Request) -> str | None:
        """Write the release to the outbox and record it released; or record why not and return it."""
        approved = request.approvals()
        for file in request.files:  # what leaves is what was reviewed, byte for byte, or nothing leaves
            path = self.engine.store.path(request.id, file)
            if _sha256(path) != file.sha256 or any(r.seen.get(file.name) != file.sha256 for r in approved):
                raise RequestRefused(f"{file.name} is not the version its reviewers approved; nothing was released")
        try:
            target = self._write_outbox(request, approved)
        except OSError as exc:
            problem = exc.strerror or type(exc).__name__
            log.error("release %s was approved but not written to the outbox: %s", request.id, problem)
            self.engine.change(request, State.DELIVERY_FAILED, "saferoom", problem=problem)
            return problem
        self.engine.change(request, State.RELEASED, "saferoom", outbox=str(target))
        return None

    def _write_outbox(self, request: Request, approved: list[Review]) -> Path:
        """The release in ``OUTBOX/<id>``, whole or not at all: written to a hidden folder, then renamed."""
        target, staging = self.outbox / request.id, self.outbox / f".{request.id}.part"
        if _delivered(target, request):
            return target  # an earlier delivery got this far before it could be recorded
        shutil.rmtree(staging, ignore_errors=True)
        try:
            staging.mkdir(mode=0o700)
            for file in request.files:
                shutil.copyfile(self.engine.store.path(request.id, file), staging / file.name, follow_symlinks=False)
            atomic_write(staging / CHECK_REPORT, self.engine.store.load_report(request.id) or b"{}")
            atomic_write(staging / MANIFEST, json.dumps(_manifest(request, approved), indent=1).encode())
            os.replace(staging, target)
            fsync_dir(self.outbox)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target


def _delivered(target: Path, request: Request) -> bool:
    """Whether ``target`` already holds this release, as approved (its manifest names the same files)."""
    try:
        manifest = json.loads((target / MANIFEST).read_text())
        listed = {f["name"]: f["sha256"] for f in manifest["files"]}
        return bool(manifest["request"] == request.id and listed == request.hashes)
    except (OSError, ValueError, KeyError, TypeError):  # no manifest, or not one of ours: not delivered
        return False


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


def _check(files: dict[Path, str]) -> dict[str, Any]:
    """`saferoom check` on the files (their local path -> their name in the request)."""
    from saferoom.check import check

    report = check(list(files)).to_dict()
    names = {str(path): name for path, name in files.items()}
    for item in [*report["findings"], *report["errors"]]:  # name files as the request does, not by where they sit
        item["file"] = names.get(str(item["file"]), item["file"])
    return report


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _manifest(request: Request, approved: list[Review]) -> dict[str, Any]:
    return {"request": request.id, "requester": request.requester, "reason": request.reason, "created": request.created,
            "released": now(), "files": [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in request.files],
            "reviewers": [{"user": r.reviewer, "role": r.role, "time": r.time, "comment": r.comment,
                           "comments": r.comments} for r in approved],
            "findings": request.findings, "check_report": CHECK_REPORT}
