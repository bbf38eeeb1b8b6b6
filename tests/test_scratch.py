"""Scratch folders (spilled rows, uploads under review) do not outlive a process killed with -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from saferoom import scratch
from saferoom.engines.duckdb import SPILL_PREFIX, DuckDBEngine, spill_folder
from saferoom.policy.limits import Limits

PREFIX = "saferoom-test-scratch-"

# a process that makes a scratch folder, writes "rows" in it, says where, then waits to be killed
HOLDER = f"""
import sys, time
from saferoom import scratch
folder = scratch.make({PREFIX!r})
(folder / "rows").write_text("spilled rows")
print(folder, flush=True)
time.sleep(600)
"""


def holder() -> tuple[subprocess.Popen[str], Path]:
    process = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline().strip()  # returns once the folder is made, or at the process's end
    assert line, "the holder ended before making its folder"
    return process, Path(line)


def kill(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait()


@pytest.fixture(autouse=True)
def no_leftovers() -> object:
    yield
    scratch.sweep(PREFIX)


def test_a_killed_process_s_folder_is_removed_by_the_next_that_makes_one() -> None:
    process, folder = holder()
    try:
        assert (folder / "rows").exists()
        assert scratch.sweep(PREFIX) == []  # its process lives: left alone
        assert (folder / "rows").exists()
    finally:
        kill(process)
    assert folder.exists()  # kill -9: the process removed nothing
    mine = scratch.make(PREFIX)
    try:
        assert not folder.exists()
        assert mine.exists() and (mine / scratch.HELD).exists()
    finally:
        scratch.remove(mine)
    assert not mine.exists()


def test_a_sweep_leaves_what_is_not_a_scratch_folder_or_not_its_to_judge(tmp_path: Path) -> None:
    bare = Path(tempfile.mkdtemp(prefix=PREFIX))  # no lock file: being made, or something else
    link = Path(tempfile.gettempdir()) / f"{PREFIX}link-{os.getpid()}"
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / scratch.HELD).write_text("")
    (target / "keep").write_text("not scratch")
    link.symlink_to(target)
    faked = Path(tempfile.mkdtemp(prefix=PREFIX))
    (faked / "keep").write_text("x")
    (faked / scratch.HELD).symlink_to(target / scratch.HELD)  # a lock file that is a link is not followed
    try:
        assert scratch.sweep(PREFIX) == []
        assert bare.exists() and (target / "keep").exists() and (faked / "keep").exists()
    finally:
        link.unlink()
        for folder in (bare, faked):
            for child in folder.iterdir():
                child.unlink()
            folder.rmdir()


def test_a_killed_engine_s_spill_folder_is_removed_when_the_next_engine_starts() -> None:
    """DuckDB spills rows of a query in its engine's folder: a killed engine's rows do not stay on disk."""
    code = ("from saferoom.engines.duckdb import DuckDBEngine; from saferoom.policy.limits import Limits; "
            "import time; e = DuckDBEngine({}, limits=Limits(temp_limit='1GB')); print(e._spill, flush=True); "
            "open(e._spill + '/duckdb_temp_block', 'w').write('rows'); time.sleep(600)")
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    spill = Path(process.stdout.readline().strip())
    kill(process)
    assert spill.name.startswith(SPILL_PREFIX) and (spill / "duckdb_temp_block").exists()
    engine = DuckDBEngine({}, limits=Limits(temp_limit="1GB"))
    try:
        assert not spill.exists()
        assert engine._spill is not None and Path(engine._spill).exists()  # its own is kept while it runs
        assert spill_folder(Limits()) is None  # no spilling allowed: no folder
    finally:
        engine.close()


def test_the_module_s_example_runs() -> None:
    import doctest

    failed, attempted = doctest.testmod(scratch, report=True)
    assert attempted > 0 and failed == 0
