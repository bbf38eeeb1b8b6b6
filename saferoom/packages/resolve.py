"""One resolution of the requirements for one target, by pip's own resolver, and the downloads it names.

pip resolves with ``install --dry-run --report``: it reads each candidate's
metadata (from the index's PEP 658 files where served, so no wheel is fetched to
resolve) and reports the exact closure with URLs and hashes. saferoom then
downloads only the wheels it has not got, checking each hash.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import httpx
from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from saferoom.errors import PackagesError
from saferoom.packages.wheels import sha256

Progress = Callable[[str], None]
DOWNLOADERS = 4


@dataclass(frozen=True)
class Target:
    python: str
    platform: str

    @property
    def name(self) -> str:
        return f"py{self.python}-{self.platform}"


@dataclass(frozen=True)
class Pin:
    project: str  # canonical name
    version: str
    url: str
    sha256: str
    requires: tuple[str, ...]
    extras: tuple[str, ...]  # extras asked for this project at the top level

    @property
    def filename(self) -> str:
        return urllib.parse.unquote(self.url.rsplit("/", 1)[-1].split("#", 1)[0])


class Unresolvable(Exception):
    """pip found no set of versions that satisfies the requirements (not an upstream failure)."""

    def __init__(self, output: str) -> None:
        super().__init__(last_error(output))
        self.output = output


def resolve(target: Target, requirements: list[str], excluded: list[str], index: str, work: Path) -> tuple[list[Pin], str]:
    """The closure pip chooses for ``requirements`` on ``target``, with ``excluded`` (``name!=version``) as
    constraints, and the version of pip that chose it."""
    work.mkdir(parents=True, exist_ok=True)
    constraints, report = work / "constraints.txt", work / "report.json"
    constraints.write_text("".join(f"{line}\n" for line in excluded))
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
               "--only-binary=:all:", "--python-version", target.python, "--platform", target.platform,
               "--target", str(work / "target"), "--index-url", index, "--cache-dir", str(work.parent / "pip-cache"),
               "--disable-pip-version-check", "--no-input", "--progress-bar", "off", "--constraint", str(constraints),
               *requirements]
    done = subprocess.run(command, capture_output=True, text=True, env=pip_env(), check=False)
    output = done.stdout + done.stderr
    check_output(done.returncode, output, index, work)
    if done.returncode != 0:
        raise Unresolvable(output)
    chosen = json.loads(report.read_text())
    return pins(chosen), f"pip {chosen.get('pip_version', '(version unknown)')}"


def pip_env() -> dict[str, str]:
    """pip without the machine's own configuration: only the index given, no extra find-links or indexes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull}


def pins(report: dict[str, object]) -> list[Pin]:
    found = []
    for item in report["install"]:  # type: ignore[attr-defined]
        meta, info = item["metadata"], item["download_info"]
        found.append(Pin(canonicalize_name(meta["name"]), meta["version"], info["url"], info["archive_info"]["hashes"]["sha256"],
                         tuple(meta.get("requires_dist", ())), tuple(item.get("requested_extras", ()) or ())))
    return sorted(found, key=lambda p: p.project)


def closure(requirement: str, chosen: list[Pin], markers: bool = True) -> set[str]:
    """The projects a top-level requirement pulls in, following the dependencies whose markers apply (or all)."""
    by_name = {p.project: p for p in chosen}
    top = Requirement(requirement)
    todo, seen = [(canonicalize_name(top.name), frozenset(top.extras))], set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in seen or name not in by_name:
            continue
        seen.add((name, extras))
        todo += [(canonicalize_name(d.name), frozenset(d.extras)) for d in _dependencies(by_name[name], extras, markers)]
    return {name for name, _ in seen}


def _dependencies(pin: Pin, extras: frozenset[str], markers: bool) -> list[Requirement]:
    environment: dict[str, str] = dict(default_environment())  # type: ignore[arg-type]
    found = []
    for text in pin.requires:
        try:
            dependency = Requirement(text)
        except InvalidRequirement:
            continue
        marker = dependency.marker
        if marker is None or not markers or any(marker.evaluate({**environment, "extra": e}) for e in [*extras, ""]):
            found.append(dependency)
    return found


def download(chosen: list[Pin], folder: Path, previous: Path | None) -> Iterator[tuple[Pin, Path]]:
    """Each pin with its wheel in ``folder``, hash checked, as each arrives; a wheel the previous snapshot
    holds with the same hash is reused, not fetched."""
    folder.mkdir(parents=True, exist_ok=True)
    with httpx.Client(timeout=60, follow_redirects=True) as client, ThreadPoolExecutor(DOWNLOADERS) as pool:
        jobs = {pool.submit(_fetch, client, pin, folder, previous): pin for pin in chosen}
        try:
            for job in as_completed(jobs):
                yield jobs[job], job.result()
        finally:
            for job in jobs:
                job.cancel()


def _fetch(client: httpx.Client, pin: Pin, folder: Path, previous: Path | None) -> Path:
    path, part = folder / pin.filename, folder / f"{pin.filename}.part"
    if path.exists():
        return path  # fetched and checked in an earlier round
    kept = previous / pin.filename if previous else None
    try:
        if kept and kept.is_file() and sha256(kept) == pin.sha256:
            shutil.copyfile(kept, part)
        else:
            _get(client, pin, part)
        if sha256(part) != pin.sha256:
            raise PackagesError(f"{pin.filename} does not match its published hash (tampered or corrupt); nothing was admitted")
        os.replace(part, path)
    except OSError as exc:
        part.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EFBIG):
            raise PackagesError(f"the downloads could not be written in {folder}: the disk is full or a file-size limit "
                                "was reached; free space and run again (the previous snapshot is untouched)") from None
        raise
    return path


def _get(client: httpx.Client, pin: Pin, part: Path) -> None:
    if pin.url.startswith("file://"):
        shutil.copyfile(urllib.parse.unquote(urllib.parse.urlparse(pin.url).path), part)
        return
    try:
        with client.stream("GET", pin.url) as response, part.open("wb") as out:
            response.raise_for_status()
            for block in response.iter_bytes(1 << 20):
                out.write(block)
    except httpx.HTTPError as exc:
        raise PackagesError(f"the upstream index could not be read: {pin.filename}: {exc}") from None


_DISK_FULL = re.compile(r"errno 2[78]\b|oserror\(2[78],|no space left on device|file too large", re.IGNORECASE)
_UNREACHABLE = ("connection refused", "connectionerror", "max retries exceeded", "remote end closed", "incompleteread",
                "connection broken", "could not fetch url", "read timed out")


def check_output(code: int, output: str, index: str, work: Path) -> None:
    """Turn pip's failures that are not about versions into saferoom's errors, each saying what to do."""
    if "DO NOT MATCH THE HASHES" in output.upper():
        raise PackagesError(f"a wheel from {index} does not match its published hash (tampered or corrupt); nothing was admitted")
    if code != 0 and _DISK_FULL.search(output):
        raise PackagesError(f"pip could not write in {work}: the disk is full or a file-size limit was reached; free space "
                            "and run again (the previous snapshot is untouched)")
    if code != 0 and any(s in output.lower() for s in _UNREACHABLE):
        raise PackagesError(f"the upstream index {index} could not be read: {last_error(output)}")


def last_error(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip().startswith("ERROR")]
    return (lines[-1] if lines else output.strip().splitlines()[-1] if output.strip() else "pip failed").removeprefix("ERROR: ")
