"""Each rule of the guard, as SQL in and SQL out (fixtures in tests/fixtures/guard), and its docstring examples."""

from __future__ import annotations

import doctest
import importlib
from dataclasses import replace
from pathlib import Path

import pytest
from sqlglot import exp

from saferoom.engines.duckdb import DUCKDB
from saferoom.errors import QueryRejected, UsageError
from saferoom.guard import RULES, Context, Guard
from saferoom.guard.parse import parse
from saferoom.guard.views import build_view
from saferoom.policy import load_policy

FIXTURES = Path(__file__).parent / "fixtures" / "guard"

POLICY = """\
version: 1
sources: {prod: {engine: duckdb, path: prod.duckdb}}
secrets: {token_key: file:token.key}
threats: {card-theft: Card data is stolen, reidentification: A person is re-identified}
tags: {pci: {threats: [card-theft]}, pii: {threats: [reidentification]}, quasi: {threats: [reidentification]}, key: {}}
tables:
  prod.customers: {customer_id: key, name: pii, birth_date: quasi, zip: quasi, segment: public}
  prod.cards: {card_id: public, customer_id: key, pan: pci}
  prod.orders: {order_id: public, amount: quasi, region: public}
  prod.vault: {pan: pci}
users:
  alice: {roles: [analyst], attributes: {region: EU}}
  nobody: {roles: [analyst]}
  ivan: {roles: [investigator]}
  mo: {roles: [marketing]}
roles:
  analyst:
    columns: {pii: tokenize, quasi: generalize, pci: deny, key: tokenize}
    rows: {prod.orders: "region = {user.region}"}
  investigator:
    columns: {pii: allow, quasi: allow, pci: mask, key: allow}
  marketing:
    columns: {pii: tokenize, quasi: allow, pci: deny, key: allow}
    aggregate: {min_group: 10, entity: prod.customers.customer_id, tables: [prod.customers, prod.cards]}
"""

CATALOG = {
    ("prod", "main", "customers"): {"customer_id": "BIGINT", "name": "VARCHAR", "birth_date": "DATE", "zip": "VARCHAR", "segment": "VARCHAR", "unlisted": "VARCHAR"},
    ("prod", "main", "cards"): {"card_id": "BIGINT", "customer_id": "BIGINT", "pan": "VARCHAR"},
    ("prod", "main", "orders"): {"order_id": "BIGINT", "amount": "DOUBLE", "region": "VARCHAR"},
    ("prod", "main", "vault"): {"pan": "VARCHAR", "note": "VARCHAR"},  # analyst sees none: pan denied, note unlisted
}


def cases(name: str) -> list[tuple[str, str]]:
    lines = [line for line in (FIXTURES / name).read_text().splitlines() if not line.startswith("--")]
    blocks = "\n".join(lines).strip().split("\n\n")
    return [tuple(block.strip().split("\n")) for block in blocks]  # type: ignore[misc]


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("rules")
    (folder / "token.key").write_text("k" * 64)
    (folder / "saferoom.yaml").write_text(POLICY)
    return load_policy(folder / "saferoom.yaml")


def stub_view(table: str) -> exp.Select:
    return exp.select("*").from_(exp.to_identifier(f"view_of_{table}", quoted=True))


def expect(expected: str, run) -> None:
    if expected.startswith("REFUSED: "):
        with pytest.raises(QueryRejected) as caught:
            run()
        assert expected[len("REFUSED: "):] in str(caught.value)
    else:
        assert run() == expected


def stub_context(policy, user: str = "alice", role: str = "analyst") -> Context:
    """The guard's context, with each view shown as (SELECT * FROM view_of_<table>) so fixtures stay readable."""
    return replace(Guard(policy, user, role, DUCKDB, CATALOG).context(), view=lambda table, names: stub_view(table))


def through(rule: str, sql: str, context: Context) -> exp.Expression:
    """``sql`` after the rules up to and including ``rule``, in the guard's order."""
    tree = parse(sql, DUCKDB)
    for each in RULES[: [r.__name__ for r in RULES].index(rule) + 1]:
        tree = each(tree, context)
    return tree


ACTING = {"aggregate_only": ("mo", "marketing")}  # a rule that only some roles meet: who its fixtures act as

SHOWN = {  # what a rule's fixture shows, when not the SQL it makes
    "resolve_tables": lambda tree, context: ", ".join(context.touched.tables) or "(none)",
}


@pytest.mark.parametrize("rule, sql, expected", [(r.__name__, *case) for r in RULES for case in cases(f"{r.__name__}.sql")])
def test_rule(policy, rule: str, sql: str, expected: str) -> None:
    def run() -> str:
        context = replace(stub_context(policy, *ACTING.get(rule, ("alice", "analyst"))), text=sql)
        tree = through(rule, sql, context)
        return SHOWN[rule](tree, context) if rule in SHOWN else tree.sql("duckdb")

    expect(expected, run)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.__name__)
def test_rule_docstring_examples_run(rule) -> None:
    module = importlib.import_module(rule.__module__)
    assert module.__doc__ and ">>> " in module.__doc__, f"{module.__name__} shows no example"
    failed, attempted = doctest.testmod(module, report=True, optionflags=doctest.ELLIPSIS)
    assert attempted and not failed


@pytest.mark.parametrize("case, expected", cases("build_view.sql"))
def test_build_view(policy, case: str, expected: str) -> None:
    role, user, table = case.split()
    view = build_view(policy, role, policy.user(user).attributes, policy.tables[table], CATALOG[tuple(table.split(".")[:1] + ["main"] + table.split(".")[1:])], DUCKDB)
    assert view.sql("duckdb") == expected


def test_rewrites_are_cached_and_stable(policy) -> None:
    guard = Guard(policy, "alice", "analyst", DUCKDB, CATALOG)
    first = guard.rewrite("select region, sum(amount) from orders group by 1")
    assert guard.rewrite("select region, sum(amount) from orders group by 1") is first
    assert first.tables == ("prod.orders",)
    assert "__saferoom_t.region = 'EU'" in first.sql


def test_views_are_rendered_once_and_spliced_whole(policy) -> None:
    guard = Guard(policy, "alice", "analyst", DUCKDB, CATALOG)
    guarded = guard.rewrite("select * from cards c join cards d using (card_id)")
    view = build_view(policy, "analyst", {"region": "EU"}, policy.tables["prod.cards"], CATALOG[("prod", "main", "cards")], DUCKDB)
    assert guarded.sql.count(f"({view.sql('duckdb')})") == 2
    assert guard.view("prod.cards") is not guard.view("prod.cards")


@pytest.mark.parametrize("sql, kept", [
    ("select region, sum(amount) from orders group by 1", {"region", "amount"}),
    ("select count(*) from orders", {"order_id"}),
    ("select * from orders", None),
    ("select o from orders o", None),
    ("select count(o.*) from orders o", None),
    ("select * from orders natural join cards", None),
    ("select o.region from orders o join cards c using (card_id)", {"region"}),
    # a star keeps whole only the tables of its own SELECT
    ("select region from orders where exists (select * from cards)", {"region"}),
    ("with c as (select * from cards) select o.region from orders o, c", {"region"}),
    ("select o.*, c.card_id from orders o join cards c on true", None),
    ("select c.* from orders o join cards c on true", {"order_id"}),
    ("select * from (select amount from orders) s", {"amount"}),
    ("select s.* from (select amount from orders) s", {"amount"}),
    # `o.*` naming no source of its own SELECT expands over an outer table, whole: nothing may be cut
    ("select l.* from orders o, lateral (select o.*) l", None),
    ("select l.* from orders o join lateral (select o.* exclude (amount)) l on true", None),
    ("select (select concat(*columns(o.*))) from orders o", None),
    # PIVOT groups by every column it does not name
    ("select * from (pivot orders on region in ('EU') using sum(amount))", None),
])
def test_views_are_cut_to_named_columns(policy, sql: str, kept: set[str] | None) -> None:
    guard = Guard(policy, "ivan", "investigator", DUCKDB, CATALOG)
    guarded = guard.rewrite(sql)
    shown = {c for c in CATALOG[("prod", "main", "orders")] if f'AS "{c}"' in guarded.sql.split("FROM \"prod\".\"main\".\"orders\"")[0]}
    assert shown == (kept if kept is not None else {"order_id", "amount", "region"})


@pytest.mark.parametrize(("sql", "error", "message"), [
    ("selec 1", UsageError, "not valid SQL: Invalid expression / Unexpected token at line 1, column 7."),
    ("select region,\n  count(* from orders", UsageError, "at line 2"),
    ("select 'unterminated", UsageError, "an unclosed quote"),
    (" \n ", UsageError, "the query is empty"),
    ("select 1; select 2", QueryRejected, "exactly one statement"),
    ("select " + "(" * 5000 + "1" + ")" * 5000, QueryRejected, "nested too deeply"),
])
def test_parse_tells_a_mistake_from_a_refusal(sql: str, error: type[Exception], message: str) -> None:
    """SQL that is not SQL is the caller's mistake (exit 2, HTTP 400); SQL the guard will not check is refused."""
    with pytest.raises(error) as caught:
        parse(sql, DUCKDB)
    assert type(caught.value) is error and message in str(caught.value)


def test_the_audit_records_every_column_of_a_table_a_star_expands(policy) -> None:
    guard = Guard(policy, "ivan", "investigator", DUCKDB, CATALOG)
    reached = set(guard.rewrite("select c.*, o.region from orders o join cards c on true").columns)
    assert {("prod.cards", c) for c in ("card_id", "customer_id", "pan")} <= reached
    assert ("prod.orders", "region") in reached and ("prod.orders", "amount") not in reached


@pytest.mark.parametrize("sql, expected", cases("bare_tables.sql"))
def test_a_table_its_view_would_equal_is_read_bare(policy, sql: str, expected: str) -> None:
    guard = Guard(policy, "ivan", "investigator", DUCKDB, CATALOG, frozenset(CATALOG))

    def run() -> str:
        context = replace(guard.context(sql), view=lambda table, names: stub_view(table))
        return through(RULES[-1].__name__, sql, context).sql("duckdb")

    expect(expected, run)


def test_a_table_is_read_bare_only_when_the_catalog_proves_its_columns_fixed(policy) -> None:
    """Without the engine's word that the columns cannot change (a live PostgreSQL table can gain one), or for
    a role the view shows less to, the table stays a view."""
    sql = "SELECT order_id, amount FROM orders"
    assert '"prod"."main"."orders" AS orders' in Guard(policy, "ivan", "investigator", DUCKDB, CATALOG, frozenset(CATALOG)).rewrite(sql).sql
    for guard in (Guard(policy, "ivan", "investigator", DUCKDB, CATALOG),
                  Guard(policy, "alice", "analyst", DUCKDB, CATALOG, frozenset(CATALOG))):
        assert "__saferoom_t" in guard.rewrite(sql).sql
    moved = {**CATALOG, ("prod", "main", "orders"): {"amount": "DOUBLE", "order_id": "BIGINT", "region": "VARCHAR"}}
    assert "__saferoom_t" in Guard(policy, "ivan", "investigator", DUCKDB, moved, frozenset(moved)).rewrite(sql).sql
