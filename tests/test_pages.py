"""Results kept for the web page: paged from the gateway, readable by their owner only, bounded, never left behind."""

from __future__ import annotations

import json

import httpx
import pytest

import saferoom
from saferoom.server.pages import Pages
from saferoom.server.streams import Outcome
from tests.conftest import CANARY_NAME, HIDDEN_ORDER_ID
from tests.gateway_helpers import RITA, Server, eventually, free_port, gateway_policy, serving

ORDERED = "select order_id, amount from prod.orders order by order_id"


@pytest.fixture(scope="module")
def server(room, tmp_path_factory):
    """The suite's gateway, and rita, who holds two roles."""
    yield from serving(room, tmp_path_factory, "pages", users=RITA)


def page_query(server, token: str, sql: str, **extra) -> dict:
    response = httpx.post(f"{server.url}/v1/query", json={"sql": sql, "format": "page", **extra},
                          headers={"Authorization": f"Bearer {token}"}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def get_page(server, token: str, result: str, **params) -> httpx.Response:
    return httpx.get(f"{server.url}/v1/results/{result}", params=params, headers={"Authorization": f"Bearer {token}"})


def kept_files(server) -> list[str]:
    return sorted(p.name for p in (server.state / "results").iterdir())


def test_pages_are_the_rows_of_the_whole_result_in_order(server) -> None:
    token = server.token("alice")
    whole = httpx.post(f"{server.url}/v1/query", json={"sql": ORDERED, "format": "json"},
                       headers={"Authorization": f"Bearer {token}"}).json()["rows"]
    first = page_query(server, token, ORDERED, page_size=50)
    assert first["rows"] == whole[:50] and first["columns"] == ["order_id", "amount"]
    assert first["kinds"] == ["number", "number"] and first["status"]["rows"] == len(whole) == first["result"]["rows"]
    assert "filtered for role analyst" in first["status"]["notices"][0]  # the same notices as any result
    assert first["decision"]["columns"][0]["sources"][0]["action"] == "allow"
    second = get_page(server, token, first["result"]["id"], offset=100, limit=100).json()
    assert second["rows"] == whole[100:200] and second["total"] == len(whole) and second["offset"] == 100
    tail = get_page(server, token, first["result"]["id"], offset=len(whole) - 3, limit=100).json()
    assert tail["rows"] == whole[-3:]
    assert all(row[0] != HIDDEN_ORDER_ID for row in whole)  # kept rows are the guarded rows


def test_only_the_user_and_role_that_ran_it_can_read_a_kept_result(server) -> None:
    result = page_query(server, server.token("rita"), ORDERED)["result"]["id"]
    assert get_page(server, server.token("rita"), result).status_code == 200
    assert get_page(server, server.token("alice"), result).status_code == 404  # not 403: no hint that it exists
    other_role = get_page(server, server.token("rita"), result, role="security")
    assert other_role.status_code == 404, "a result run as analyst is not readable as security"
    assert get_page(server, "sr_000000000000_" + "A" * 43, result).status_code == 401


def test_page_bounds_are_checked(server) -> None:
    token = server.token("alice")
    result = page_query(server, token, ORDERED)["result"]["id"]
    for params in ({"limit": 0}, {"limit": 1001}, {"offset": -1}):
        response = get_page(server, token, result, **params)
        assert response.status_code == 422 and response.json()["error"]["type"] == "UsageError"
    too_big = httpx.post(f"{server.url}/v1/query", json={"sql": ORDERED, "format": "page", "page_size": 5000},
                         headers={"Authorization": f"Bearer {token}"})
    assert too_big.status_code == 422
    assert get_page(server, token, "../../audit").status_code == 404


def test_each_user_keeps_their_latest_three_results(server) -> None:
    token = server.token("lee")
    ids = [page_query(server, token, f"select order_id from prod.orders limit {n}")["result"]["id"] for n in range(1, 5)]
    assert get_page(server, token, ids[0]).status_code == 404
    assert all(get_page(server, token, i).status_code == 200 for i in ids[1:])
    assert httpx.request("DELETE", f"{server.url}/v1/results", headers={"Authorization": f"Bearer {token}"}).json() == {"dropped": 3}
    assert all(get_page(server, token, i).status_code == 404 for i in ids[1:])


def test_a_kept_result_is_audited_as_a_result_and_counted(server) -> None:
    response = httpx.post(f"{server.url}/v1/query", json={"sql": "select order_id from prod.orders limit 10", "format": "page"},
                          headers={"Authorization": f"Bearer {server.token('sam')}"})
    body = response.json()
    assert body["status"]["rows"] == 5 and body["status"]["truncated"] is True  # the role's max_rows holds here too
    assert any("cut at max_rows=5" in n for n in body["status"]["notices"])

    def record() -> dict | None:  # the result record joins the next group commit: it may land a moment later
        records = [json.loads(line) for line in (server.state / "audit.log").read_text().splitlines()]
        return next((r for r in records if r.get("event") == "result"
                     and r["request_id"] == response.headers["x-saferoom-request"]), None)

    eventually(record, "the result record")
    assert record()["rows"] == 5 and record()["bytes"] > 0 and record()["status"] == "completed" and record()["truncated"]


def test_a_failed_query_keeps_nothing(server) -> None:
    token = server.token("lee")  # timeout_seconds: 1
    before = kept_files(server)
    response = httpx.post(f"{server.url}/v1/query", headers={"Authorization": f"Bearer {token}"}, timeout=60,
                          json={"sql": "select count(*) from prod.orders a, prod.orders b, prod.orders c", "format": "page"})
    assert response.status_code == 429 and "timeout_seconds" in response.json()["error"]["message"]
    assert kept_files(server) == before


def test_a_full_disk_while_keeping_a_result_keeps_nothing_and_says_so(room, tmp_path) -> None:
    full = Server(gateway_policy(room, tmp_path), tmp_path / "state", free_port(), tmp_path / "server.log",
                  max_file_bytes=1_000_000).start()
    try:
        token = full.token("alice")
        body = page_query(full, token, "select o1.order_id, o2.amount from prod.orders o1, prod.orders o2 limit 90000")
        assert body["status"]["error"]["type"] == "LimitExceeded" and body["result"] is None and body["rows"] == []
        assert "could not keep this result" in body["status"]["error"]["message"]
        assert kept_files(full) == []
        assert page_query(full, token, "select 1 as one")["rows"] == [[1]]  # and the gateway goes on
    finally:
        full.stop()


def test_a_restarted_gateway_keeps_no_earlier_result(server) -> None:
    token = server.token("alice")
    result = page_query(server, token, ORDERED)["result"]["id"]
    assert kept_files(server)
    server.kill9()  # no clean-up at all
    assert kept_files(server), "the killed gateway left its files"
    server.start()
    assert kept_files(server) == []
    assert get_page(server, token, result).status_code == 404


def test_a_result_past_the_size_cap_is_kept_in_part_and_says_so(room, tmp_path) -> None:
    pages = Pages(tmp_path / "results", max_bytes=20_000)
    with saferoom.connect(room.policy, user="alice") as session:
        sql = "select o1.order_id, o2.amount from prod.orders o1, prod.orders o2 limit 200000"
        decision = session.explain(sql)
        result = session.query(sql)
        outcome = Outcome()
        body = json.loads(b"".join(pages.body(result, outcome, decision, "policy", 10)))
    kept = body["result"]["rows"]
    assert 0 < kept < 200_000 and body["status"]["rows"] == kept == outcome.rows
    assert any(f"keeps only the first {kept:,} rows" in n for n in body["status"]["notices"])
    assert len(body["rows"]) == 10 and body["status"]["truncated"] and outcome.cut
    files = list((tmp_path / "results").iterdir())
    assert len(files) == 1 and oct(files[0].stat().st_mode & 0o777) == "0o600"
    assert files[0].stat().st_size < 20_000 + 4096  # the cap cuts inside a batch (a batch here is 65,536 rows)
    assert outcome.bytes >= files[0].stat().st_size
    pages.close()
    assert not (tmp_path / "results").exists()


def test_tokenized_values_are_kept_tokenized(server, room) -> None:
    token = server.token("alice")
    body = page_query(server, token, "select name from prod.customers")
    rows = get_page(server, token, body["result"]["id"], limit=1000).json()["rows"]
    while len(rows) < body["status"]["rows"]:
        rows += get_page(server, token, body["result"]["id"], offset=len(rows), limit=1000).json()["rows"]
    assert [CANARY_NAME] not in rows and room.token(CANARY_NAME) in {r[0] for r in rows}
    raw = b"".join(p.read_bytes() for p in (server.state / "results").iterdir())
    assert CANARY_NAME.encode() not in raw  # nor on the gateway's disk


def test_the_page_serves_only_its_own_files(server) -> None:
    for name in ("app.js", "editor.js", "app.css", "editor.LICENSES.txt"):
        response = httpx.get(f"{server.url}/static/{name}")
        assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    for name in ("index.html", "..%2Fapp.py", "pages.py", "%2e%2e/gateway.py"):
        assert httpx.get(f"{server.url}/static/{name}").status_code == 404
    licences = httpx.get(f"{server.url}/static/editor.LICENSES.txt").text
    assert "@codemirror/view" in licences and "MIT License" in licences


def test_the_bundled_editor_is_the_one_its_recipe_names() -> None:
    """editor.js is built from web/editor (``npm ci && npm run build``): its licence list names the same versions."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    wanted = json.loads((root / "web/editor/package.json").read_text())["dependencies"]
    licences = (root / "saferoom/server/static/editor.LICENSES.txt").read_text()
    for name, version in wanted.items():
        assert f"{name} {version} (MIT)" in licences


def test_a_policy_change_makes_kept_results_unreadable(room, tmp_path_factory) -> None:
    gateway = serving(room, tmp_path_factory, "reload")
    server = next(gateway)
    try:
        token = server.token("alice")
        result = page_query(server, token, "select name from prod.customers")["result"]["id"]
        assert get_page(server, token, result, offset=100).status_code == 200
        server.policy.write_text(server.policy.read_text().replace("pii: tokenize", "pii: deny", 1))
        before = httpx.get(f"{server.url}/healthz").json()["policy"]
        server.hup()
        eventually(lambda: httpx.get(f"{server.url}/healthz").json()["policy"] != before, "the reload")
        gone = get_page(server, token, result, offset=100)
        assert gone.status_code == 404 and "policy" in gone.json()["error"]["message"]
    finally:
        next(gateway, None)


def test_a_client_that_leaves_while_its_result_is_kept_stops_it(server) -> None:
    """A kept result is made whole before the first byte. The query never ends by itself, so the client's
    leaving (its read timeout) comes first however fast the machine is, and must stop it."""
    token = server.token("ivan")
    sql = "with recursive r(n) as (select 1 union all select n + 1 from r) select count(*) as n from r"
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/query", json={"sql": sql, "format": "page"},
                   headers={"Authorization": f"Bearer {token}"}, timeout=1.5)

    def ended() -> dict | None:
        records = [json.loads(line) for line in (server.state / "audit.log").read_text().splitlines()]
        asked = [r["request_id"] for r in records if r.get("event") == "decision" and r.get("query") == sql]
        return next((r for r in records if r.get("event") == "result" and r["request_id"] in asked), None)

    eventually(ended, "the kept result's record")
    assert ended()["status"] == "cancelled"
    assert not any(p.stat().st_size > 1 << 20 for p in (server.state / "results").iterdir())  # nothing large kept


def test_a_page_of_wide_rows_holds_fewer_of_them(server) -> None:
    token = server.token("alice")
    body = page_query(server, token, "select repeat('x', 100000) as s from prod.orders limit 1000", page_size=1000)
    assert body["status"]["rows"] == 1000 and 1 <= len(body["rows"]) < 100  # about 4 MB, not 100 MB
    later = get_page(server, token, body["result"]["id"], offset=len(body["rows"]), limit=1000).json()
    assert 1 <= len(later["rows"]) < 100 and later["offset"] == len(body["rows"])


def test_not_a_number_is_sent_as_valid_json(server) -> None:
    token = server.token("alice")
    sql = "select 'nan'::double as a, 'inf'::double as b, '-inf'::double as c, 1.5::double as d"
    for kind in ("page", "json"):
        response = httpx.post(f"{server.url}/v1/query", json={"sql": sql, "format": kind},
                              headers={"Authorization": f"Bearer {token}"})
        strict = json.loads(response.text, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
        assert strict["rows"] == [["nan", "inf", "-inf", 1.5]]


def test_a_token_bound_to_a_role_forgets_only_that_roles_results(server) -> None:
    analyst, security = server.token("rita"), server.token("rita", "-r", "security")
    kept = page_query(server, analyst, ORDERED)["result"]["id"]
    page_query(server, security, "select 1 as one")
    dropped = httpx.request("DELETE", f"{server.url}/v1/results", headers={"Authorization": f"Bearer {security}"}).json()
    assert dropped["dropped"] >= 1
    assert get_page(server, analyst, kept).status_code == 200


def test_all_users_kept_results_stay_within_the_folders_budget(room, tmp_path) -> None:
    pages = Pages(tmp_path / "results", max_total=1)  # every result is over it: only the newest stays
    kept = []
    with saferoom.connect(room.policy, user="alice") as session:
        for n in (1, 2, 3):
            sql = f"select order_id from prod.orders limit {n}"
            body = json.loads(b"".join(pages.body(session.query(sql), Outcome(), session.explain(sql), "p", 10)))
            kept.append(body["result"]["id"])
    assert len(list((tmp_path / "results").iterdir())) == 1
    assert pages.page("alice", "analyst", "p", kept[-1], 0, 10)["total"] == 3
    with pytest.raises(saferoom.NotFound):
        pages.page("alice", "analyst", "p", kept[0], 0, 10)
    with pytest.raises(saferoom.NotFound):
        pages.page("alice", "analyst", "another policy", kept[-1], 0, 10)
    pages.close()
