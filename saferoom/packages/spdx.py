"""SPDX license expressions, and the names Python packages use for licenses, read as SPDX.

Expressions are parsed and evaluated with `license-expression` (AboutCode), so
``MIT AND (Apache-2.0 OR BSD-2-Clause)`` means what SPDX says it means. Trove
classifiers and the free text people write in the ``License`` field map either
to one SPDX id, or — for "BSD License" and its kin — to a *family* that a license
file in the wheel must settle.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache

from license_expression import (  # type: ignore[import-untyped]
    ExpressionError,
    LicenseSymbol,
    LicenseWithExceptionSymbol,
    Licensing,
    get_spdx_licensing,
)


@dataclass(frozen=True)
class Family:
    """A name that says which kind of license but not which one: settled by a license file."""

    name: str
    prefixes: tuple[str, ...]

    def has(self, spdx_id: str) -> bool:
        return spdx_id.startswith(self.prefixes)


BSD = Family("a BSD license", ("BSD-", "0BSD"))
APACHE = Family("an Apache license", ("Apache-",))
GPL = Family("a GPL", ("GPL-",))
LGPL = Family("an LGPL", ("LGPL-",))

# Trove classifiers (pypa/trove-classifiers names) to SPDX; a test checks each is a real classifier.
CLASSIFIERS: dict[str, str | Family] = {
    "License :: OSI Approved :: MIT License": "MIT",
    "License :: OSI Approved :: MIT No Attribution License (MIT-0)": "MIT-0",
    "License :: OSI Approved :: BSD License": BSD,
    "License :: OSI Approved :: Apache Software License": APACHE,
    "License :: OSI Approved :: Python Software Foundation License": "PSF-2.0",
    "License :: OSI Approved :: ISC License (ISCL)": "ISC",
    "License :: OSI Approved :: Mozilla Public License 2.0 (MPL 2.0)": "MPL-2.0",
    "License :: OSI Approved :: Mozilla Public License 1.1 (MPL 1.1)": "MPL-1.1",
    "License :: OSI Approved :: Boost Software License 1.0 (BSL-1.0)": "BSL-1.0",
    "License :: OSI Approved :: zlib/libpng License": "Zlib",
    "License :: OSI Approved :: The Unlicense (Unlicense)": "Unlicense",
    "License :: OSI Approved :: Universal Permissive License (UPL)": "UPL-1.0",
    "License :: OSI Approved :: Historical Permission Notice and Disclaimer (HPND)": "HPND",
    "License :: OSI Approved :: Eclipse Public License 2.0 (EPL-2.0)": "EPL-2.0",
    "License :: OSI Approved :: GNU General Public License (GPL)": GPL,
    "License :: OSI Approved :: GNU General Public License v2 (GPLv2)": "GPL-2.0-only",
    "License :: OSI Approved :: GNU General Public License v2 or later (GPLv2+)": "GPL-2.0-or-later",
    "License :: OSI Approved :: GNU General Public License v3 (GPLv3)": "GPL-3.0-only",
    "License :: OSI Approved :: GNU General Public License v3 or later (GPLv3+)": "GPL-3.0-or-later",
    "License :: OSI Approved :: GNU Library or Lesser General Public License (LGPL)": LGPL,
    "License :: OSI Approved :: GNU Lesser General Public License v2 (LGPLv2)": "LGPL-2.0-only",
    "License :: OSI Approved :: GNU Lesser General Public License v2 or later (LGPLv2+)": "LGPL-2.0-or-later",
    "License :: OSI Approved :: GNU Lesser General Public License v3 (LGPLv3)": "LGPL-3.0-only",
    "License :: OSI Approved :: GNU Lesser General Public License v3 or later (LGPLv3+)": "LGPL-3.0-or-later",
    "License :: OSI Approved :: GNU Affero General Public License v3": "AGPL-3.0-only",
    "License :: OSI Approved :: GNU Affero General Public License v3 or later (AGPLv3+)": "AGPL-3.0-or-later",
    "License :: CC0 1.0 Universal (CC0 1.0) Public Domain Dedication": "CC0-1.0",
}
# Classifiers that add nothing: they say a license is OSI-approved, not which.
UNINFORMATIVE = {"License :: OSI Approved"}

# Short free text seen in the License field, lower-cased with spaces collapsed. Deprecated SPDX
# readings apply: "GPLv3" is GPL-3.0, which SPDX defines as GPL-3.0-only.
NAMES: dict[str, str | Family] = {
    **dict.fromkeys(["mit license", "the mit license", "mit licence", "expat", "expat license"], "MIT"),
    **dict.fromkeys(["apache 2.0", "apache 2", "apache-2", "apache license 2.0", "apache license, version 2.0",
                     "apache license version 2.0", "apache software license 2.0", "apache 2.0 license",
                     "apache-2.0 license", "asl 2.0", "apache software license, version 2.0"], "Apache-2.0"),
    **dict.fromkeys(["apache", "apache license", "apache software license"], APACHE),
    **dict.fromkeys(["bsd", "bsd license", "bsd-like", "bsd style", "bsd-style", "modified bsd",
                     "modified bsd license"], BSD),
    **dict.fromkeys(["new bsd", "new bsd license", "3-clause bsd", "bsd 3-clause", "bsd-3", "bsd 3-clause license",
                     "3-clause bsd license", "revised bsd license"], "BSD-3-Clause"),
    **dict.fromkeys(["simplified bsd", "simplified bsd license", "2-clause bsd", "bsd 2-clause", "freebsd",
                     "bsd 2-clause license", "2-clause bsd license"], "BSD-2-Clause"),
    **dict.fromkeys(["psf", "psfl", "psf license", "python software foundation license", "psf-2"], "PSF-2.0"),
    **dict.fromkeys(["isc license", "iscl", "isc license (iscl)"], "ISC"),
    **dict.fromkeys(["mpl 2.0", "mpl-2", "mozilla public license 2.0", "mpl v2"], "MPL-2.0"),
    **dict.fromkeys(["gplv3", "gpl v3", "gpl3", "gpl-3", "gnu gplv3", "gpl version 3"], "GPL-3.0-only"),
    **dict.fromkeys(["gplv3+", "gpl-3+", "gpl v3 or later"], "GPL-3.0-or-later"),
    **dict.fromkeys(["gplv2", "gpl v2", "gpl2", "gpl-2", "gnu gplv2"], "GPL-2.0-only"),
    **dict.fromkeys(["gplv2+", "gpl-2+"], "GPL-2.0-or-later"),
    **dict.fromkeys(["gpl", "gnu gpl", "gnu general public license"], GPL),
    **dict.fromkeys(["lgpl", "gnu lgpl"], LGPL),
    **dict.fromkeys(["lgplv3", "lgpl-3"], "LGPL-3.0-only"),
    **dict.fromkeys(["lgplv3+", "lgpl-3+"], "LGPL-3.0-or-later"),
}
# Text that says nothing about the license itself: setuptools' placeholder, or a pointer to a file.
POINTERS = re.compile(r"^(unknown|none|n/?a|other|see (the )?licen[cs]e( file)?\.?|licen[cs]e(\.txt|\.md)?|"
                      r"dual licen[cs]e)$", re.IGNORECASE)


@cache
def licensing() -> Licensing:
    return get_spdx_licensing()


def normalise(text: str) -> str | None:
    """The SPDX expression ``text`` is, rendered canonically; None when it is not one (unknown ids included)."""
    try:
        licensing().parse(text, strict=True)  # syntax first: validate() itself fails on some syntax errors
        info = licensing().validate(text)
    except ExpressionError:
        return None
    unknown = [s for s in info.invalid_symbols if not str(s).startswith(("LicenseRef-", "DocumentRef-"))]
    if info.errors and (unknown or not info.invalid_symbols):
        return None
    parsed = licensing().parse(text)
    return parsed.render() if parsed is not None else None


def ids(expression: str) -> set[str]:
    """The license and exception ids an expression names."""
    return {str(key) for key in licensing().license_keys(licensing().parse(expression))}


def permitted(expression: str, allowed: Iterable[str]) -> bool:
    """Whether the expression may be used under the allowed licenses: AND needs every side, OR one."""
    terms = {_term(a) for a in allowed}
    return _satisfied(licensing().parse(expression), terms)


def _term(text: str) -> str:
    return (normalise(text) or text).lower()


def _satisfied(node: object, allowed: set[str]) -> bool:
    spdx = licensing()
    if isinstance(node, spdx.AND):
        return all(_satisfied(arg, allowed) for arg in node.args)
    if isinstance(node, spdx.OR):
        return any(_satisfied(arg, allowed) for arg in node.args)
    if isinstance(node, LicenseWithExceptionSymbol | LicenseSymbol):
        return node.render().lower() in allowed
    raise TypeError(f"unexpected license expression node {node!r}")


def name(text: str) -> str | Family | None:
    """What a short License field says: an SPDX expression, a known name, a family, or None."""
    key = " ".join(text.lower().split())
    if key in NAMES:
        return NAMES[key]
    return normalise(text)


def is_pointer(text: str) -> bool:
    return bool(POINTERS.match(" ".join(text.split())))


def conjunction(parts: Iterable[str]) -> str:
    """``A AND B`` over distinct expressions, each parenthesised where it needs it; canonical order kept."""
    unique = list(dict.fromkeys(parts))
    rendered = [p if len(unique) == 1 or " " not in p else f"({p})" for p in unique]
    return normalise(" AND ".join(rendered)) or " AND ".join(rendered)
