"""Access on request: a column or a role granted for a while works at once, and stops by itself at its time,
within a session that stays open; the guard's refusals name the command that asks for what was refused."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

import saferoom
from saferoom.errors import QueryRejected
from tests.gateway_helpers import eventually
from tests.requests_helpers import start

EMAILS = "select email from prod.people order by id limit 3"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    running = start(tmp_path_factory.mktemp("access"))
    yield running
    running.server.stop()


def test_a_refused_column_names_the_command_that_asks_for_it(gateway) -> None:
    refused = gateway.call("ana", "POST", "/v1/query", json={"sql": EMAILS, "format": "json"})
    assert refused.status_code == 403
    assert 'saferoom access request --column prod.people.email --for 4h --reason "..."' in refused.json()["error"]["message"]


def grant_in_force(gateway, session, seconds: int) -> tuple[dict, datetime] | None:
    """Ask for the column for ``seconds``, approve, and query at once; None when the machine was too slow to
    query before the grant's time ran out (the caller asks again for longer: the pace is the machine's)."""
    asked = gateway.ok("ana", "POST", "/v1/requests/access",
                       json={"column": "prod.people.email", "duration": f"{seconds}s", "reason": "fraud case 1142"})
    assert asked["state"] == "submitted"
    granted = gateway.review("boss", asked).json()
    assert granted["state"] == "approved" and granted["expires"]
    expires = datetime.fromisoformat(granted["expires"])
    try:
        assert session.query(EMAILS).to_arrow().column("email").to_pylist()[0] == "person0@example.com"
    except QueryRejected:
        assert datetime.now(UTC) >= expires, "refused while the grant was in force"
        return None
    return granted, expires


def test_a_column_grant_works_at_once_and_ends_by_itself_mid_session(gateway) -> None:
    with saferoom.connect(url=gateway.server.url, token=gateway.tokens["ana"]) as session:
        with pytest.raises(QueryRejected):
            session.query(EMAILS)
        in_force = None
        for seconds in (8, 30, 120, 600):
            in_force = in_force or grant_in_force(gateway, session, seconds)
        assert in_force is not None
        granted, expires = in_force

        def refused() -> bool:
            asked = datetime.now(UTC)  # the answer was decided after this; a success asked after expiry outlived it
            try:
                session.query(EMAILS)
            except QueryRejected:
                return True
            assert asked < expires, "the grant outlived its time"
            return False

        eventually(refused, "the grant ends at its time")
        assert datetime.now(UTC) >= expires  # it never ended early either
    eventually(lambda: gateway.ok("ana", "GET", f"/v1/requests/{granted['id']}")["state"] == "expired", "marked expired")
    trail = [r for r in gateway.ok("boss", "GET", "/v1/audit", params={"limit": 1000}) if r.get("request_id") == granted["id"]]
    assert [r["action"] for r in trail] == ["create", "state", "state", "grant", "state"]
    assert trail[-1]["state"] == "expired" and trail[2]["user"] == "boss"


def test_a_role_grant_through_the_command_line(gateway) -> None:
    before = gateway.call("ana", "GET", "/v1/whoami", params={"role": "investigator"})
    assert before.status_code == 403
    assert 'saferoom access request --role investigator --for 4h --reason "..."' in before.json()["error"]["message"]
    done = gateway.cli("ana", "access", "request", "--role", "investigator", "--for", "1h", "--reason", "case 7", "--json")
    assert done.returncode == 0, done.stderr
    asked = json.loads(done.stdout)
    assert gateway.cli("rev1", "requests", "approve", asked["id"]).returncode != 0  # not an access approver: not even shown
    approved = gateway.cli("boss", "requests", "approve", asked["id"], "--comment", "ok for the case")
    assert approved.returncode == 0, approved.stderr
    me = gateway.ok("ana", "GET", "/v1/whoami", params={"role": "investigator"})
    assert me["role"] == "investigator" and "investigator" in me["roles"]
    rows = gateway.ok("ana", "POST", "/v1/query", json={"sql": EMAILS, "role": "investigator", "format": "json"})
    assert "person0@example.com" in json.dumps(rows)
    assert gateway.call("bob", "GET", "/v1/whoami", params={"role": "investigator"}).status_code == 403  # ana's grant only


@pytest.mark.parametrize("body", [
    {"role": "security", "duration": "30d"},  # longer than reviews.access.max_duration
    {"role": "nosuchrole", "duration": "1h"},
    {"column": "prod.people.nosuch", "duration": "1h"},
    {"column": "prod.people.email", "duration": "1h", "action": "deny"},
    {"role": "analyst", "duration": "1h"},  # already held
    {"role": "investigator", "column": "prod.people.email", "duration": "1h"},
    {"role": "investigator", "duration": "0s"},
])
def test_access_requests_outside_the_rules_are_refused(gateway, body) -> None:
    assert gateway.call("ana", "POST", "/v1/requests/access", json={**body, "reason": "x"}).status_code == 409


def test_nobody_approves_their_own_access(gateway) -> None:
    asked = gateway.ok("boss", "POST", "/v1/requests/access", json={"role": "investigator", "duration": "1h", "reason": "me"})
    assert gateway.review("boss", asked).status_code == 409
