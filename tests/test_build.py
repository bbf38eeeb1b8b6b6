"""`saferoom build`: nothing sensitive crosses over, nothing is half-written, tokens match the guard."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
import sqlglot

import saferoom
from saferoom.errors import BuildError, UsageError
from saferoom.keyed import fingerprint_key
from saferoom.split import build, fingerprints, make_plan
from tests.conftest import CANARY_EMAIL, CANARY_NAME, CANARY_PAN, CANARY_SSN

CANARIES = [CANARY_NAME, CANARY_EMAIL, CANARY_SSN, CANARY_PAN, "Zebediah", "canaryfield"]

BUILDS = """
builds:
  analytics:
    role: {role}
    target: {{engine: {engine}, path: {target}}}
    k_anonymity: {{columns: [birth_date, zip], k: {k}, on_violation: {violation}{k_extra}}}
"""
# the analyst's month and 3-digit zip leave no group of 5 among 3,000 customers: the build publishes year and one digit
COARSE = "{action: generalize, date_unit: year, prefix: 1}"


def policy_with_build(room, folder: Path, *, engine: str = "duckdb", role: str = "analyst", k: int = 5,
                      violation: str = "suppress", extra: str = "", quasi: str = COARSE, k_extra: str = "",
                      target: str = "analytics", name: str = "saferoom.yaml") -> saferoom.Policy:
    text = room.policy.read_text().replace("path: prod.duckdb", f"path: {room.database}")
    text = text.replace("file:token.key", f"file:{room.folder / 'token.key'}")
    text = text.split("builds:")[0] + extra
    text = text.replace("quasi: generalize,", f"quasi: {quasi},")
    path_ = folder / (f"{target}.duckdb" if engine == "duckdb" else target)
    text += BUILDS.format(role=role, engine=engine, target=path_, k=k, violation=violation, k_extra=k_extra)
    path = folder / name
    path.write_text(text)
    return saferoom.load_policy(path)


def values_of_duckdb(path: Path) -> list[str]:
    with duckdb.connect(str(path), read_only=True) as con:
        tables = [t for (t,) in con.execute("select table_name from duckdb_tables()").fetchall()]
        return [str(v) for t in tables for row in con.execute(f'select * from "{t}"').fetchall() for v in row]


def values_of_parquet(folder: Path) -> list[str]:
    return [str(v) for f in folder.glob("*.parquet") for col in pq.read_table(f).columns for v in col.to_pylist()]


def test_split_modules_are_modules() -> None:
    """No name in the package rebinds a submodule: `import saferoom.split.plan as m` gives the module."""
    import pkgutil
    import types

    import saferoom.split
    import saferoom.split.plan as plan_module

    assert isinstance(plan_module, types.ModuleType) and plan_module.__name__ == "saferoom.split.plan"
    for info in pkgutil.iter_modules(saferoom.split.__path__):
        module = importlib.import_module(f"saferoom.split.{info.name}")
        assert getattr(saferoom.split, info.name, module) is module, info.name
    assert not set(saferoom.split.__all__) & {m.name for m in pkgutil.iter_modules(saferoom.split.__path__)}


@pytest.fixture(scope="module")
def built(room, tmp_path_factory):
    folder = tmp_path_factory.mktemp("build")
    policy = policy_with_build(room, folder)
    return policy, build(policy, "analytics"), folder


def test_no_raw_value_in_the_built_bytes_or_values(built, room) -> None:
    _, manifest, folder = built
    data = (folder / "analytics.duckdb").read_bytes()
    for canary in CANARIES:
        assert canary.encode() not in data
    values = set(values_of_duckdb(folder / "analytics.duckdb"))
    raw = {v for row in room.raw("select name, email, ssn from customers") for v in row}
    raw |= {p for (p,) in room.raw("select pan from cards")}
    assert not values & raw
    assert not any(c in v for v in values for c in CANARIES)


def test_manifest_says_what_happened(built, room) -> None:
    policy, manifest, folder = built
    on_disk = json.loads((folder / "analytics.duckdb.manifest.json").read_text())
    assert on_disk["build_id"] == manifest.build_id and on_disk["policy_hash"] == policy.hash
    tables = {t["table"]: t for t in on_disk["tables"]}
    assert tables["prod.cards"]["rows_in"] == room.raw("select count(*) from cards")[0][0]
    fates = {c["name"]: (c["fate"], c["action"]) for c in tables["prod.cards"]["columns"]}
    assert fates == {"card_id": ("kept", "allow"), "customer_id": ("changed", "tokenize"), "pan": ("removed", "deny")}
    name = next(c for c in tables["prod.customers"]["columns"] if c["name"] == "name")
    assert (name["action"], name["tag"], name["threats"]) == ("tokenize", "pii", ["reidentification"])
    k = tables["prod.customers"]["k_anonymity"]
    assert k["rows_suppressed"] == tables["prod.customers"]["rows_in"] - tables["prod.customers"]["rows_out"]
    assert on_disk["source_snapshot"].startswith("sha256:")
    assert tables["prod.orders"]["row_filter_left_to_policy"] == "region = {user.region}"


def test_k_anonymity_holds_after_suppression(built) -> None:
    _, manifest, folder = built
    customers = next(t for t in manifest.tables if t.table == "prod.customers")
    assert 0 < customers.k_anonymity["rows_suppressed"] < customers.rows_in  # some year x zip-digit groups are small
    with duckdb.connect(str(folder / "analytics.duckdb"), read_only=True) as con:
        smallest = con.execute("select min(n) from (select count(*) n from customers group by birth_date, zip)").fetchall()[0][0]
    assert smallest >= 5
    assert customers.k_anonymity["smallest_group"] == smallest


def test_tokens_equal_the_guards_and_join(built, alice: saferoom.Session) -> None:
    _, _, folder = built
    with duckdb.connect(str(folder / "analytics.duckdb"), read_only=True) as con:
        built_tokens = {str(t) for (t,) in con.execute("select customer_id from cards").fetchall()}
        joined = con.execute("select count(*) from orders o join cards c using (customer_id)").fetchall()[0][0]
    guard_tokens = set(alice.query("select customer_id from cards").to_arrow().column(0).to_pylist())
    assert built_tokens == guard_tokens
    assert joined > 0


def test_fingerprints_hold_removed_values_and_no_cleartext(built, room) -> None:
    policy, manifest, folder = built
    index = folder / "analytics.duckdb.fingerprints"
    data = index.read_bytes()
    assert not any(c.encode() in data for c in CANARIES)
    header, sections = fingerprints.read(index)
    key = fingerprint_key(policy.token_key)
    assert header["key_id"] == fingerprints.key_id(key)
    probes = fingerprints.fingerprint(key, [CANARY_NAME, f"  {CANARY_EMAIL.upper()} ", CANARY_SSN, CANARY_PAN, "Not A Customer", "nobody@example.org"])
    assert fingerprints.contains(sections, probes).tolist() == [True, True, True, True, False, False]
    assert manifest.fingerprints["values"] == sum(len(s.hashes) for s in sections)


def test_fragment_serves_the_built_database(built, alice: saferoom.Session) -> None:
    policy, _, folder = built
    text = policy.path.read_text() + "includes: [analytics.duckdb.saferoom.yaml]\n"
    served = folder / "served.yaml"
    served.write_text(text)
    with saferoom.connect(served, user="alice") as session:
        count = session.query("select count(*) from analytics.orders where order_id = 990000001").to_arrow().column(0).to_pylist()
        tokens = session.query("select customer_id from analytics.cards").to_arrow().column(0).to_pylist()
    assert count == [1]  # the build left the user-dependent filter to the analytics policy
    assert set(tokens) == set(alice.query("select customer_id from cards").to_arrow().column(0).to_pylist())


def test_incremental_build_carries_unchanged_tables(room, tmp_path: Path) -> None:
    policy = policy_with_build(room, tmp_path)
    first = build(policy, "analytics")
    assert not any(t.carried_over for t in first.tables)
    second = build(policy, "analytics")
    assert all(t.carried_over for t in second.tables)
    assert [t.rows_out for t in second.tables] == [t.rows_out for t in first.tables]
    again = build(policy, "analytics", full=True)
    assert not any(t.carried_over for t in again.tables)
    with duckdb.connect(str(tmp_path / "analytics.duckdb"), read_only=True) as con:
        assert con.execute("select build_id from saferoom_build").fetchall() == [(again.build_id,)]


def test_changed_source_table_is_rebuilt(room, tmp_path: Path) -> None:
    database = tmp_path / "prod.duckdb"
    database.write_bytes(room.database.read_bytes())
    policy = policy_with_build(room, tmp_path)
    text = policy.path.read_text().replace(f"path: {room.database}", f"path: {database}")
    policy.path.write_text(text)
    build(saferoom.load_policy(policy.path), "analytics")
    with duckdb.connect(str(database)) as con:
        con.execute("insert into orders select order_id + 5000000, customer_id, amount, region, created_at from orders limit 3")
    manifest = build(saferoom.load_policy(policy.path), "analytics")
    carried = {t.table: t.carried_over for t in manifest.tables}
    assert carried == {"prod.customers": True, "prod.cards": True, "prod.orders": False}


def test_parquet_target(room, tmp_path: Path) -> None:
    policy = policy_with_build(room, tmp_path, engine="parquet")
    manifest = build(policy, "analytics")
    target = tmp_path / "analytics"
    assert target.is_symlink()
    assert {p.name for p in target.glob("*.parquet")} == {"customers.parquet", "cards.parquet", "orders.parquet"}
    values = values_of_parquet(target)
    assert not any(c in v for v in values for c in CANARIES)
    assert pq.read_table(target / "cards.parquet").column_names == ["card_id", "customer_id"]
    old = target.resolve()
    second = build(policy, "analytics", full=True)
    assert target.resolve() != old and not old.exists()
    assert second.build_id != manifest.build_id


def test_k_anonymity_fail_writes_nothing(room, tmp_path: Path) -> None:
    policy = policy_with_build(room, tmp_path, violation="fail")
    with pytest.raises(BuildError, match="k-anonymity fails"):
        build(policy, "analytics")
    assert [p.name for p in tmp_path.iterdir()] == ["saferoom.yaml"]  # no lock file either


def test_k_anonymity_report_keeps_rows(room, tmp_path: Path) -> None:
    manifest = build(policy_with_build(room, tmp_path, violation="report"), "analytics")
    customers = next(t for t in manifest.tables if t.table == "prod.customers")
    assert customers.rows_out == customers.rows_in and customers.k_anonymity["smallest_group"] < 5


def test_plan_writes_nothing(room, tmp_path: Path) -> None:
    built_plan = make_plan(policy_with_build(room, tmp_path), "analytics")
    assert [t.table for t in built_plan.tables] == ["prod.customers", "prod.cards", "prod.orders"]
    assert "pan" in next(t for t in built_plan.tables if t.table == "prod.cards").removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saferoom.yaml"]


def test_unknown_build_is_a_usage_error(room, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no build named `nightly`.*analytics"):
        build(policy_with_build(room, tmp_path), "nightly")


def test_unwritable_target_is_a_clear_error(room, tmp_path: Path) -> None:
    policy = policy_with_build(room, tmp_path)
    text = policy.path.read_text().replace(f"path: {tmp_path / 'analytics.duckdb'}", f"path: {tmp_path / 'missing' / 'analytics.duckdb'}")
    policy.path.write_text(text)
    with pytest.raises(BuildError, match="does not exist"):
        build(saferoom.load_policy(policy.path), "analytics")


def test_missing_source_table_fails_before_writing(room, tmp_path: Path) -> None:
    policy = policy_with_build(room, tmp_path)
    text = policy.path.read_text().replace("  prod.orders:", "  prod.refunds: {refund_id: public}\n  prod.orders:")
    policy.path.write_text(text)
    with pytest.raises(BuildError, match="prod.refunds"):
        build(saferoom.load_policy(policy.path), "analytics")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saferoom.yaml"]


def test_build_refuses_to_overwrite_a_source(room, tmp_path: Path) -> None:
    policy = policy_with_build(room, tmp_path)
    text = policy.path.read_text().replace(f"path: {tmp_path / 'analytics.duckdb'}", f"path: {room.database}")
    policy.path.write_text(text)
    with pytest.raises(BuildError, match="never overwrites a source"):
        build(saferoom.load_policy(policy.path), "analytics")


KILLER = """
import sys, saferoom
from saferoom.split import build
build(saferoom.load_policy(sys.argv[1]), "analytics", full=True)
"""


def test_killed_build_leaves_the_last_good_one(room, tmp_path: Path) -> None:
    big = tmp_path / "big.duckdb"
    with duckdb.connect(str(big)) as con:
        con.execute("create table events as select range as id, 'customer-' || range as email from range(3000000)")
    (tmp_path / "token.key").write_text("k" * 64)
    (tmp_path / "saferoom.yaml").write_text(f"""version: 1
sources: {{big: {{engine: duckdb, path: {big}}}}}
secrets: {{token_key: file:token.key}}
tags: {{pii: {{}}}}
tables: {{big.events: {{id: public, email: pii}}}}
roles: {{analyst: {{columns: {{pii: tokenize}}}}}}
builds: {{analytics: {{role: analyst, target: {{engine: duckdb, path: analytics.duckdb}}}}}}
""")
    policy = saferoom.load_policy(tmp_path / "saferoom.yaml")
    good = build(policy, "analytics")
    before = (tmp_path / "analytics.duckdb").read_bytes()
    child = subprocess.Popen([sys.executable, "-c", KILLER, str(tmp_path / "saferoom.yaml")])
    deadline = time.monotonic() + 600  # only a ceiling for a hang: the child starts building when it can
    while not list(tmp_path.glob(".analytics.duckdb.building-*")) and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.02)
    time.sleep(0.3)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert (tmp_path / "analytics.duckdb").read_bytes() == before
    with duckdb.connect(str(tmp_path / "analytics.duckdb"), read_only=True) as con:
        assert con.execute("select count(*) from events").fetchall() == [(3000000,)]
        assert con.execute("select build_id from saferoom_build").fetchall() == [(good.build_id,)]
    assert json.loads((tmp_path / "analytics.duckdb.manifest.json").read_text())["build_id"] == good.build_id
    again = build(policy, "analytics")  # clears the leftovers and carries the good table over
    assert not list(tmp_path.glob(".analytics.duckdb.building-*"))
    assert again.tables[0].carried_over


def test_cli_build_and_plan(room, tmp_path: Path) -> None:
    policy = policy_with_build(room, tmp_path)
    run = [sys.executable, "-c", "from saferoom.cli import main; main()"]
    planned = subprocess.run([*run, "build", "analytics", "-p", str(policy.path), "--plan"], capture_output=True, text=True, check=False)
    assert planned.returncode == 0, planned.stderr
    assert "removed: pan (values fingerprinted: pan)" in planned.stdout
    assert "built: no earlier build of this target" in planned.stdout
    done = subprocess.run([*run, "build", "analytics", "-p", str(policy.path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "prod.customers" in done.stdout and "fingerprints" in done.stdout
    missing = subprocess.run([*run, "build", "nightly", "-p", str(policy.path)], capture_output=True, text=True, check=False)
    assert missing.returncode == 2 and "no build named" in missing.stderr


def test_distinct_token_join_gives_the_same_tokens(room, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = importlib.import_module("saferoom.split.run")
    monkeypatch.setattr(run, "DISTINCT_MIN_ROWS", 0)
    monkeypatch.setattr(run, "DISTINCT_MAX_RATIO", 1.01)
    build(policy_with_build(room, tmp_path), "analytics")
    with duckdb.connect(str(tmp_path / "analytics.duckdb"), read_only=True) as con:
        built = {order: str(token) for order, token in con.execute("select order_id, customer_id from orders").fetchall()}
    raw = dict(room.raw("select order_id, customer_id from orders"))
    assert built == {order: room.token(customer) for order, customer in raw.items()}


def test_distinct_tokens_rewrite() -> None:
    from saferoom.guard.views import INNER_ALIAS
    from saferoom.split.tokens import distinct_tokens

    view = sqlglot.parse_one(
        f'SELECT __saferoom_token("{INNER_ALIAS}"."k") AS "k", "{INNER_ALIAS}"."x" AS "x" '
        f'FROM "s"."main"."t" AS {INNER_ALIAS} WHERE {INNER_ALIAS}.x > 1', read="duckdb")
    out = distinct_tokens(view, {"k": 1000}, {"k": "BIGINT"}).sql("duckdb")
    assert out == (
        'SELECT __saferoom_tok_0.t AS "k", "__saferoom_t"."x" AS "x" FROM "s"."main"."t" AS __saferoom_t '
        'LEFT JOIN (SELECT v, __SAFEROOM_TOKEN(v) AS t FROM (SELECT DISTINCT "__saferoom_t"."k" AS v '
        'FROM "s"."main"."t" AS __saferoom_t WHERE __saferoom_t.x > 1) AS d) AS __saferoom_tok_0 '
        'ON "__saferoom_t"."k" = __saferoom_tok_0.v WHERE __saferoom_t.x > 1'
    )
    # on a cluster, a small map is broadcast to the executors; a large one is left to the planner
    small = distinct_tokens(view, {"k": 1000}, {"k": "BIGINT"}, broadcast_below=5000).sql("spark")
    assert small.startswith("SELECT /*+ BROADCAST(__saferoom_tok_0) */ __saferoom_tok_0.t AS `k`")
    large = distinct_tokens(view, {"k": 10_000}, {"k": "BIGINT"}, broadcast_below=5000).sql("spark")
    assert "/*+" not in large


@pytest.mark.parametrize("engine", ["duckdb", "parquet"])
def test_full_disk_fails_the_build_and_keeps_the_last_good_one(room, tmp_path: Path, engine: str) -> None:
    """A write that cannot grow its file (RLIMIT_FSIZE, as on a full disk): a clear error, nothing half-written."""
    policy = policy_with_build(room, tmp_path, engine=engine)
    good = build(policy, "analytics")
    target = tmp_path / ("analytics.duckdb" if engine == "duckdb" else "analytics")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("analytics") and p.is_file()}
    limit = 64 * 1024  # far below a table of the room, far above the lock and the manifest
    code = f"import resource; resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); from saferoom.cli import main; main()"
    done = subprocess.run([sys.executable, "-c", code, "build", "analytics", "-p", str(policy.path), "--full"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == BuildError.exit_code, done.stdout + done.stderr
    assert "the last good build is untouched" in done.stderr and "File too large" in done.stderr, done.stderr
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("analytics") and p.is_file()}
    assert after == before
    assert not [p for p in tmp_path.iterdir() if ".build" in p.name and p != target.resolve()]
    assert json.loads((tmp_path / f"{target.name}.manifest.json").read_text())["build_id"] == good.build_id
    if engine == "duckdb":
        with duckdb.connect(str(target), read_only=True) as con:
            assert con.execute("select build_id from saferoom_build").fetchall() == [(good.build_id,)]
    else:
        assert json.loads((target / "_saferoom_build.json").read_text())["build_id"] == good.build_id


@pytest.mark.parametrize("occupant", ["folder", "file", "database"])
def test_a_target_path_held_by_something_else_is_never_replaced(room, tmp_path: Path, occupant: str) -> None:
    policy = policy_with_build(room, tmp_path)
    target = tmp_path / "analytics.duckdb"
    if occupant == "folder":
        target.mkdir()
        (target / "keep.txt").write_text("mine")
    elif occupant == "file":
        target.write_text("someone's notes")
    else:
        with duckdb.connect(str(target)) as con:
            con.execute("create table mine as select 42 as answer")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(BuildError, match="was not made by saferoom build"):
        build(policy, "analytics")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing left behind, not even a lock file
    if occupant == "folder":
        assert (target / "keep.txt").read_text() == "mine"
    elif occupant == "file":
        assert target.read_text() == "someone's notes"
    else:
        with duckdb.connect(str(target), read_only=True) as con:
            assert con.execute("select answer from mine").fetchall() == [(42,)]


def test_row_order_carries_nothing_of_raw_values(room, tmp_path: Path) -> None:
    """A row's position in the build must not tell the raw value behind its token (the source is in id order)."""
    import numpy as np

    build(policy_with_build(room, tmp_path, violation="report"), "analytics")
    raw_of = {room.token(i): i for (i,) in room.raw("select customer_id from customers")}
    assert [i for (i,) in room.raw("select customer_id from customers order by rowid")][:3] == [1, 2, 3]
    with duckdb.connect(str(tmp_path / "analytics.duckdb"), read_only=True) as con:
        for table in ("customers", "orders"):
            tokens = [t for (t,) in con.execute(f"select customer_id from {table} order by rowid").fetchall()]
            raw = np.array([raw_of[str(t)] for t in tokens], dtype=float)
            assert len(raw) > 1000
            rho = np.corrcoef(np.argsort(np.argsort(raw)), np.arange(len(raw)))[0, 1]  # Spearman's rank correlation
            assert abs(rho) < 0.1, f"{table}: row position follows the raw customer_id (rho={rho:.3f})"
