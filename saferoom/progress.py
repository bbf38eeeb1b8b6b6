"""Progress bars for long work, drawn on stderr so stdout stays clean for data."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn


@contextlib.contextmanager
def build_progress(console: Console) -> Iterator[Callable[[str, float], None]]:
    """A bar per table; the callback takes (table, fraction done)."""
    bars = Progress(TextColumn("{task.description:<24}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                    TimeElapsedColumn(), console=console, transient=False)
    tasks: dict[str, TaskID] = {}

    def report(table: str, fraction: float) -> None:
        if table not in tasks:
            tasks[table] = bars.add_task(table, total=1.0)
        bars.update(tasks[table], completed=fraction)

    with bars:
        yield report
