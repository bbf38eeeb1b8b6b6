"""``%load_ext saferoom``: ``%%sql`` cells and ``%sql`` lines that run guarded queries in a notebook.

The session is opened on first use by :func:`saferoom.connect` with no arguments (inside a room the
environment points it at the gateway; elsewhere ``SAFEROOM_URL`` or ``SAFEROOM_POLICY`` do) and kept
for the notebook. A result shows as a table; a refusal shows as its explanation, without a traceback,
and still fails the cell, so running every cell stops there. A query that takes a while shows how long
it has been running, in place, until its rows are in.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.display import DisplayHandle, display

from saferoom.errors import SaferoomError, UsageError
from saferoom.result import Result
from saferoom.session import SessionProtocol, connect

T = TypeVar("T")
PATIENCE = 1.0  # seconds a query runs before its progress is shown: a quick one should not flicker


@magics_class
class SqlMagics(Magics):
    """``%sql QUERY`` returns the query's result; a ``%%sql`` cell's result is the cell's output."""

    def __init__(self, shell: Any, opener: Callable[[], SessionProtocol] = connect) -> None:
        super().__init__(shell)
        self._opener = opener
        self._session: SessionProtocol | None = None

    @property
    def session(self) -> SessionProtocol:
        if self._session is None:
            self._session = explained(self._opener)
        return self._session

    @line_cell_magic
    def sql(self, line: str, cell: str | None = None) -> Result:
        text = line if cell is None else cell
        if not text.strip():
            raise explained_error(UsageError("write the query after %sql, or below %%sql on the cell's first line"))
        with progress():
            result = explained(lambda: self.session.query(text))
            explained(result.to_arrow)  # every row read while the progress shows, and a late error explained
        return result

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None


def explained(step: Callable[[], T]) -> T:
    """Run ``step``; a saferoom error it raises shows as its explanation rather than a traceback."""
    try:
        return step()
    except SaferoomError as exc:
        raise explained_error(exc) from None


def explained_error(exc: SaferoomError) -> SaferoomError:
    """IPython shows an exception's ``_render_traceback_`` lines in place of its traceback: a refusal reads
    as the rule it met, which is all a person can act on (the code that raised it is saferoom's)."""
    exc._render_traceback_ = lambda: [f"{type(exc).__name__}: {exc.message}"]  # type: ignore[attr-defined]
    return exc


@contextlib.contextmanager
def progress(patience: float | None = None) -> Iterator[None]:
    """After ``patience`` seconds, a line saying how long the query has run, updated each second and
    cleared when it ends. It is drawn from a thread of its own, since the cell's thread waits on the query."""
    done = threading.Event()
    ticker = threading.Thread(target=_tick, args=(done, PATIENCE if patience is None else patience),
                              name="saferoom-progress", daemon=True)
    ticker.start()
    try:
        yield
    finally:
        done.set()
        ticker.join()


def _tick(done: threading.Event, patience: float) -> None:
    started = time.monotonic()
    if done.wait(patience):
        return
    # IPython's display functions carry no annotations
    handle: DisplayHandle = display(_running(started), display_id=True)  # type: ignore[no-untyped-call]
    while not done.wait(1.0):
        handle.update(_running(started))  # type: ignore[no-untyped-call]
    handle.update(Blank())  # type: ignore[no-untyped-call]


class Running:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __repr__(self) -> str:
        return f"running the query… {self.seconds:.0f} s"


class Blank:
    """What the progress line becomes when the query ends: nothing."""

    def __repr__(self) -> str:
        return ""


def _running(started: float) -> Running:
    return Running(time.monotonic() - started)


def load(shell: Any) -> None:
    shell.register_magics(SqlMagics(shell))


def unload(shell: Any) -> None:
    magics = shell.magics_manager.registry.get("SqlMagics")
    if magics is not None:
        magics.close()
