"""`%load_ext saferoom` in a real IPython kernel whose environment points at a real gateway's Unix socket,
as a room's does."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.gateway_helpers import Server, free_port, gateway_policy
from tests.kernels import Kernel

REGIONS = "select distinct region from orders order by region"


@pytest.fixture(scope="module")
def gateway(room, tmp_path_factory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("magic")
    server = Server(gateway_policy(room, folder), folder / "state", free_port(), folder / "server.log",
                    socket=folder / "gateway.sock").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def kernel(gateway, tmp_path_factory) -> Iterator[Kernel]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEROOM_")}
    env |= {"SAFEROOM_SOCKET": str(gateway.socket), "SAFEROOM_TOKEN": gateway.token("alice")}
    started = Kernel(tmp_path_factory.mktemp("notebook"), env)
    try:
        _, error = started.run("%load_ext saferoom")
        assert error is None, error
        yield started
    finally:
        started.stop()


def result_of(messages: list[dict]) -> dict[str, str]:
    [shown] = [m["content"]["data"] for m in messages if m["msg_type"] == "execute_result"]
    return shown


def test_a_sql_cell_shows_the_users_rows_as_a_table(kernel: Kernel, room) -> None:
    shown = result_of(kernel.messages(f"%%sql\n{REGIONS}"))
    assert "<table" in shown["text/html"] and "EU" in shown["text/html"], shown
    others = {r for (r,) in room.raw(REGIONS)} - {"EU"}
    assert others and not any(f">{r}<" in shown["text/html"] for r in others)  # alice's row filter applied


def test_a_sql_line_returns_the_result(kernel: Kernel) -> None:
    shown, error = kernel.run(f"rows = %sql {REGIONS}\nprint(rows.to_pylist())")
    assert error is None and shown.strip() == "[{'region': 'EU'}]", (shown, error)


def test_a_refusal_shows_as_its_explanation_and_fails_the_cell(kernel: Kernel) -> None:
    [error] = [m["content"] for m in kernel.messages("%%sql\nselect pan from cards") if m["msg_type"] == "error"]
    assert error["ename"] == "QueryRejected" and "card-theft" in error["evalue"], error
    [line] = error["traceback"]  # the explanation, and no frames of saferoom's code
    assert line.startswith("QueryRejected: ") and "investigator" in line, line


def test_an_empty_query_says_where_to_write_it(kernel: Kernel) -> None:
    _, error = kernel.run("%sql")
    assert error is not None and error.startswith("UsageError: write the query after %sql"), error


def test_a_long_query_shows_how_long_it_has_run_and_then_nothing(kernel: Kernel) -> None:
    _, error = kernel.run("import saferoom.magic\nsaferoom.magic.PATIENCE = 0")
    assert error is None, error
    try:
        messages = kernel.messages(f"%%sql\n{REGIONS}")
    finally:
        kernel.run("saferoom.magic.PATIENCE = 1.0")
    shown = [m["content"]["data"]["text/plain"] for m in messages if m["msg_type"] in ("display_data", "update_display_data")]
    assert shown[0].startswith("running the query…") and shown[-1] == "", shown
    assert "EU" in result_of(messages)["text/html"]
