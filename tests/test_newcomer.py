"""A newcomer's first hour, literally: from a fresh copy of the repository, `make demo`, then the README's shell
commands in order, exactly as printed, then the walkthrough's "try it yourself" lines; each must exit as documented.

The copy is the tracked files (``git ls-files``), as a clone would have them. It reuses this test run's virtual
environment instead of making its own: installing every dependency again would take minutes and need a package
index. ``.venv`` in the copy is a link to it, and ``make`` is told (``-o``) to treat the install step as done, so
``make demo`` runs its own recipe and never points the shared environment's editable install at the copy.

Not run here: the lines in :data:`SKIPPED`, and the README's Python blocks. The marked ones run in
tests/test_docs.py; the gateway's has ``token=...`` for the reader to fill in, so the token the README's
``token create`` prints is used here instead, against the gateway its ``serve`` line started.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from saferoom.client import RemoteSession
from tests.gateway_helpers import free_port

ROOT = Path(__file__).parent.parent
VENV = Path(sys.prefix)
PORT = 8470  # `saferoom serve`'s default, which the README relies on

SKIPPED = {  # README lines not run here, and why
    "make test": "runs the whole suite, of which this test is a part",
    "saferoom packages sync": "needs a package index (the internet or a mirror) and root to write /srv",
    "pip install": "installs from the snapshot `packages sync` would have made",
    # the gateway the README started above already holds this state folder (a second one refuses to start),
    # and as root a room runs as the user's own account, which this machine does not have: rooms are run by
    # tests/test_room.py, with real sandboxes
    "saferoom serve --policy saferoom.yaml --state state --socket": "the README's gateway is already serving `state`",
    "saferoom room": "needs an account per user when run as root (tests/test_room.py runs rooms)",
}
EXIT = {"saferoom check": 0}  # a documented code other than 0 would go here; check's inputs are made clean below


def readme_commands(text: str) -> list[str]:
    """Each command of the README's shell blocks, in order: a block's ``$ `` lines when it has any (the rest is
    their output), else every line."""
    commands = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, re.M | re.S):
        lines = [line for line in block.splitlines() if line.strip()]
        prompted = [line[2:] for line in lines if line.startswith("$ ")]
        commands += prompted or lines
    return commands


def skipped(command: str) -> str | None:
    return next((why for start, why in SKIPPED.items() if command.startswith(start)), None)


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("newcomer") / "saferoom"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.decode()
    for name in filter(None, files.split("\0")):
        if (ROOT / name).exists():  # a file deleted in the working tree but not yet in git is not there for a clone
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, folder / name)
    (folder / ".venv").symlink_to(VENV)
    return folder


def bash(command: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """``command`` as the README's reader runs it: in bash, after `. .venv/bin/activate`, with no saferoom settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEROOM_") and k != "VIRTUAL_ENV"}
    activate = cwd / ".venv" if (cwd / ".venv").exists() else cwd.parent / ".venv"
    return subprocess.run(["bash", "-c", f". {activate}/bin/activate && {command}"], cwd=cwd, input=stdin,
                          capture_output=True, text=True, env=env, timeout=300, check=False)


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


class Background:
    """A long-running command (``saferoom serve``), started in its own process group and always stopped."""

    def __init__(self, command: str, cwd: Path, log: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEROOM_")}
        self.log = log
        self.process = subprocess.Popen(["bash", "-c", f". {cwd.parent}/.venv/bin/activate && exec {command}"], cwd=cwd,
                                        stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def wait_until_answering(self, url: str) -> None:
        for _ in range(300):
            if self.process.poll() is not None:
                break
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"`saferoom serve` did not answer: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def _listening(command: str, port: int) -> str:
    """The README's `saferoom serve` line, on ``port`` when that is not its default."""
    return command if port == PORT else command.replace("saferoom serve", f"saferoom serve --port {port}", 1)


def try_it_yourself(printed: str) -> list[str]:
    """The commands the walkthrough prints after "Try it yourself:"."""
    tail = printed.split("Try it yourself:", 1)[1]
    return [line.strip() for line in tail.splitlines() if line.strip().startswith("saferoom ")]


@pytest.fixture(scope="module")
def background() -> Iterator[list[Background]]:
    started: list[Background] = []
    yield started
    for each in started:  # stopped even when the test failed half-way
        each.stop()


def test_a_newcomer_runs_the_readme_and_the_walkthrough_as_printed(copy: Path, background: list[Background]) -> None:
    commands = readme_commands((copy / "README.md").read_text())
    assert commands[0].startswith("make demo") and any(c.startswith("saferoom serve") for c in commands)
    demo, token, walkthrough = copy / "demo", "", ""
    # the README's port, unless something else on this machine holds it: then the same line on a free one
    port = PORT if port_free(PORT) else free_port()
    for command in commands:
        if skipped(command):
            continue
        if command.startswith("make demo"):  # the install step is done: see the module's docstring
            done = bash(command.replace("make demo", "make -o .venv/.installed demo", 1), copy)
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
            walkthrough = done.stdout
            continue
        if command.startswith("saferoom serve"):
            background.append(Background(_listening(command, port), demo, demo / "serve.log"))
            background[-1].wait_until_answering(f"http://127.0.0.1:{port}")
            continue
        if command.startswith("saferoom check"):
            (demo / "report.csv").write_text("region,revenue\nEU,2745145.48\n")  # the reader's own report, clean
            (demo / "notebooks").mkdir(exist_ok=True)
        done = bash(command, demo)
        expected = next((code for start, code in EXIT.items() if command.startswith(start)), 0)
        assert done.returncode == expected, f"{command}\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        if command.startswith("saferoom token create"):
            token = done.stdout.strip()
    with RemoteSession(f"http://127.0.0.1:{port}", token) as session:  # the token the README made works
        assert session.user == "alice" and session.query("select 1 as one").to_pylist() == [{"one": 1}]
    lines = try_it_yourself(walkthrough)
    assert len(lines) == 2, walkthrough[-2000:]
    for line in lines:
        done = bash(line, copy)
        assert done.returncode == 0, f"{line}\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
