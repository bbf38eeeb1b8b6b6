"""Findings summarised for a person: one group per file, place and kind, with a count and one example.

A leaked column of 20 SSNs is one problem, not 20; a reader fixes the column, then runs the check again.
A table's findings are grouped by column; a text's (where each line is its own cell) by file, with the
lines they are on. The machine formats (JSON, SARIF) keep every finding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from saferoom.check.scan import Finding

_CELL = re.compile(r"^(?:row \d+|(.+)![A-Z]+\d+), (column .+)$")  # a table's cell (an Excel sheet's too): grouped by its column
_LINE = re.compile(r"^(?:(cell \d+, .+), )?line (\d+)$")  # a line of text, or of a notebook cell: grouped with the others
SHOWN_LINES = 5


@dataclass(frozen=True)
class Group:
    """The findings of one kind in one place of one file: how many, the first of them, and for a text its lines."""

    kind: str
    file: str
    place: str  # "column ssn", "Sheet1 column ssn", "lines", "cell 3, source", or a location that is its own group
    count: int
    example: Finding
    lines: tuple[int, ...] = ()

    def where(self) -> str:
        """The place in words: a column, the lines of a text or notebook cell, or the one location."""
        if not self.lines:
            return self.place
        shown = ", ".join(str(n) for n in self.lines[:SHOWN_LINES])
        more = f" and {len(self.lines) - SHOWN_LINES} more" if len(self.lines) > SHOWN_LINES else ""
        lines = f"line{'s' if len(self.lines) > 1 else ''} {shown}{more}"
        return lines if self.place == "lines" else f"{self.place}, {lines}"


def summarise(findings: list[Finding], counts: dict[tuple[str, str, str], int] | None = None) -> list[Group]:
    """One group per (file, place, kind), in the order each was first found; ``counts`` holds findings not kept."""
    members: dict[tuple[str, str, str], list[Finding]] = {}
    for finding in findings:
        members.setdefault((finding.file, place(finding.location), finding.kind), []).append(finding)
    return [_group(key[1], found, (counts or {}).get(key, len(found))) for key, found in members.items()]


def place(location: str) -> str:
    """What a finding is grouped by: its column, its text's lines, a notebook cell, or its own location."""
    cell = _CELL.match(location)
    if cell:
        return f"{cell.group(1)} {cell.group(2)}" if cell.group(1) else cell.group(2)
    line = _LINE.match(location)
    if line:
        return line.group(1) or "lines"
    return location


def _group(place: str, found: list[Finding], count: int) -> Group:
    first = found[0]
    lines = tuple(dict.fromkeys(_line(f.location) for f in found)) if _LINE.match(first.location) else ()
    return Group(first.kind, first.file, place, count, first, lines)


def _line(location: str) -> int:
    found = _LINE.match(location)
    return int(found.group(2)) if found else 0
