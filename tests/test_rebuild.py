"""The nightly rebuild: repeatable over its own output, nearly free when nothing changed, served as documented."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

import saferoom
from saferoom.split import build
from tests.test_build import policy_with_build

TABLES = {"customers", "cards", "orders"}
FRAGMENT = "analytics.duckdb.saferoom.yaml"


def served(policy: saferoom.Policy) -> saferoom.Policy:
    """The build's own policy serving its output, as docs/build.md says: one `includes:` line."""
    policy.path.write_text(policy.path.read_text() + f"includes: [{FRAGMENT}]\n")
    return saferoom.load_policy(policy.path)


def fragment_tables(folder: Path) -> set[str]:
    text = (folder / FRAGMENT).read_text()
    return {line.strip().rstrip(":").split(".", 1)[1] for line in text.splitlines() if line.startswith("  analytics.")}


def test_build_include_build_build_full_keeps_names_and_serves(room, tmp_path: Path) -> None:
    policy = policy_with_build(room, tmp_path)
    builds = [build(policy, "analytics")]
    policy = served(policy)  # from here on the build's own policy holds its output's tables
    builds += [build(policy, "analytics"), build(policy, "analytics"), build(policy, "analytics", full=True)]
    assert [{t.name for t in m.tables} for m in builds] == [TABLES] * 4
    assert [all(t.carried_over for t in m.tables) for m in builds] == [False, True, True, False]
    assert fragment_tables(tmp_path) == TABLES
    assert not list(tmp_path.glob(".*.lock"))  # no empty lock file beside the target
    with saferoom.connect(policy.path, user="alice") as session:
        count = session.query("select count(*) from analytics.customers").to_arrow().column(0)[0].as_py()
        joined = session.query("select count(*) from analytics.orders o join analytics.cards c using (customer_id)")
        assert joined.to_arrow().column(0)[0].as_py() > 0
    assert count == next(t.rows_out for t in builds[-1].tables if t.name == "customers")


def test_the_demo_runs_again_over_its_folder(tmp_path: Path) -> None:
    """`make demo`, a nightly `saferoom build analytics --full` from demo/, then `make demo` again."""
    from saferoom.walkthrough import run

    folder = tmp_path / "demo"
    quiet = Console(file=io.StringIO(), width=200)
    run(folder, 2000, quiet)
    rebuilt = build(saferoom.load_policy(folder / "saferoom.yaml"), "analytics", full=True)  # the served policy
    assert {t.name for t in rebuilt.tables} == TABLES
    run(folder, 2000, quiet)
    assert "Refused" in quiet.file.getvalue()  # type: ignore[attr-defined]
    with saferoom.connect(folder / "saferoom.yaml", user="alice") as session:
        rows = session.query("select segment, count(*) from analytics.customers group by 1").to_arrow().num_rows
    assert rows == 3


def test_two_policies_in_one_folder_keep_their_own_files(room, tmp_path: Path) -> None:
    one = policy_with_build(room, tmp_path, target="one", name="one.yaml")
    two = policy_with_build(room, tmp_path, target="two", name="two.yaml")
    build(one, "analytics")
    build(two, "analytics")
    again = build(one, "analytics")
    assert all(t.carried_over for t in again.tables)  # its manifest was not overwritten by the other policy's build
    names = {p.name for p in tmp_path.iterdir()}
    for target in ("one.duckdb", "two.duckdb"):
        assert {f"{target}.manifest.json", f"{target}.fingerprints", f"{target}.saferoom.yaml"} <= names
