"""The decision record: its dictionary form, the logs written before it, and the docs that list its fields."""

from __future__ import annotations

import dataclasses
import doctest
import hashlib
import importlib
import re
import shutil
import typing
from pathlib import Path

import pytest

import saferoom
from saferoom.audit import AuditKey, AuditLog, read, verify
from saferoom.decision import ColumnInfo, Decision, OutputColumn, Refusal, TableInfo, refused
from saferoom.errors import LimitExceeded, QueryRejected
from saferoom.secrets import Secret

DOCS = Path(__file__).parent.parent / "docs"
FIRST_FORMAT = Path(__file__).parent / "fixtures" / "audit_v0"  # written by the gateway before the record existed
FIRST_FORMAT_KEY = "fixture-audit-key-not-a-secret-0123456789abcdef"  # the sealed fixture's key; a test value only


def test_outputs_docstring_examples_run() -> None:
    module = importlib.import_module("saferoom.guard.outputs")  # (the guard's package exports its function)
    failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert attempted and not failed


@pytest.mark.parametrize("sql", ["select name, zip, count(*) as n from customers group by all", "select * from cards",
                                 "select region from orders union all select segment from customers", "select pan from cards"])
def test_a_decision_round_trips_through_its_dictionary(alice: saferoom.Session, sql: str) -> None:
    decision = alice.explain(sql)
    assert Decision.from_dict(decision.to_dict()) == decision


def test_each_output_column_carries_its_sources_action_and_reason(alice: saferoom.Session) -> None:
    decision = alice.explain("select cast(name as varchar) as who, zip, amount from customers join orders using (customer_id)")
    sources = {c.name: [(s.name, s.action, s.reason) for s in c.sources] for c in decision.columns}
    assert sources == {"who": [("name", "tokenize", "tag pii (reidentification)")],
                       "zip": [("zip", "generalize", "tag quasi (reidentification)")],
                       "amount": [("amount", "allow", "untagged (public)")]}
    filters = {t.name: t.row_filter for t in decision.tables}
    assert filters == {"prod.customers": None, "prod.orders": "region = {user.region}"}
    assert decision.tags == ("key", "pii", "quasi") and decision.allowed and decision.refusal is None


def test_before_the_engine_a_star_reads_every_visible_column(alice: saferoom.Session) -> None:
    """The gateway records the decision before the engine runs the query: a `*` stays one column."""
    decision = alice.decide("select * from cards", alice.guard("select * from cards"))
    assert [(c.name, c.type) for c in decision.columns] == [("*", None)]
    assert [s.name for s in decision.columns[0].sources] == ["card_id", "customer_id"]  # pan is denied
    assert {c.name: c.action for c in decision.tables[0].columns}["pan"] == "deny"


def test_a_refusal_keeps_the_errors_fields_and_bounds_the_query() -> None:
    error = QueryRejected("no", column="prod.cards.pan", tag="pci", threats=["card-theft"], allowed_roles=["investigator"])
    sql = "select " + "1, " * 5000 + "1"
    decision = refused("alice", "analyst", sql, error, limit=1024)
    assert decision.refusal == Refusal("QueryRejected", "no", "prod.cards.pan", "pci", ("card-theft",), ("investigator",))
    assert len(decision.query) == 4096 and sql.startswith(decision.query)
    assert (decision.query_bytes, decision.query_sha256) == (len(sql), hashlib.sha256(sql.encode()).hexdigest())
    limited = refused("lee", "limited", "select 1", LimitExceeded("too many"))
    assert limited.refusal == Refusal("LimitExceeded", "too many") and limited.query_bytes is None


def _first_format(tmp_path: Path, kind: str) -> Path:
    folder = tmp_path / kind
    shutil.copytree(FIRST_FORMAT / kind, folder)
    return folder


def test_logs_written_before_the_record_still_verify(tmp_path: Path) -> None:
    plain, sealed = _first_format(tmp_path, "plain"), _first_format(tmp_path, "sealed")
    key = AuditKey(Secret(FIRST_FORMAT_KEY))
    assert verify(plain).ok
    checked = verify(sealed, key=key)
    assert checked.ok and checked.sealed == checked.records == 8, checked
    assert verify(sealed, public_key=key.public, checkpoints=sealed / "audit.log").ok
    assert any("reason" in r for r in read(sealed))  # the first format, as it was written


def test_a_log_written_before_the_record_goes_on_with_it(tmp_path: Path) -> None:
    sealed = _first_format(tmp_path, "sealed")
    key = AuditKey(Secret(FIRST_FORMAT_KEY))
    log = AuditLog(sealed, key=key)
    try:
        record = refused("alice", "analyst", "select pan from cards", QueryRejected("denied", column="prod.cards.pan"))
        log.append({"event": "decision", "request_id": "r", "time": "t", "method": "token", **record.to_dict()})
    finally:
        log.close()
    assert verify(sealed, key=key).ok
    newest = [r for r in read(sealed) if r.get("event") == "decision"][-1]
    assert Decision.from_dict(newest).refusal == Refusal("QueryRejected", "denied", "prod.cards.pan")


def test_decisions_of_the_first_format_are_read() -> None:
    decisions = [Decision.from_dict(r) for r in read(FIRST_FORMAT / "plain") if r.get("event") == "decision"]
    assert [(d.user, d.decision) for d in decisions] == [("alice", "allowed"), ("alice", "allowed"), ("alice", "refused"),
                                                         ("ivan", "allowed")]
    first = decisions[0]
    assert first.query == "select name, zip from customers" and first.tags == ("pii", "quasi")
    assert [(t.name, [(c.name, c.action) for c in t.columns]) for t in first.tables] == \
        [("prod.customers", [("name", "tokenize"), ("zip", "generalize")])]
    assert decisions[2].refusal is not None and "card-theft" in decisions[2].refusal.message


def _documented(text: str) -> dict[str, list[str]]:
    """Each `| `Class` field | … |` table of the docs: the class and the fields its rows name, in order."""
    tables: dict[str, list[str]] = {}
    for block in re.split(r"\n\s*\n", text):
        head = re.match(r"\| `(\w+)` field \|", block)
        if head:
            tables[head.group(1)] = re.findall(r"^\| `(\w+)` \|", block, flags=re.MULTILINE)
    return tables


def _record_classes() -> dict[str, type]:
    """Decision and every dataclass its fields hold, however deep."""
    found: dict[str, type] = {}
    pending: list[type] = [Decision]
    while pending:
        cls = pending.pop()
        found[cls.__name__] = cls
        for hint in typing.get_type_hints(cls).values():
            for inner in [hint, *typing.get_args(hint)]:
                if dataclasses.is_dataclass(inner) and isinstance(inner, type) and inner.__name__ not in found:
                    pending.append(inner)
    return found


def test_the_docs_list_exactly_the_records_fields() -> None:
    classes = _record_classes()
    assert set(classes) == {"Decision", "Refusal", "TableInfo", "OutputColumn", "ColumnInfo"}
    documented = _documented((DOCS / "python.md").read_text())
    assert {name: [f.name for f in dataclasses.fields(cls)] for name, cls in classes.items()} == documented
    gateway = (DOCS / "gateway.md").read_text()
    assert gateway.count("python.md#the-decision-record") >= 3  # the explain and query JSON, and the audit log


def test_the_record_types_are_the_public_ones() -> None:
    assert (saferoom.Decision, saferoom.Refusal, saferoom.TableInfo, saferoom.OutputColumn, saferoom.ColumnInfo) == \
        (Decision, Refusal, TableInfo, OutputColumn, ColumnInfo)
