"""The documentation, checked against the code: commands, options, settings, errors and runnable examples.

An example is a fenced block right after a line ``<!-- example -->`` (or ``<!-- example: exit N -->``) in
README.md or docs/*.md. It runs in the folder ``saferoom demo --dir`` makes and must exit 0 (or N). A shell
block runs under ``bash -e``, only its ``$ `` lines when it has any (the rest is their output); a Python
block runs as a script, and a SaferoomError it does not catch exits with the code the command line gives it.
"""

from __future__ import annotations

import enum
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

import saferoom
from saferoom.cli import app
from saferoom.errors import ERRORS
from saferoom.settings import SETTINGS, setting

ROOT = Path(__file__).parent.parent
CLI_DOC = (ROOT / "docs" / "cli.md").read_text()
PYTHON_DOC = (ROOT / "docs" / "python.md").read_text()


def leaves(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    """Every command that runs (not a group) in the typer app, by its words: ``token create``."""
    children = getattr(command, "commands", None)  # groups have them, whichever click typer runs on
    if children is None:
        yield " ".join(path), command
        return
    for name, child in children.items():
        yield from leaves(child, (*path, name))


COMMANDS = dict(leaves(typer.main.get_command(app)))


def options(command: Any) -> list[Any]:
    return [p for p in command.params if p.param_type_name == "option"]


def long_flag(option: Any) -> str:
    return str(max(option.opts, key=len))


def choices(option: Any) -> str | None:
    """An option's choices as docs/cli.md writes them, ``table|json|csv``; None when it takes any value."""
    annotation = getattr(getattr(option, "type_descriptor", None), "annotation", None)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "|".join(str(member.value) for member in annotation)
    found = getattr(getattr(option, "type", None), "choices", None)
    return "|".join(found) if found else None


def headings() -> dict[str, str]:
    """docs/cli.md's command sections: ``### `saferoom token revoke ID``` → its text, up to the next heading."""
    found = {}
    for match in re.finditer(r"^### `saferoom ([^`]+)`\n(.*?)(?=^#|\Z)", CLI_DOC, re.M | re.S):
        words = " ".join(w for w in match[1].split() if w.islower())  # the arguments are in capitals
        found[words] = match[2]
    return found


SECTIONS = headings()


def test_the_walk_finds_every_kind_of_command() -> None:
    """The walk itself works: a test over no commands would pass whatever the docs said."""
    assert {"query", "schema", "token create", "audit public-key", "packages sync"} <= set(COMMANDS)
    assert {"--policy", "--user", "--format"} <= {long_flag(o) for o in options(COMMANDS["query"])}


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_every_command_and_option_is_in_cli_md(path: str) -> None:
    assert path in SECTIONS, f"docs/cli.md has no section ### `saferoom {path} …`"
    missing = [long_flag(o) for o in options(COMMANDS[path]) if f"`{long_flag(o)}" not in SECTIONS[path]]
    assert not missing, f"saferoom {path}: options not in its section of docs/cli.md: {missing}"
    wrong = [f"{long_flag(o)} {c}" for o in options(COMMANDS[path]) if (c := choices(o)) and c not in SECTIONS[path]]
    assert not wrong, f"saferoom {path}: choices not in docs/cli.md as written: {wrong}"


def test_cli_md_documents_only_commands_that_exist() -> None:
    assert set(SECTIONS) == set(COMMANDS)


def settings_table() -> str:
    """docs/cli.md's settings table, as the settings declare it."""
    lines = ["| option | environment | default | what it is |", "|---|---|---|---|"]
    for s in SETTINGS:
        cells = [", ".join(f"`{f}`" for f in s.flags) or "(secret)", f"`{s.env}`" if s.env else "",
                 f"`{s.default}`" if s.default else "", s.help.replace("|", "\\|")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def test_cli_md_lists_the_declared_settings() -> None:
    assert settings_table() in CLI_DOC, f"docs/cli.md should hold this table:\n{settings_table()}"


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_options_read_the_environment_the_settings_declare(path: str) -> None:
    """An option named as a setting reads that setting's variable, or none; every --policy reads SAFEROOM_POLICY."""
    declared = {flag: s for s in SETTINGS for flag in s.flags}
    for option in options(COMMANDS[path]):
        flag = long_flag(option)
        if flag == "--policy":
            assert option.envvar == "SAFEROOM_POLICY", path
        if option.envvar:
            assert flag in declared and option.envvar == declared[flag].env, (path, flag, option.envvar)
        if flag in ("--policy", "--state") and option.default is not None:
            assert str(option.default) == declared[flag].default, (path, flag)


def test_secrets_are_never_options() -> None:
    secrets = {s.env for s in SETTINGS if s.secret}
    assert secrets == {"SAFEROOM_TOKEN", "SAFEROOM_ADMIN_PASSWORD", "SAFEROOM_FINGERPRINT_KEY"}
    assert not [(p, o.envvar) for p, c in COMMANDS.items() for o in options(c) if o.envvar in secrets]
    assert setting("admin_password").flags == ()


def test_a_secret_setting_comes_from_the_environment_only_and_cannot_print_itself() -> None:
    from saferoom.settings import secret

    found = secret("admin_password", {"SAFEROOM_ADMIN_PASSWORD": "hunter2-admin"})
    assert found is not None and found.reveal() == "hunter2-admin" and "hunter2" not in f"{found} {found!r}"
    assert secret("admin_password", {"SAFEROOM_ADMIN_PASSWORD": ""}) is None  # set but empty is not a password
    assert secret("policy", {"SAFEROOM_POLICY": "saferoom.yaml"}) is None  # not a secret: its option reads it


@pytest.mark.parametrize("code", sorted({cls.exit_code for cls in ERRORS.values()}))
def test_every_exit_code_is_in_cli_md(code: int) -> None:
    assert re.search(rf"^\| {code} \| \w", CLI_DOC, re.M), f"exit code {code} is not in docs/cli.md"


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_every_error_is_in_python_md_with_its_exit_code_and_status(name: str) -> None:
    row = re.search(rf"^\| `{name}` \| .+ \| (\d+) \| (\d+) \|$", PYTHON_DOC, re.M)
    assert row, f"docs/python.md has no row for {name}"
    assert (int(row[1]), int(row[2])) == (ERRORS[name].exit_code, ERRORS[name].http_status)


def test_every_exported_error_is_one_of_errors_py() -> None:
    exported = {n for n in saferoom.__all__ if isinstance(getattr(saferoom, n), type) and issubclass(getattr(saferoom, n), Exception)}
    assert exported == set(ERRORS)


EXAMPLE = re.compile(r"^<!-- example(?::\s*exit (\d+))? -->\n```(\w+)\n(.*?)^```", re.M | re.S)
RUN_PYTHON = """import sys, saferoom
try:
    exec(compile(sys.stdin.read(), "example", "exec"), {"__name__": "__main__"})
except saferoom.SaferoomError as exc:
    print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
    sys.exit(exc.exit_code)
"""


def examples() -> list[Any]:
    found = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text()
        for match in EXAMPLE.finditer(text):
            line = text.count("\n", 0, match.start()) + 2
            found.append(pytest.param(match[2], match[3], int(match[1] or 0), id=f"{doc.name}:{line}"))
    return found


EXAMPLES = examples()


def test_examples_are_found() -> None:
    """Each marked block is collected: a marker the pattern missed would leave its block untested."""
    marked = sum(p.read_text().count("<!-- example") for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
    assert len(EXAMPLES) == marked >= 6


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("docs") / "demo"
    done = run([sys.executable, "-c", "from saferoom.cli import main; main()", "demo", "--dir", str(folder),
                "--customers", "2000"], folder.parent)
    assert done.returncode == 0, done.stderr
    return folder


def run(command: list[str], cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEROOM_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the saferoom command
    return subprocess.run(command, cwd=cwd, input=stdin, capture_output=True, text=True, env=env, timeout=300, check=False)


@pytest.mark.parametrize(("language", "code", "status"), EXAMPLES)
def test_example_runs_on_the_demo(demo: Path, language: str, code: str, status: int) -> None:
    if language == "python":
        done = run([sys.executable, "-c", RUN_PYTHON], demo, stdin=code)
    else:
        assert language == "sh", f"no way to run a {language} example"
        lines = code.splitlines()
        prompted = [line[2:] for line in lines if line.startswith("$ ")]
        done = run(["bash", "-e", "-c", "\n".join(prompted or lines)], demo)
    assert done.returncode == status, f"exit {done.returncode}, expected {status}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
