"""The request engine as a library: its state machine, its reviewer rules, and fail-closed recording."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from saferoom.audit import AuditLog
from saferoom.errors import AuditError, NotFound, PolicyError, RequestRefused
from saferoom.identity import Identity
from saferoom.policy import parse_policy
from saferoom.requests import Requests, State, Verdict
from saferoom.requests.model import MOVES, Kind, Request
from saferoom.requests.release import safe_name
from tests.requests_helpers import POLICY


def who(user: str, role: str | None = None) -> Identity:
    return Identity(user, role, "token")


def make(folder: Path, text: str = POLICY) -> tuple[Requests, AuditLog]:
    policy = parse_policy(text.format(database=folder / "prod.duckdb"), folder / "saferoom.yaml")
    audit = AuditLog(folder / "state")
    return Requests(folder / "state" / "requests", audit, lambda: policy, outbox=folder / "outbox"), audit


@pytest.fixture()
def engine(tmp_path: Path):
    requests, audit = make(tmp_path)
    yield requests, audit
    requests.close()
    audit.close()


@pytest.mark.parametrize(("start", "to"), [(a, b) for a, b in itertools.product(State, State) if b not in MOVES.get(a, ())])
def test_a_move_not_in_the_machine_is_refused(start: State, to: State) -> None:
    request = Request("rq_" + "0" * 20, Kind.RELEASE, "ana", "why", "now", state=start)
    with pytest.raises(RequestRefused):
        request.move(to, "later")
    assert request.state is start


def test_no_audit_record_no_change(tmp_path: Path) -> None:
    requests, audit = make(tmp_path)
    asked = requests.packages.request(who("ana"), "zeta", "for models")
    audit.close()
    with pytest.raises(AuditError):
        requests.engine.review(asked.id, who("boss"), Verdict.APPROVE, {})
    kept = requests.engine.store.get(asked.id)
    assert kept is not None and kept.state is State.SUBMITTED and kept.reviews == []
    assert not requests.packages.file.exists()  # nothing approved, nothing for the next sync
    requests.close()


def test_a_token_bound_to_a_role_reviews_as_that_role_only(engine) -> None:
    requests, _ = engine
    asked = requests.release.request(who("ana"), "a table")
    requests.release.upload(asked.id, who("ana"), "t.csv", [b"a,b\n", b"1,2\n"])
    requests.release.submit(asked.id, who("ana"))
    seen = requests.engine.show(asked.id, who("ana")).hashes
    with pytest.raises(NotFound):  # rev3 holds reviewer too, but this token acts as analyst: not a reviewer now
        requests.engine.review(asked.id, who("rev3", "analyst"), Verdict.APPROVE, seen)
    assert requests.engine.review(asked.id, who("rev3", "reviewer"), Verdict.APPROVE, seen).state is State.SUBMITTED


def test_review_rules_name_roles_the_policy_has(tmp_path: Path) -> None:
    text = POLICY.format(database=tmp_path / "x.duckdb").replace("release: {roles: [reviewer]}", "release: {roles: [nobody]}")
    with pytest.raises(PolicyError, match="reviews.release` names role `nobody`"):
        parse_policy(text, tmp_path / "saferoom.yaml")


def test_a_kind_without_reviewers_waits(tmp_path: Path) -> None:
    requests, audit = make(tmp_path, POLICY.replace("  packages: {{roles: [security]}}\n", ""))
    try:
        asked = requests.packages.request(who("ana"), "zeta", "x")
        with pytest.raises(NotFound):  # boss reviews no package requests: not shown to him
            requests.engine.review(asked.id, who("boss"), Verdict.APPROVE, {})
    finally:
        requests.close()
        audit.close()


@pytest.mark.parametrize("name", ["report.csv", "Chart (1).png", "model_v2.tar.gz", "a b.txt"])
def test_plain_names_are_taken(name: str) -> None:
    assert safe_name(name) == name


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "a\\b", ".env", "x\x00y", "~root", "-rf", "a\nb", "é.csv"])
def test_other_names_are_refused(name: str) -> None:
    with pytest.raises(RequestRefused):
        safe_name(name)


def test_a_grant_approved_through_another_gateway_on_the_folder_is_taken_in_by_the_sweep(tmp_path: Path) -> None:
    first, audit = make(tmp_path)
    policy = parse_policy(POLICY.format(database=tmp_path / "prod.duckdb"), tmp_path / "saferoom.yaml")
    other_audit = AuditLog(tmp_path / "other-state")
    second = Requests(tmp_path / "state" / "requests", other_audit, lambda: policy, outbox=tmp_path / "outbox")
    try:
        asked = first.access.request(who("ana"), "a fraud case", "1h", column="prod.people.email")
        first.engine.review(asked.id, who("boss"), Verdict.APPROVE, {})
        assert [g.id for g in first.access.grants("ana")] == [asked.id]
        assert second.access.grants("ana") == []  # not yet seen by the other gateway
        second.sweep()
        assert [g.id for g in second.access.grants("ana")] == [asked.id]
    finally:
        for opened in (first, second, audit, other_audit):
            opened.close()
