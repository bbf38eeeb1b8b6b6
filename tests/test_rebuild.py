"""The nightly rebuild: repeatable over its own output, nearly free when nothing changed, served as documented."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import httpx
import pytest
import yaml
from rich.console import Console

import saferoom
from saferoom.errors import BuildError, QueryRejected
from saferoom.lint import lint
from saferoom.split import build
from tests.gateway_helpers import Server, eventually, free_port
from tests.test_build import policy_with_build

TABLES = {"customers", "cards", "orders"}
FRAGMENT = "analytics.duckdb.saferoom.yaml"
DOCS = Path(__file__).parent.parent / "docs"


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
    assert count == next(t.rows_out for t in builds[-1].tables if t.name == "customers") > 0


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


def test_a_removed_column_is_explained_on_the_split(room, tmp_path: Path) -> None:
    policy = policy_with_build(room, tmp_path)
    build(policy, "analytics")
    policy = served(policy)
    for user in ("alice", "ivan"):  # an analyst is denied cards.pan; an investigator sees it masked in production
        with saferoom.connect(policy.path, user=user) as session, pytest.raises(QueryRejected) as refused:
            session.query("select card_id, pan from analytics.cards")
        assert refused.value.column == "analytics.cards.pan" and not refused.value.allowed_roles
        assert "removed this column (tag pci, card-theft" in str(refused.value)
    with duckdb.connect(str(tmp_path / "analytics.duckdb"), read_only=True) as con:
        catalog = {("analytics", "main", t): dict(con.execute(f"select column_name, data_type from duckdb_columns() "
                                                               f"where table_name = '{t}'").fetchall()) for t in TABLES}
    assert [f for f in lint(policy, catalog, "main", "duckdb") if f.table.startswith("analytics.")] == []


def test_the_manifest_gives_every_column_its_fate(room, tmp_path: Path) -> None:
    manifest = build(policy_with_build(room, tmp_path), "analytics")
    customers = next(t for t in manifest.tables if t.table == "prod.customers")
    fates = {c["name"]: (c["fate"], c["action"]) for c in customers.columns}
    assert fates["segment"] == ("kept", "allow") and fates["ssn"] == ("changed", "tokenize")
    assert fates["internal_score"] == ("removed", "deny")  # in the source, not in the policy: it exists for no one
    written = duckdb.connect(str(tmp_path / "analytics.duckdb"), read_only=True)
    with written:
        columns = {c for (c,) in written.execute("select column_name from duckdb_columns() where table_name = 'customers'").fetchall()}
    assert columns == {name for name, (fate, _) in fates.items() if fate != "removed"}


def test_k_anonymity_that_suppresses_every_row_fails(room, tmp_path: Path) -> None:
    policy = policy_with_build(room, tmp_path, quasi="generalize")  # month x 3-digit zip: no group of 5
    with pytest.raises(BuildError, match=r"suppressed every one of the [\d,]+ rows of prod.customers.*birth_date, zip"):
        build(policy, "analytics")
    assert [p.name for p in tmp_path.iterdir()] == ["saferoom.yaml"]
    accepted = build(policy_with_build(room, tmp_path, quasi="generalize", k_extra=", max_suppressed: 1"), "analytics")
    assert next(t.rows_out for t in accepted.tables if t.table == "prod.customers") == 0


def test_k_anonymity_fails_above_max_suppressed(room, tmp_path: Path) -> None:
    with pytest.raises(BuildError, match=r"suppressed \d+%, above max_suppressed=0.01, of the [\d,]+ rows of prod.customers"):
        build(policy_with_build(room, tmp_path, k_extra=", max_suppressed: 0.01"), "analytics")
    kept = build(policy_with_build(room, tmp_path, k_extra=", max_suppressed: 0.9"), "analytics")
    assert next(t for t in kept.tables if t.table == "prod.customers").k_anonymity["rows_suppressed"] > 0


def identity(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def test_nothing_changed_rewrites_nothing(room, tmp_path: Path) -> None:
    policy = policy_with_build(room, tmp_path)
    first = build(policy, "analytics")
    files = ["analytics.duckdb", "analytics.duckdb.fingerprints"]
    before = {name: identity(tmp_path / name) for name in files}
    again = build(policy, "analytics")
    assert {name: identity(tmp_path / name) for name in files} == before  # no table was copied, no file written
    assert again.build_id == first.build_id and all(t.carried_over for t in again.tables)
    assert [t.rows_out for t in again.tables] == [t.rows_out for t in first.tables]
    assert json.loads((tmp_path / "analytics.duckdb.manifest.json").read_text())["build_id"] == first.build_id


def test_parquet_carries_unchanged_tables_as_the_same_files(room, tmp_path: Path) -> None:
    database = tmp_path / "prod.duckdb"
    database.write_bytes(room.database.read_bytes())
    policy = policy_with_build(room, tmp_path, engine="parquet")
    policy.path.write_text(policy.path.read_text().replace(f"path: {room.database}", f"path: {database}"))
    policy = saferoom.load_policy(policy.path)
    build(policy, "analytics")
    folder = (tmp_path / "analytics").resolve()
    files = {p.name: identity(p) for p in folder.glob("*.parquet")}
    build(policy, "analytics")
    assert (tmp_path / "analytics").resolve() == folder  # nothing changed: the same folder is still the target
    with duckdb.connect(str(database)) as con:
        con.execute("insert into orders select order_id + 5000000, customer_id, amount, region, created_at from orders limit 3")
    changed = build(policy, "analytics")
    assert {t.table: t.carried_over for t in changed.tables} == {"prod.customers": True, "prod.cards": True, "prod.orders": False}
    moved = (tmp_path / "analytics").resolve()
    assert moved != folder
    for name in ("customers.parquet", "cards.parquet"):  # hard links to the last build's files, not copies
        assert (os.stat(moved / name).st_ino, os.stat(moved / name).st_size) == (files[name][0], files[name][2])


def test_two_policies_in_one_folder_keep_their_own_files(room, tmp_path: Path) -> None:
    one = policy_with_build(room, tmp_path, target="one", name="one.yaml")
    two = policy_with_build(room, tmp_path, target="two", name="two.yaml")
    first = build(one, "analytics")
    build(two, "analytics")
    again = build(one, "analytics")  # its manifest was not overwritten by the other policy's build
    assert again.build_id == first.build_id and all(t.carried_over for t in again.tables)
    names = {p.name for p in tmp_path.iterdir()}
    for target in ("one.duckdb", "two.duckdb"):
        assert {f"{target}.manifest.json", f"{target}.fingerprints", f"{target}.saferoom.yaml"} <= names


def test_a_new_token_key_rebuilds_every_table(room, tmp_path: Path) -> None:
    policy = policy_with_build(room, tmp_path)
    build(policy, "analytics")
    (tmp_path / "new.key").write_text("n" * 64)
    policy.path.write_text(policy.path.read_text().replace(f"file:{room.folder / 'token.key'}", f"file:{tmp_path / 'new.key'}"))
    again = build(saferoom.load_policy(policy.path), "analytics")
    assert not any(t.carried_over for t in again.tables)  # old tokens would no longer match the guard's


def test_plan_says_what_would_be_carried_over(room, tmp_path: Path) -> None:
    policy = policy_with_build(room, tmp_path)
    done = build(policy, "analytics")
    command = [sys.executable, "-c", "from saferoom.cli import main; main()", "build", "analytics", "-p", str(policy.path), "--plan"]
    planned = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert planned.count(f"carried over: unchanged since build {done.build_id}") == 3
    full = subprocess.run([*command, "--full"], capture_output=True, text=True, check=True).stdout
    assert full.count("built: --full builds every table") == 3


def test_the_documented_split_builds_and_serves(room, tmp_path: Path) -> None:
    """docs/build.md: its `builds:` example over the demo policy, built, then served by its `includes:` example."""
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", (DOCS / "build.md").read_text(), re.S)]
    documented, serving = blocks[0], next(b for b in blocks if "includes" in b)
    policy = yaml.safe_load(room.policy.read_text())
    policy["sources"]["prod"]["path"] = str(room.database)
    policy["secrets"]["token_key"] = f"file:{room.folder / 'token.key'}"
    policy["builds"] = documented["builds"]
    path = tmp_path / "saferoom.yaml"
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    manifest = build(saferoom.load_policy(path), "analytics")
    assert {t.table for t in manifest.tables} == set(documented["builds"]["analytics"]["tables"])
    policy["includes"] = serving["includes"]
    policy["roles"]["analyst"]["rows"] |= serving["roles"]["analyst"]["rows"]
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    build(saferoom.load_policy(path), "analytics")  # the fragment included in the policy that builds it
    with saferoom.connect(path, user="alice") as session:
        regions = session.query("select distinct region from analytics.orders").to_arrow().column(0).to_pylist()
    assert regions == ["EU"]  # the user-dependent filter the fragment listed, carried over as documented


def test_a_parquet_build_is_served_by_the_gateway(room, tmp_path: Path, alice: saferoom.Session) -> None:
    """The fragment names a Parquet target as what it is, so the gateway serves the folder (DuckDB reads its
    files); a rebuild rewrites the fragment, and the gateway reloads onto the new folder."""
    policy = policy_with_build(room, tmp_path, engine="parquet")
    first = build(policy, "analytics")
    fragment = yaml.safe_load((tmp_path / "analytics.saferoom.yaml").read_text())
    assert fragment["sources"] == {"analytics": {"engine": "parquet", "path": "analytics"}}
    policy.path.write_text(policy.path.read_text() + "includes: [analytics.saferoom.yaml]\n")
    assert saferoom.load_policy(policy.path).model.sources["analytics"].engine == "parquet"
    (tmp_path / "state").mkdir()
    server = Server(policy.path, tmp_path / "state", free_port(), tmp_path / "server.log").start()
    try:
        with saferoom.connect(url=server.url, token=server.token("alice")) as remote:
            count = remote.query("select count(*) as n from analytics.customers").to_pylist()
            tokens = remote.query("select customer_id from analytics.cards").to_arrow().column(0).to_pylist()
            refused = remote.explain("select pan from analytics.cards").refusal
            served = httpx.get(f"{server.url}/healthz").json()["policy"]
            build(saferoom.load_policy(policy.path), "analytics", full=True)
            eventually(lambda: httpx.get(f"{server.url}/healthz").json()["policy"] != served, "the rebuild's fragment loaded")
            again = remote.query("select count(*) as n from analytics.customers").to_pylist()
    finally:
        server.stop()
    assert count == again == [{"n": next(t.rows_out for t in first.tables if t.name == "customers")}]
    assert set(tokens) == set(alice.query("select customer_id from cards").to_arrow().column(0).to_pylist())
    assert refused is not None and "removed this column" in refused.message
