"""The policy file: the format works as written, and every mistake names file and line."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import saferoom
from saferoom.demo import POLICY
from saferoom.policy import Action, load_policy
from saferoom.policy.model import PolicyModel


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "token.key").write_text("k" * 64)
    path = tmp_path / "saferoom.yaml"
    path.write_text(text)
    return path


def test_the_documented_policy_loads_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFEROOM_TOKEN_KEY", "x" * 40)
    policy = load_policy(write(tmp_path, POLICY.replace("file:token.key ", "env:SAFEROOM_TOKEN_KEY")))
    assert set(policy.tables) == {"prod.customers", "prod.cards", "prod.orders"}
    assert policy.rule("analyst", "prod.cards", "pan").action is Action.DENY
    assert policy.rule("investigator", "prod.cards", "pan").action is Action.MASK
    assert policy.rule("analyst", "prod.customers", "segment").action is Action.ALLOW
    assert policy.token_key is not None and "x" not in repr(policy.token_key)
    assert policy.hash.startswith("sha256:")


@pytest.mark.parametrize("tags, expected", [
    ("[pii, quasi]", Action.TOKENIZE),
    ("[quasi, public]", Action.GENERALIZE),
    ("[quasi, pci]", Action.DENY),
    ("[quasi, secret]", Action.DENY),  # a tag the role does not mention is denied
    ("public", Action.ALLOW),
])
def test_strictest_action_wins(tmp_path: Path, tags: str, expected: Action) -> None:
    text = POLICY.replace("{customer_id: key, name: pii,", f"{{customer_id: key, name: {tags},")
    text = text.replace("  key: {}", "  key: {}\n  secret: {}")
    policy = load_policy(write(tmp_path, text))
    assert policy.rule("analyst", "prod.customers", "name").action is expected


BROKEN = [
    ("version: 1\nsources: {}\ntables: {}\nsurprise: 1\n", 4, "unknown key `surprise`"),
    ("version: 2\nsources: {}\ntables: {}\n", 1, "version"),
    ("version: 1\nsources: {}\n", 1, "missing required key `tables`"),  # the mapping that lacks it
    ("version: 1\nsources: [\n", 3, "not valid YAML"),
    ("", None, "empty"),
    ("- 1\n- 2\n", 1, "mapping"),
    (POLICY.replace("  pci: {threats: [card-theft]}", "  pci: {threats: [card-thief]}"), 12, "threat `card-thief`"),
    (POLICY.replace("name: pii, email", "name: pi, email"), 17, "tag `pi`"),
    (POLICY.replace("prod.cards:", "prod.card.s.x:"), 18, "source.table"),
    (POLICY.replace("prod.orders:", "other.orders:"), 19, "source `other`"),
    (POLICY.replace("roles: [investigator]", "roles: [inspector]"), 22, "role `inspector`"),
    (POLICY.replace("pci: deny, key", "pcx: deny, key"), 25, "tag `pcx`"),
    (POLICY.replace("token_key: file:token.key", "token_key: hunter2-literal"), 7, "written as a value"),
    (POLICY.replace("token_key: file:token.key", "token_key: env:SAFEROOM_TEST_UNSET_VARIABLE"), 7, "SAFEROOM_TEST_UNSET_VARIABLE"),
    (POLICY.replace("token_key: file:token.key", "token_key: file:missing.key"), 7, "cannot read secret file"),
    (POLICY.replace('"region = {user.region}"', '"region = = {user.region}"'), 26, "is not a complete condition"),
    (POLICY.replace('"region = {user.region}"', '"regoin = {user.region}"'), 26, "regoin"),
    (POLICY.replace('"region = {user.region}"', '"region in (select region from prod.ordres)"'), 26, "did you mean `prod.orders`"),
    (POLICY.replace('"region = {user.region}"', '"region in (select region from prod.orders)"'), 26, "give each its own alias"),
    (POLICY.replace('"region = {user.region}"', '"region = {usr.region}"'), 26, "placeholders"),
    (POLICY.replace("rows: {prod.orders:", "rows: {prod.nothing:"), 26, "prod.nothing"),
    (POLICY.replace("    max_rows: 100000", "    max_rows: -5"), 27, "max_rows"),
    (POLICY.replace("pci: deny, key", "pci: obliterate, key"), 25, "pci"),
    (POLICY.replace("  ivan: {roles: [investigator]}", "  ivan: {roles: [investigator]}\n  ivan: {roles: [analyst]}"), 23, "duplicate key `ivan`"),
    (POLICY.replace("  key: {}", "  public: {}"), 15, "reserved"),
    ("version: 1\n" + "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}' if i else '1'] * 9)}]\n" for i in range(8)), 7,
     "aliases expand"),                                              # an alias bomb: 9**8 values from 8 lines
    ("version: 1\nloop: &loop [*loop]\n", 2, "refers to the value that contains it"),
    ("version: 1\nx: " + "[" * 3000 + "]" * 3000 + "\n", None, "nested too deeply"),
]


@pytest.mark.parametrize("text, line, fragment", BROKEN)
def test_broken_policies_name_file_and_line(tmp_path: Path, text: str, line: int | None, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(saferoom.PolicyError) as caught:
        load_policy(path)
    assert fragment in str(caught.value)
    assert caught.value.file == str(path)
    assert caught.value.line == line, str(caught.value)  # None: the loader could not point at a line, and says so
    assert str(caught.value).startswith(f"{path}:")


@pytest.mark.parametrize("predicate", ["region = getenv('X')", "region = current_setting('threads')", "region = $1"])
def test_a_filter_the_engine_may_not_run_is_refused_before_it_opens(tmp_path: Path, predicate: str) -> None:
    """What a filter may call depends on the engine, so it is checked where the engine is chosen, naming the line."""
    path = write(tmp_path, POLICY.replace('"region = {user.region}"', f'"{predicate}"'))
    load_policy(path)  # the policy alone knows no engine
    with pytest.raises(saferoom.PolicyError) as caught:
        saferoom.connect(path, user="ivan")
    assert (caught.value.file, caught.value.line) == (str(path), 26) and "row filter for `prod.orders`" in str(caught.value)


def test_the_policy_imports_no_guard_and_no_engine() -> None:
    code = "import sys, saferoom.policy; print(' '.join(m for m in sys.modules if m.startswith('saferoom')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = done.stdout.split()
    assert "saferoom.policy" in loaded
    assert not [m for m in loaded if m.startswith(("saferoom.guard", "saferoom.engines", "saferoom.session"))], loaded


def test_literal_secret_is_never_echoed(tmp_path: Path) -> None:
    path = write(tmp_path, POLICY.replace("token_key: file:token.key", "token_key: hunter2-literal"))
    with pytest.raises(saferoom.PolicyError) as caught:
        load_policy(path)
    assert "hunter2" not in str(caught.value)


def test_short_token_key_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, POLICY)
    (tmp_path / "token.key").write_text("short")
    with pytest.raises(saferoom.PolicyError, match="too short"):
        load_policy(path)


def test_missing_policy_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(saferoom.PolicyError, match="cannot read"):
        load_policy(tmp_path / "nope.yaml")


def test_action_options(tmp_path: Path, room) -> None:
    text = POLICY.replace("quasi: generalize", "quasi: {action: generalize, prefix: 2, date_unit: year}")
    text = text.replace("pii: tokenize", "pii: {action: redact, text: '[gone]'}")
    text = text.replace("path: prod.duckdb", f"path: {room.database}")
    with saferoom.connect(write(tmp_path, text), user="alice") as session:
        rows = session.query("select name, zip, birth_date from customers limit 50").to_arrow()
    assert set(rows.column("name").to_pylist()) == {"[gone]"}
    assert {len(z) for z in rows.column("zip").to_pylist()} == {2}
    assert {(d.month, d.day) for d in rows.column("birth_date").to_pylist()} == {(1, 1)}


def test_null_action_keeps_the_column_typed(tmp_path: Path, room) -> None:
    text = POLICY.replace("quasi: generalize", "quasi: 'null'").replace("path: prod.duckdb", f"path: {room.database}")
    with saferoom.connect(write(tmp_path, text), user="alice") as session:
        rows = session.query("select birth_date, zip from customers limit 5").to_arrow()
    assert rows.column("birth_date").null_count == 5
    assert str(rows.schema.field("birth_date").type) == "date32[day]"


def test_unknown_user_and_foreign_role_are_refused(room) -> None:
    with pytest.raises(saferoom.AccessDenied, match="mallory"):
        room.connect("mallory")
    with pytest.raises(saferoom.AccessDenied, match="does not hold role `investigator`"):
        room.connect("alice", role="investigator")


def test_user_without_the_filter_attribute_sees_no_rows(tmp_path: Path, room) -> None:
    text = POLICY.replace("{roles: [analyst], attributes: {region: EU}}", "{roles: [analyst]}").replace("path: prod.duckdb", f"path: {room.database}")
    with saferoom.connect(write(tmp_path, text), user="alice") as session:
        assert session.query("select count(*) from orders").to_arrow().column(0).to_pylist() == [0]


def test_json_schema_describes_the_format() -> None:
    schema = PolicyModel.model_json_schema()
    assert {"version", "sources", "tables", "roles", "users", "tags", "threats", "secrets"} <= set(schema["properties"])
    json.dumps(schema)
    actions = json.dumps(schema)
    for action in Action:
        assert action.value in actions


def test_docs_policy_example_is_the_demo_policy() -> None:
    docs = (Path(__file__).parent.parent / "docs" / "policy.md").read_text()
    for line in textwrap.dedent(POLICY).splitlines():
        if line.strip().startswith(("prod.", "analyst:", "investigator:")):
            assert line.split("#")[0].strip() in docs


def test_anchors_within_reason_still_work(tmp_path: Path) -> None:
    eu_analyst = "  alice: {roles: [analyst], attributes: {region: EU}}\n"
    assert eu_analyst in POLICY
    text = POLICY.replace(eu_analyst, "  alice: &eu_analyst {roles: [analyst], attributes: {region: EU}}\n  bea: *eu_analyst\n")
    policy = load_policy(write(tmp_path, text))
    assert policy.user("bea").roles == policy.user("alice").roles == ["analyst"]


def test_an_alias_bomb_in_a_fragment_is_refused(tmp_path: Path) -> None:
    bomb = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}' if i else '1'] * 9)}]\n" for i in range(8))
    (tmp_path / "fragment.yaml").write_text("tables:\n  x: 1\n" + bomb)
    path = write(tmp_path, POLICY + "includes: [fragment.yaml]\n")
    with pytest.raises(saferoom.PolicyError, match="aliases expand"):
        load_policy(path)


@pytest.mark.parametrize("source, key", [
    ("engine: parquet", "sources.prod.path"),
    ("engine: postgres", "sources.prod.url"),
])
def test_a_missing_source_key_is_named_as_the_file_writes_it(tmp_path: Path, source: str, key: str) -> None:
    """Not `sources.prod.postgres.url`: the kind of source is what `engine:` says, not a key of the file."""
    text = POLICY.replace("    engine: duckdb\n    path: prod.duckdb", f"    {source}")
    assert text != POLICY
    with pytest.raises(saferoom.PolicyError, match=f"missing required key `{key}`") as caught:
        load_policy(write(tmp_path, text))
    assert caught.value.line == 4


def test_lint_sources_reads_every_source_of_the_policy(room) -> None:
    from saferoom.lint import ERROR, WARNING, lint_sources

    findings = lint_sources(saferoom.load_policy(room.policy))
    assert ("prod.customers", "internal_score", WARNING) in {(f.table, f.column, f.level) for f in findings}
    assert not [f for f in findings if f.level == ERROR]


@pytest.mark.parametrize("text, hint", [
    (POLICY.replace("name: pii, email", "name: piii, email"), "Did you mean `pii`?"),
    (POLICY.replace("segment: public}", "segment: publc}"), "Did you mean `public`?"),
    (POLICY.replace("columns: {pii: allow,", "columns: {pi: allow,"), "Did you mean `pii`?"),
])
def test_a_misspelt_tag_gets_the_closest_one(tmp_path: Path, text: str, hint: str) -> None:
    with pytest.raises(saferoom.PolicyError, match="which is not under `tags:`") as caught:
        load_policy(write(tmp_path, text))
    assert hint.lower() in str(caught.value).lower()


def test_lint_leaves_out_the_table_a_build_records_itself_in(room) -> None:
    from saferoom.lint import lint

    policy = saferoom.load_policy(room.policy)
    catalog = {("prod", "main", "saferoom_build"): {"build_id": "VARCHAR"}, ("prod", "main", "stray"): {"x": "INTEGER"}}
    assert [f.table for f in lint(policy, catalog, "main") if f.column is None and "not classified" in f.message] == ["prod.main.stray"]


def test_only_roles_that_someone_holds_are_offered(tmp_path: Path) -> None:
    text = POLICY.replace("  investigator:\n", "  unheld:\n    columns: {pci: allow}\n  investigator:\n")
    policy = load_policy(write(tmp_path, text))
    assert [role for role, _ in policy.roles_seeing("prod.cards", "pan")] == ["investigator"]


def load_error(tmp_path: Path, text: str) -> saferoom.PolicyError:
    with pytest.raises(saferoom.PolicyError) as caught:
        load_policy(write(tmp_path, text))
    return caught.value


@pytest.mark.parametrize("old, new, line, says", [
    ("pci: mask, key: allow", "pci: obliterate, key: allow", 29,
     "roles.investigator.columns.pci: `obliterate` is not allowed; expected one of: `deny`, `null`, `redact`"),
    ("pci: mask, key: allow", "pci: {action: mask, keep: 2}, key: allow", 29,
     "unknown key `keep` in roles.investigator.columns.pci; expected one of: `action`, `bucket`"),
    ("    max_rows: 100000", "    maxrows: 100000", 27, "unknown key `maxrows` in roles.analyst; expected one of: `description`"),
    ("engine: duckdb", "engine: duckbd", 4, "sources.prod.engine: `duckbd` is not known; expected one of: `duckdb`, `parquet`"),
    ("{card_id: public", "{card_id: 1", 18, "tables.prod.cards.card_id: expected text or a list, found `1`"),
])
def test_shape_errors_speak_the_policys_words(tmp_path: Path, old: str, new: str, line: int, says: str) -> None:
    error = load_error(tmp_path, POLICY.replace(old, new))
    assert says in str(error) and error.line == line, str(error)
    assert not any(internal in str(error) for internal in ("str-enum", "ActionSpec", "Input should", "Extra inputs"))


@pytest.mark.parametrize("old, new, suggestion", [
    ("    max_rows: 100000", "    maxrows: 100000", "did you mean `max_rows`?"),
    ("pci: mask, key: allow", "pci: mak, key: allow", "did you mean `mask`?"),
])
def test_shape_errors_suggest_the_close_name(tmp_path: Path, old: str, new: str, suggestion: str) -> None:
    assert suggestion in str(load_error(tmp_path, POLICY.replace(old, new)))


def test_every_shape_error_is_reported_at_once_sorted_by_line(tmp_path: Path) -> None:
    text = POLICY.replace("    max_rows: 100000", "    max_rows: -5").replace("pci: deny, key", "pci: obliterate, key")
    error = load_error(tmp_path, text.replace("version: 1", "version: 1\nsurprise: 1"))
    assert [p.line for p in error.problems] == [2, 26, 28, 32]  # `pci: deny` is in two roles
    assert error.line == 2 and error.exit_code == 2
    assert str(error).startswith(f"{error.file}:2: 4 problems in the policy:\n  line 2: unknown key `surprise`")


def test_many_problems_are_cut_with_a_count(tmp_path: Path) -> None:
    extra = "".join(f"    bogus{i}: 1\n" for i in range(25))
    error = load_error(tmp_path, POLICY.replace("    max_rows: 100000\n", "    max_rows: 100000\n" + extra))
    assert len(error.problems) == 25 and str(error).count("unknown key `bogus") == 20
    assert str(error).endswith("and 5 more")


def test_a_secret_of_the_wrong_type_is_not_echoed(tmp_path: Path) -> None:
    error = load_error(tmp_path, POLICY.replace("token_key: file:token.key", "token_key: 987654321"))
    assert "987654321" not in str(error) and error.line == 7


@pytest.mark.parametrize("text, line, says", [
    ("version: 1\nsources:\n  prod:\n    engine: duckdb\n   path: x\n", 5, "the indentation of line 5 does not match"),
    ("version: 1\nsources:\n\tprod: 1\n", 3, "indented with a tab"),
    ("version: 1\nsources: {prod: 1\ntables: {}\n", 3, "opened on line 2 is not closed"),
    ("version: 1\nsources: {}\ntables: 'x\n", 4, "a quote opened on line 3 is never closed"),
])
def test_yaml_syntax_errors_are_said_plainly(tmp_path: Path, text: str, line: int, says: str) -> None:
    error = load_error(tmp_path, text)
    assert says in str(error) and error.line == line, str(error)
    assert "<block" not in str(error) and f"(line {line}, column" in str(error)


def test_every_reference_error_is_reported_at_once_with_suggestions(tmp_path: Path) -> None:
    text = POLICY.replace("name: pii, email", "name: pi, email").replace("roles: [investigator]", "roles: [investigatr]")
    error = load_error(tmp_path, text.replace("pci: deny, key: tokenize}\n    rows", "pcx: deny, key: tokenize}\n    rows"))
    assert [p.line for p in error.problems] == [17, 22, 25]
    assert "tag `pi`, which is not under `tags:` (use `public` for none); expected one of: `pci`, `pii`" in str(error)
    assert "did you mean `pii`?" in str(error) and "did you mean `investigator`?" in str(error)
    assert "tag `pcx`" in str(error) and "did you mean `pci`?" in str(error)


@pytest.mark.parametrize("predicate, says", [
    ("region =", "the filter `region =` is not a complete condition"),
    ("(region = {user.region}", "opens a parenthesis that it does not close"),
    ("region = 'EU", "has a quote that is not closed"),
    ("region = {user.region})", "is not valid SQL near `)`"),
])
def test_a_bad_row_filter_is_explained_in_sql_terms(tmp_path: Path, predicate: str, says: str) -> None:
    error = load_error(tmp_path, POLICY.replace('"region = {user.region}"', f'"{predicate}"'))
    assert says in str(error) and error.line == 26, str(error)
    assert "sqlglot" not in str(error) and "Required keyword" not in str(error)


def test_lint_findings_carry_the_policy_line_they_are_about(tmp_path: Path) -> None:
    from saferoom.lint import lint

    text = POLICY.replace("  prod.cards: {card_id: public, customer_id: key, pan: pci}\n",
                          "  prod.cards:\n    card_id: public\n    Customer_ID: key\n    pan: pci\n    expiry: public\n")
    policy = load_policy(write(tmp_path, text))
    catalog = {("prod", "main", "cards"): {"card_id": "INTEGER", "customer_id": "INTEGER", "pan": "VARCHAR", "cvv": "VARCHAR"},
               ("prod", "main", "customers"): {"customer_id": "INTEGER"}, ("prod", "main", "audit"): {"x": "INTEGER"}}
    found = {(f.table, f.column, f.level): f.line for f in lint(policy, catalog, "main")}
    assert found[("prod.cards", "expiry", "error")] == 22      # listed there, gone from the source
    assert found[("prod.cards", "cvv", "warning")] == 18       # not listed: the table's line, where it belongs
    assert found[("prod.orders", None, "error")] == 23
    assert found[("prod.main.audit", None, "warning")] is None  # not in the file


def test_every_duplicate_key_is_reported(tmp_path: Path) -> None:
    text = POLICY.replace("  ivan: {roles: [investigator]}", "  ivan: {roles: [investigator]}\n  ivan: {roles: [analyst]}")
    error = load_error(tmp_path, text.replace("  key: {}", "  key: {}\n  pii: {}"))
    assert [(p.line, p.key) for p in error.problems] == [(16, "tags.pii"), (24, "users.ivan")]


def test_each_wrong_value_of_one_source_is_reported(tmp_path: Path) -> None:
    """A source's `engine:` picks its kind, so each of its keys' mistakes is its own problem."""
    error = load_error(tmp_path, POLICY.replace("    path: prod.duckdb", "    path: [prod.duckdb]\n    master: 3"))
    assert [(p.line, p.key) for p in error.problems] == [(5, "sources.prod.path"), (6, "sources.prod.master")], str(error)
    assert "sources.prod.path: expected text, found a list" in str(error)
