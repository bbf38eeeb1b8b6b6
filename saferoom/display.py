"""How a decision and a result read to a person: short text for ``print`` and HTML tables for notebooks.

Every value is escaped before it is placed in HTML: a column name, a cell, a reason or a notice may hold
``<script>``, and a notebook would otherwise run it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from saferoom.decision import Decision
    from saferoom.result import Result

SHAPING = ("column", "from", "action", "reason")
HTML_ROWS = 20  # a notebook shows the first rows; the rest are a call to to_pandas() away


def shaping(decision: Decision) -> list[tuple[str, str, str, str]]:
    """One row per output column and source column it reads (a computed column reads none)."""
    return [(c.name, s.name if s else "", s.action if s else "computed", s.reason if s else "")
            for c in decision.columns for s in (c.sources or (None,))]


def decision_lines(decision: Decision) -> list[str]:
    """After the table, what else shapes the result: the row filters and the notes."""
    filters = [f"rows of {t.name} are filtered: {t.row_filter}" for t in decision.tables if t.row_filter]
    return [*filters, *decision.notes]


def decision_text(decision: Decision) -> str:
    head = f"{decision.decision} for {decision.user} as role {decision.role}"
    if decision.refusal is not None:
        return f"{head}: {decision.refusal.message}"
    return "\n".join([head, *_aligned([SHAPING, *shaping(decision)]), *decision_lines(decision)])


def _aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def decision_html(decision: Decision) -> str:
    head = _paragraph(f"{decision.decision} for {decision.user} as role {decision.role}")
    if decision.refusal is not None:
        return head + _paragraph(decision.refusal.message)
    return head + _table(SHAPING, shaping(decision)) + "".join(_paragraph(line) for line in decision_lines(decision))


def result_html(result: Result) -> str:
    table = result.to_arrow()
    shown = table.slice(0, HTML_ROWS).to_pylist()
    count = f"{table.num_rows} rows" + (f", the first {len(shown)} shown" if len(shown) < table.num_rows else "")
    rows = [[_cell(row[name]) for name in table.column_names] for row in shown]
    return _table(table.column_names, rows) + _paragraph(count) + "".join(_paragraph(n) for n in result.notices)


def _cell(value: object) -> str:
    return "null" if value is None else str(value)


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _paragraph(text: str) -> str:
    return f"<p>{escape(text)}</p>"
