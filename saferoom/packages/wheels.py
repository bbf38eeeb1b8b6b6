"""What a wheel says about itself: name, version, dependencies and license."""

from __future__ import annotations

import hashlib
import re
import zipfile
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path

from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from saferoom.errors import PackagesError

# Trove classifiers that name one SPDX license unambiguously.
CLASSIFIERS = {
    "MIT License": "MIT",
    "Apache Software License": "Apache-2.0",
    "Python Software Foundation License": "PSF-2.0",
    "ISC License (ISCL)": "ISC",
    "Mozilla Public License 2.0 (MPL 2.0)": "MPL-2.0",
    "GNU General Public License v3 (GPLv3)": "GPL-3.0-only",
    "GNU General Public License v2 (GPLv2)": "GPL-2.0-only",
    "GNU Lesser General Public License v3 (LGPLv3)": "LGPL-3.0-only",
    "GNU Affero General Public License v3": "AGPL-3.0-only",
    "The Unlicense (Unlicense)": "Unlicense",
}
# Free-text License fields people write, to SPDX.
ALIASES = {
    "mit": "MIT", "mit license": "MIT", "bsd": "BSD-3-Clause", "bsd license": "BSD-3-Clause",
    "new bsd": "BSD-3-Clause", "3-clause bsd": "BSD-3-Clause", "bsd 3-clause": "BSD-3-Clause",
    "bsd-3-clause": "BSD-3-Clause", "bsd-2-clause": "BSD-2-Clause", "apache 2.0": "Apache-2.0",
    "apache-2.0": "Apache-2.0", "apache license 2.0": "Apache-2.0", "apache software license": "Apache-2.0",
    "psf": "PSF-2.0", "psf-2.0": "PSF-2.0", "gpl-3.0": "GPL-3.0-only", "gplv3": "GPL-3.0-only",
}


@dataclass(frozen=True)
class Wheel:
    path: Path
    name: str
    version: str
    sha256: str
    licenses: tuple[str, ...]  # SPDX ids, any of which the wheel may be used under
    license_text: str

    @property
    def project(self) -> str:
        return canonicalize_name(self.name)


MAX_METADATA = 16 << 20  # the largest real METADATA (long descriptions included) is far smaller


def read(path: Path) -> Wheel:
    """A wheel's facts; a wheel that is not one (bad name, not a zip, no or oversized METADATA) is refused."""
    try:
        name, version, _, _ = parse_wheel_filename(path.name)
        with zipfile.ZipFile(path) as archive:
            meta = next((i for i in archive.infolist() if i.filename.endswith(".dist-info/METADATA")), None)
            if meta is None or meta.file_size > MAX_METADATA:
                raise PackagesError(f"the wheel {path.name} has no readable METADATA; nothing was admitted")
            metadata = HeaderParser().parsestr(archive.read(meta).decode("utf-8", "replace"))
    except (InvalidWheelFilename, zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        raise PackagesError(f"the wheel {path.name} is malformed ({exc}); nothing was admitted") from None
    text, licenses = license_of(metadata)
    return Wheel(path, str(name), str(version), sha256(path), licenses, text)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def license_of(metadata: object) -> tuple[str, tuple[str, ...]]:
    """The license as written, and the SPDX ids it resolves to (any one of which may be chosen)."""
    expression = metadata.get("License-Expression")  # type: ignore[attr-defined]
    if expression:
        return expression, _expression(expression)
    classifiers = [c.split("::")[-1].strip() for c in metadata.get_all("Classifier") or [] if c.startswith("License ::")]  # type: ignore[attr-defined]
    named = tuple(CLASSIFIERS[c] for c in classifiers if c in CLASSIFIERS)
    text = (metadata.get("License") or "").strip()  # type: ignore[attr-defined]
    alias = ALIASES.get(text.lower()) if text and len(text) < 60 else None
    found = tuple(dict.fromkeys([*named, *([alias] if alias else [])]))
    return text or ", ".join(classifiers) or "none declared", found


def _expression(expression: str) -> tuple[str, ...]:
    """SPDX expression to the ids it may be used under: A OR B -> (A, B); A AND B must all be allowed."""
    alternatives = [a.strip(" ()") for a in re.split(r"\s+OR\s+", expression)]
    return tuple(a for a in alternatives if a)


def allowed(wheel: Wheel, licenses: list[str]) -> bool:
    permitted = {name.lower() for name in licenses}
    for option in wheel.licenses:
        parts = [p.strip(" ()").lower() for p in re.split(r"\s+AND\s+", option)]
        if all(p in permitted for p in parts):
            return True
    return False
