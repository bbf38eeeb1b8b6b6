"""Findings summarised for a person: one group per file, place and kind, with a count and one example.

A leaked column of 20 SSNs is one problem, not 20; a reader fixes the column, then runs the check again.
A table's findings are grouped by column; a text's (where each line is its own cell) by file, with the
lines they are on. The machine formats (JSON, SARIF) keep every finding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from saferoom.check.scan import Finding

_CELL = re.compile(r"^row \d+, (column .+)$")  # a table's cell: grouped by its column
_LINE = re.compile(r"^line (\d+)$")  # a line of text: grouped by file
SHOWN_LINES = 5


@dataclass(frozen=True)
class Group:
    """The findings of one kind in one place of one file: how many, the first of them, and for a text its lines."""

    kind: str
    file: str
    place: str  # "column ssn", "lines", or a location that is its own group (a header, a notebook cell)
    count: int
    example: Finding
    lines: tuple[int, ...] = ()

    def where(self) -> str:
        """The place in words: a column, the lines of a text, or the one location."""
        if not self.lines:
            return self.place
        shown = ", ".join(str(n) for n in self.lines[:SHOWN_LINES])
        more = f" and {len(self.lines) - SHOWN_LINES} more" if len(self.lines) > SHOWN_LINES else ""
        return f"line{'s' if len(self.lines) > 1 else ''} {shown}{more}"


def summarise(findings: list[Finding]) -> list[Group]:
    """One group per (file, place, kind), in the order each was first found."""
    members: dict[tuple[str, str, str], list[Finding]] = {}
    for finding in findings:
        members.setdefault((finding.file, _place(finding.location), finding.kind), []).append(finding)
    return [_group(place, found) for (_, place, _), found in members.items()]


def _place(location: str) -> str:
    cell = _CELL.match(location)
    if cell:
        return cell.group(1)
    return "lines" if _LINE.match(location) else location


def _group(place: str, found: list[Finding]) -> Group:
    first = found[0]
    lines = tuple(dict.fromkeys(_line(f.location) for f in found)) if place == "lines" else ()
    return Group(first.kind, first.file, place, len(found), first, lines)


def _line(location: str) -> int:
    found = _LINE.match(location)
    return int(found.group(1)) if found else 0
