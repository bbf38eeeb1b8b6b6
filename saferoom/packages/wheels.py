"""What a wheel says about itself: name, version, hash, and its license metadata and files."""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from email.message import Message
from email.parser import HeaderParser
from pathlib import Path, PurePosixPath

from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from saferoom.errors import PackagesError
from saferoom.packages.licenses import Facts

MAX_METADATA = 16 << 20  # the largest real METADATA (long descriptions included) is far smaller
MAX_LICENSE_FILE = 1 << 20
LICENSE_NAMES = ("LICEN", "COPYING", "COPYRIGHT", "NOTICE")


@dataclass(frozen=True)
class Wheel:
    path: Path
    name: str
    version: str
    sha256: str
    facts: Facts

    @property
    def project(self) -> str:
        return canonicalize_name(self.name)


def read(path: Path, known_sha256: str | None = None) -> Wheel:
    """A wheel's facts; a wheel that is not one (bad name, not a zip, no or oversized METADATA) is refused.
    ``known_sha256``: the hash already checked against the index, so the file is not hashed twice."""
    try:
        name, version, _, _ = parse_wheel_filename(path.name)
        with zipfile.ZipFile(path) as archive:
            facts = _facts(path.name, archive)
    except (InvalidWheelFilename, zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        raise PackagesError(f"the wheel {path.name} is malformed ({exc}); nothing was admitted") from None
    return Wheel(path, str(name), str(version), known_sha256 or sha256(path), facts)


def _facts(wheel: str, archive: zipfile.ZipFile) -> Facts:
    meta = next((i for i in archive.infolist() if _in_dist_info(i.filename) and i.filename.endswith("/METADATA")), None)
    if meta is None or meta.file_size > MAX_METADATA:
        raise PackagesError(f"the wheel {wheel} has no readable METADATA; nothing was admitted")
    metadata = HeaderParser().parsestr(archive.read(meta).decode("utf-8", "replace"))
    return facts_of(metadata, _license_files(archive))


def facts_of(metadata: Message, files: tuple[tuple[str, str], ...] = ()) -> Facts:
    return Facts(expression=metadata.get("License-Expression"), license=metadata.get("License"),
                 classifiers=tuple(metadata.get_all("Classifier") or ()), files=files)


def _license_files(archive: zipfile.ZipFile) -> tuple[tuple[str, str], ...]:
    """License files under ``*.dist-info/`` (PEP 639's ``licenses/`` or the older top level), main ones first."""
    chosen = [i for i in archive.infolist() if _in_dist_info(i.filename) and not i.is_dir()
              and PurePosixPath(i.filename).name.upper().startswith(LICENSE_NAMES) and i.file_size <= MAX_LICENSE_FILE]
    chosen.sort(key=lambda i: (_rank(i.filename), i.filename))
    return tuple((i.filename.split(".dist-info/", 1)[1], archive.read(i).decode("utf-8", "replace")) for i in chosen)


def _rank(name: str) -> tuple[int, int]:
    inside = PurePosixPath(name.split(".dist-info/", 1)[1])
    depth = len(inside.parts) - (2 if inside.parts[0] == "licenses" else 1)
    return depth, 0 if inside.name.upper().startswith(("LICEN", "COPYING")) else 1


def _in_dist_info(name: str) -> bool:
    head = name.split("/", 1)[0]
    return head.endswith(".dist-info") and "/" in name


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
