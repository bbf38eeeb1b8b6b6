"""The gateway, as a real process on 127.0.0.1: identity, the audit trail, limits, faults."""

from __future__ import annotations

import io
import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import httpx
import pyarrow as pa
import pytest

import saferoom
from saferoom.audit import read, read_head, verify
from saferoom.client import RemoteSession
from saferoom.decision import Decision
from saferoom.server.gateway import QUEUE_SECONDS
from tests.gateway_helpers import (
    CANARY_DB_PASSWORD,
    SERVE,
    Server,
    answers,
    descendants,
    eventually,
    free_port,
    gateway_policy,
    self_signed,
    serving,
    table_gateway,
)


@pytest.fixture(scope="module")
def server(room, tmp_path_factory):
    yield from serving(room, tmp_path_factory, "gateway")


@pytest.fixture(scope="module")
def tokens(server):
    return {user: server.token(user) for user in ("alice", "ivan", "sam", "lee")}


def post(server, token: str | None, sql: str, **extra) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{server.url}/v1/query", json={"sql": sql, **extra}, headers=headers, timeout=30)


def test_health_and_openapi(server) -> None:
    assert httpx.get(f"{server.url}/healthz").json()["status"] == "ok"
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    assert {"/v1/query", "/v1/tables", "/v1/explain", "/v1/whoami", "/v1/audit", "/healthz"} <= set(paths)


def test_serve_says_where_it_listens_and_where_tokens_come_from(server) -> None:
    printed = server.log.read_text()
    assert f"saferoom gateway at {server.url};" in printed and "`saferoom token create`" in printed


def test_bad_tokens_get_401_and_no_data(server, tokens) -> None:
    store_dir = server.state
    expired = server.token("alice", "--ttl", "1s")
    revoked = server.token("alice")
    subprocess.run([sys.executable, "-c", SERVE, "token", "revoke", revoked.split("_")[1], "--state", str(store_dir)], check=True, capture_output=True)
    real_id = tokens["alice"].split("_")[1]
    forged = [f"sr_{real_id}_{'A' * 43}", f"sr_{'0' * 12}_{'B' * 43}", tokens["alice"][:-1] + ("x" if tokens["alice"][-1] != "x" else "y")]
    time.sleep(1.2)
    for token in [None, "", "garbage", "Bearer", expired, revoked, *forged]:
        response = post(server, token, "select * from prod.orders")
        assert response.status_code == 401, (token, response.text)
        body = response.json()
        assert set(body) == {"error"} and body["error"]["type"] == "AuthError"
        assert response.headers["www-authenticate"] == "Bearer"


def test_a_token_cannot_act_as_someone_else(server, tokens) -> None:
    assert post(server, tokens["alice"], "select 1", role="investigator").status_code == 403
    bound = server.token("ivan", "--role", "investigator")
    assert httpx.get(f"{server.url}/v1/whoami", headers={"Authorization": f"Bearer {bound}"}).json()["user"] == "ivan"
    response = httpx.get(f"{server.url}/v1/whoami", params={"user": "ivan"}, headers={"Authorization": f"Bearer {tokens['alice']}"})
    assert response.json()["user"] == "alice"


def test_client_matches_the_embedded_session(server, tokens, alice) -> None:
    with RemoteSession(server.url, tokens["alice"]) as remote:
        sql = "select region, count(*) as n, sum(amount) as s from prod.orders group by 1 order by 1"
        assert remote.query(sql).to_arrow().equals(alice.query(sql).to_arrow())
        tokens_remote = remote.query("select customer_id from prod.cards order by card_id").to_pylist()
        assert tokens_remote == alice.query("select customer_id from prod.cards order by card_id").to_pylist()
        assert [t.name for t in remote.tables()] == [t.name for t in alice.tables()]
        assert remote.explain("select name from prod.customers").columns[0].sources[0].action == "tokenize"
        with pytest.raises(saferoom.QueryRejected) as caught:
            remote.query("select pan from prod.cards").to_arrow()
        assert caught.value.column == "prod.cards.pan" and caught.value.allowed_roles == ("investigator",)
        with pytest.raises(saferoom.QueryRejected, match="not allowed"):
            remote.query("select * from read_csv('/etc/passwd')")
        with pytest.raises(saferoom.UsageError, match="not valid SQL"):  # a typo is the caller's mistake, not a refusal
            remote.query("selec 1")
        assert remote.query("select 1 as x").to_polars().shape == (1, 1)


def test_a_denied_column_is_recorded_refused_with_the_reason(server, tokens) -> None:
    """The guard decides a denied column's refusal before the query runs, so the audit log says refused, and why."""
    sql = "select name from prod.customers"  # role security lists no tags: pii is denied
    response = post(server, tokens["sam"], sql)
    assert response.status_code == 403 and response.json()["error"]["type"] == "QueryRejected"
    records = [r for r in read(server.state) if r.get("query") == sql and r.get("user") == "sam"]
    assert [r["event"] for r in records] == ["decision"], records
    assert records[0]["decision"] == "refused"
    refusal = records[0]["refusal"]
    assert refusal["message"].startswith("column `name` of prod.customers is tagged `pii`")
    assert "Role `security` is denied it" in refusal["message"]
    assert (refusal["type"], refusal["column"], refusal["tag"]) == ("QueryRejected", "prod.customers.name", "pii")
    assert "reason" not in records[0]


def test_the_audit_log_the_json_result_and_explain_carry_one_decision(server, tokens) -> None:
    sql = "select name, zip from prod.customers limit 2"
    answer = post(server, tokens["alice"], sql, format="json")
    sent = Decision.from_dict(answer.json()["decision"])
    request = answer.headers["X-Saferoom-Request"]
    record = next(r for r in read(server.state) if r.get("request_id") == request and r["event"] == "decision")
    assert "reason" not in record and Decision.from_dict(record) == sent  # no constant reason: each column's own
    shaped = [(c.name, [(s.action, s.reason) for s in c.sources]) for c in sent.columns]
    assert shaped == [("name", [("tokenize", "tag pii (reidentification)")]), ("zip", [("generalize", "tag quasi (reidentification)")])]
    explained = httpx.post(f"{server.url}/v1/explain", json={"sql": sql}, headers={"Authorization": f"Bearer {tokens['alice']}"})
    decision = Decision.from_dict(explained.json())
    assert decision.tables == sent.tables and [c.sources for c in decision.columns] == [c.sources for c in sent.columns]
    assert [c.type for c in decision.columns] == ["UUID", "VARCHAR"] and [c.type for c in sent.columns] == [None, None]


def test_formats(server, tokens) -> None:
    sql = "select card_id from prod.cards order by card_id limit 3"
    arrow = post(server, tokens["ivan"], sql)
    assert arrow.headers["content-type"] == "application/vnd.apache.arrow.stream"
    reader = pa.ipc.open_stream(io.BytesIO(arrow.content))
    assert reader.read_all().column(0).to_pylist() == [1, 2, 3]
    as_json = post(server, tokens["ivan"], sql, format="json").json()
    assert as_json["rows"] == [[1], [2], [3]] and as_json["status"]["rows"] == 3
    as_csv = httpx.post(f"{server.url}/v1/query", json={"sql": sql}, headers={"Authorization": f"Bearer {tokens['ivan']}", "Accept": "text/csv"})
    assert as_csv.text.split() == ['"card_id"', "1", "2", "3"]
    assert post(server, tokens["ivan"], sql, format="xml").status_code == 400


def test_audit_endpoint_is_for_audit_roles(server, tokens) -> None:
    assert post(server, tokens["alice"], "select 1").status_code == 200  # at least one record, run alone or not
    denied = httpx.get(f"{server.url}/v1/audit", headers={"Authorization": f"Bearer {tokens['alice']}"})
    assert denied.status_code == 403
    records = httpx.get(f"{server.url}/v1/audit", headers={"Authorization": f"Bearer {tokens['sam']}"}).json()
    assert records and {"seq", "hash", "prev", "event"} <= set(records[-1])


def test_limits(server, tokens) -> None:
    lee = tokens["lee"]
    slow = "select count(*) from prod.orders a, prod.orders b, prod.orders c"
    stopped = post(server, lee, slow)
    assert stopped.status_code == 429 and "timeout_seconds" in stopped.json()["error"]["message"]
    messages: list[str] = []

    def run() -> None:
        messages.append(post(server, lee, slow).json()["error"]["message"])

    # a query waits up to QUEUE_SECONDS for lee's one slot; each holds it for its 1 s timeout, so of six sent at
    # once some run in turn and are stopped, and the rest are refused
    threads = [threading.Thread(target=run) for _ in range(2 * int(QUEUE_SECONDS) + 2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert any("max_concurrent" in m for m in messages) and any("timeout_seconds" in m for m in messages)
    for _ in range(5):
        post(server, lee, "select * from prod.orders")
    over = post(server, lee, "select 1")
    assert over.status_code == 429 and "max_bytes_per_day" in over.json()["error"]["message"]


def test_nothing_secret_in_responses_logs_or_audit(server, tokens, room) -> None:
    bodies = []
    for token in tokens.values():
        for sql in ["select * from prod.customers limit 5", "select pan from prod.cards", "select * from read_csv('x')",
                    "select cast('x' as integer)", "select 1;", "select getenv('HOME')", "select * from prod.cards limit 3"]:
            bodies.append(post(server, token, sql, format="json").text)
        bodies.append(httpx.get(f"{server.url}/v1/tables", headers={"Authorization": f"Bearer {token}"}).text)
        bodies.append(httpx.post(f"{server.url}/v1/explain", json={"sql": "select name, ssn from prod.customers"},
                                 headers={"Authorization": f"Bearer {token}"}).text)
    bodies.append(httpx.get(f"{server.url}/v1/audit", headers={"Authorization": f"Bearer {tokens['sam']}"}).text)
    everything = "\n".join(bodies) + server.log.read_text() + (server.state / "audit.log").read_text()
    assert CANARY_DB_PASSWORD not in everything
    assert room.key not in everything
    for token in tokens.values():
        assert token.split("_", 2)[2] not in everything  # no token secret is ever echoed or logged
    assert "secret_sha256" not in "\n".join(bodies)


def test_audit_chain_verifies_and_detects_tampering(server, tokens, tmp_path: Path) -> None:
    asked = post(server, tokens["alice"], "select count(*) from prod.orders").headers["X-Saferoom-Request"]
    eventually(lambda: any(r.get("event") == "result" and r["request_id"] == asked for r in read(server.state))
               and read_head(server.state) == (read(server.state)[-1]["seq"], read(server.state)[-1]["hash"]),
               "the query's result record, and the head moved to it")
    assert verify(server.state).ok
    lines = (server.state / "audit.log").read_text().splitlines()
    assert len(lines) > 6

    def tampered(change) -> bool:
        copy = tmp_path / f"state-{change.__name__}"
        shutil.copytree(server.state, copy)
        (copy / "audit.log").write_text("\n".join(change(list(lines))) + "\n")
        return not verify(copy).ok

    def edit(ls):
        record = json.loads(ls[3])
        record["user"] = "mallory"
        ls[3] = json.dumps(record, sort_keys=True)
        return ls

    def delete(ls):
        return ls[:2] + ls[3:]

    def reorder(ls):
        ls[2], ls[3] = ls[3], ls[2]
        return ls

    def cut_tail(ls):
        return ls[:-1]

    for change in (edit, delete, reorder, cut_tail):
        assert tampered(change), change.__name__
    done = subprocess.run([sys.executable, "-c", SERVE, "audit", "verify", "--state", str(tmp_path / "state-edit")], capture_output=True, text=True, check=False)
    assert done.returncode == 1 and "edited" in done.stdout


def test_policy_reload_keeps_the_old_policy_when_the_new_one_is_broken(server, tokens) -> None:
    before = httpx.get(f"{server.url}/healthz").json()["policy"]
    good = server.policy.read_text()
    try:
        server.policy.write_text(good.replace("version: 1", "version: 1\nsurprise: true"))
        server.hup()
        eventually(lambda: "policy reload refused" in server.log.read_text(), "the broken policy refused")
        assert httpx.get(f"{server.url}/healthz").json()["policy"] == before
        assert post(server, tokens["alice"], "select count(*) from prod.orders").status_code == 200
        server.policy.write_text(good.replace("  sam: {roles: [security]}", "  sam: {roles: [security]}\n  nora: {roles: [analyst]}"))
        server.hup()
        eventually(lambda: httpx.get(f"{server.url}/healthz").json()["policy"] != before, "the new policy loaded")
    finally:
        server.policy.write_text(good)
        server.hup()
        eventually(lambda: httpx.get(f"{server.url}/healthz").json()["policy"] == before, "the first policy back")
    assert "policy reload refused" in server.log.read_text()


def test_kill9_under_load_loses_no_answered_query(room, tmp_path: Path) -> None:
    server = Server(gateway_policy(room, tmp_path), tmp_path / "state", free_port(), tmp_path / "server.log").start()
    token = server.token("alice")
    answered: list[str] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=10) as http:
            while not stop.is_set():
                try:
                    response = http.post(f"{server.url}/v1/query", json={"sql": "select region, count(*) from prod.orders group by 1"},
                                         headers={"Authorization": f"Bearer {token}"})
                    if response.status_code == 200 and response.content.endswith(b"\n"):
                        answered.append(response.headers["X-Saferoom-Request"])
                except httpx.HTTPError:
                    return

    threads = [threading.Thread(target=client) for _ in range(8)]
    [t.start() for t in threads]
    eventually(lambda: len(answered) > 5, "answers under load")
    server.kill9()
    stop.set()
    [t.join() for t in threads]
    assert len(answered) > 5
    server.start()
    try:
        assert post(server, token, "select 1").status_code == 200
    finally:
        server.stop()  # the audit log is flushed and closed
    assert verify(server.state).ok
    logged = {json.loads(line)["request_id"] for line in (server.state / "audit.log").read_text().splitlines()
              if json.loads(line).get("event") == "decision"}
    assert set(answered) <= logged


def test_a_full_disk_stops_queries_and_loses_no_answered_one(room, tmp_path: Path) -> None:
    """When the audit log cannot grow, queries fail with 503 and no data; what was answered stays logged."""
    server = Server(gateway_policy(room, tmp_path), tmp_path / "state", free_port(), tmp_path / "server.log",
                    max_file_bytes=24_000)
    server.start()
    token = server.token("alice")
    answered, refused = [], None
    try:
        for _ in range(300):
            response = post(server, token, "select order_id, amount from prod.orders limit 3")
            if response.status_code != 200:
                refused = response
                break
            answered.append(response.headers["X-Saferoom-Request"])
        assert refused is not None and len(answered) > 3
        assert refused.status_code == 503 and refused.json()["error"]["type"] == "AuditError"
        assert "audit log" in refused.json()["error"]["message"] and b"order_id" not in refused.content
        again = post(server, token, "select 1")
        assert again.status_code == 503  # still full: still closed
        assert server.process is not None
        workers = len(descendants(server.process.pid))
        for _ in range(5):  # each started while its record was written, then ended: no worker, no slot kept
            assert post(server, token, "select order_id from prod.orders").status_code == 503
        eventually(lambda: len(descendants(server.process.pid)) <= workers, "the refused queries' workers to end")
    finally:
        server.stop()
    assert verify(server.state).ok  # the torn write was cut back to the last whole record
    decisions = {r["request_id"] for r in read(server.state) if r.get("event") == "decision"}
    assert set(answered) <= decisions


def test_login_then_connect_with_no_arguments(server, tokens, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEROOM_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-c", SERVE, "login", "--url", server.url], input=tokens["ivan"] + "\n",
                          capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    saved = tmp_path / "saferoom" / "credentials.json"
    assert oct(saved.stat().st_mode)[-3:] == "600"
    for name in ("SAFEROOM_URL", "SAFEROOM_TOKEN", "SAFEROOM_POLICY", "SAFEROOM_USER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    with saferoom.connect() as session:
        assert (session.user, session.role) == ("ivan", "investigator")
        assert session.query("select count(*) as n from prod.cards").to_pylist()[0]["n"] > 0
    with pytest.raises(saferoom.UsageError, match="you are the user your token belongs to"):
        saferoom.connect(user="alice")  # would have answered as ivan, silently
    cli = subprocess.run([sys.executable, "-c", SERVE, "query", "-f", "json", "select 1 as one"], capture_output=True, text=True, env=env, check=False)
    assert json.loads(cli.stdout) == [{"one": 1}], cli.stderr


def test_oidc_bearer_tokens(room, tmp_path: Path) -> None:
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}))
    policy = gateway_policy(room, tmp_path)
    port = free_port()
    env = {**os.environ}
    process = subprocess.Popen([sys.executable, "-c", SERVE, "serve", "-p", str(policy), "--state", str(tmp_path / "state"),
                                "--port", str(port), "--jwks", str(tmp_path / "jwks.json"), "--jwt-audience", "saferoom",
                                "--jwt-claim", "preferred_username"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        eventually(lambda: answers(url) or process.poll() is not None, "the gateway to start")

        def sign(signer, **claims) -> str:
            body = {"preferred_username": "ivan", "aud": "saferoom", "exp": int(time.time()) + 300, **claims}
            return jwt.encode(body, signer, algorithm="RS256", headers={"kid": "k1"})

        def whoami(token: str) -> httpx.Response:
            return httpx.get(f"{url}/v1/whoami", headers={"Authorization": f"Bearer {token}"})

        assert whoami(sign(key)).json()["user"] == "ivan"
        assert whoami(sign(other)).status_code == 401  # forged: signed by a key the gateway does not trust
        assert whoami(sign(key, exp=int(time.time()) - 10)).status_code == 401
        assert whoami(sign(key, aud="someone-else")).status_code == 401
        assert whoami(sign(key, preferred_username="mallory")).status_code == 403  # not a user in the policy
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_client_reports_truncation_and_errors_mid_stream(server, tokens, alice) -> None:
    with RemoteSession(server.url, tokens["alice"]) as remote:
        sql = "select * from prod.orders order by order_id"
        assert remote.query(sql).to_arrow().equals(alice.query(sql).to_arrow())
        with pytest.raises(saferoom.EngineError):
            remote.query("select cast(region as integer) from prod.orders").to_arrow()
    with RemoteSession(server.url, tokens["sam"]) as security:
        cut = security.query("select order_id from prod.orders")
        assert cut.num_rows == 5 and cut.truncated
        assert cut.notices == ("cut at max_rows=5 (the limit of role security): the query had more rows",)
        whole = security.query("select order_id from prod.orders limit 5")
        assert whole.num_rows == 5 and not whole.truncated and whole.notices == ()


def test_notices_reach_the_client_and_the_json_body(server, tokens, alice) -> None:
    sql = "select count(*) as n from prod.orders where region = 'US'"
    with RemoteSession(server.url, tokens["alice"]) as remote:
        result = remote.query(sql)
        assert result.to_pylist() == [{"n": 0}]
        assert result.notices == alice.query(sql).notices == ("rows of prod.orders are filtered for role analyst: "
                                                              "region = 'EU'",)
    status = post(server, tokens["alice"], sql, format="json").json()["status"]
    assert status["notices"] == list(result.notices)


def test_audit_log_reads_backwards_across_blocks(server, tokens) -> None:
    from saferoom.audit import newest_first, read

    post(server, tokens["alice"], "select count(*) from prod.orders")
    time.sleep(0.2)
    everything = read(server.state)
    assert len(everything) > 6
    for block in (64, 333, 1 << 20):  # lines split across every kind of block edge
        assert list(newest_first(server.state, block=block)) == everything[::-1]
    assert read(server.state, limit=5) == everything[-5:]
    assert read(server.state, limit=10 ** 6) == everything


def test_a_restarted_gateway_remembers_todays_bytes(room, tmp_path: Path) -> None:
    server = Server(gateway_policy(room, tmp_path), tmp_path / "state", free_port(), tmp_path / "server.log").start()
    try:
        lee = server.token("lee")
        for _ in range(5):
            post(server, lee, "select * from prod.orders")
        assert post(server, lee, "select 1").status_code == 429
        server.stop()
        server.start()
        over = post(server, lee, "select 1")
        assert over.status_code == 429 and "max_bytes_per_day" in over.json()["error"]["message"]
        assert post(server, server.token("alice"), "select 1").status_code == 200  # only lee's budget is spent
    finally:
        server.stop()


def big_gateway(tmp_path: Path, role: str = "{}") -> Server:
    """A gateway over one 3M-row table, so a result streams for a while."""
    create = "create table events as select range as id, 'x' || range as note from range(3000000)"
    return table_gateway(tmp_path, "big", "events", create, ["alice"], role)


def test_a_gateway_dying_mid_stream_is_an_error_not_a_short_result(tmp_path: Path) -> None:
    server = big_gateway(tmp_path)
    try:
        with RemoteSession(server.url, server.token("alice")) as remote:
            batches = remote.query("select id, note from events").batches()
            first = next(batches)
            assert first.num_rows > 0
            server.kill9()
            with pytest.raises(saferoom.SaferoomError, match="before the end"):
                for _ in batches:
                    pass
    finally:
        server.stop()


def test_clients_hanging_up_mid_stream_leak_no_query_slot(tmp_path: Path) -> None:
    server = big_gateway(tmp_path, "{max_concurrent: 1}")
    try:
        token = server.token("alice")
        headers = {"Authorization": f"Bearer {token}"}
        for _ in range(3):
            with httpx.stream("POST", f"{server.url}/v1/query", json={"sql": "select id, note from events"},
                              headers=headers, timeout=30) as response:
                assert response.status_code == 200
                next(response.iter_raw())  # a little of the result, then the client goes away
            eventually(lambda: post(server, token, "select 1").status_code == 200,
                       "the abandoned stream's slot to come back")
    finally:
        server.stop()
    results = [r for r in read(server.state) if r.get("event") == "result"]
    streamed = [r for r in results if r["rows"] != 1]
    assert len(streamed) == 3 and all(r["rows"] < 3_000_000 for r in streamed)  # what left, recorded as it ended


def test_admins_creating_and_revoking_tokens_at_once_lose_nothing(tmp_path: Path) -> None:
    from saferoom.identity import TokenStore

    state = tmp_path / "state"
    policy = users_policy(tmp_path, ["mallory", *(f"user{i}" for i in range(12))])
    victim, _ = TokenStore(state).create("mallory")
    command = [sys.executable, "-c", SERVE, "token", "create", "--state", str(state), "-p", str(policy), "-u"]
    creators = [subprocess.Popen([*command, f"user{i}"], stdout=subprocess.PIPE, text=True) for i in range(12)]
    revoker = subprocess.Popen([sys.executable, "-c", SERVE, "token", "revoke", "--state", str(state), victim.split("_")[1]])
    made = [p.communicate()[0].strip() for p in creators]
    assert revoker.wait() == 0 and all(p.returncode == 0 for p in creators)
    store = TokenStore(state)
    assert {store.verify(token).user for token in made} == {f"user{i}" for i in range(12)}  # every printed token works
    with pytest.raises(saferoom.AuthError, match="revoked"):
        store.verify(victim)  # and the revocation was not undone by a create racing it


def users_policy(folder: Path, users: list[str]) -> Path:
    """A policy over one empty table that names ``users``, for commands that check users against a policy."""
    database = folder / "db.duckdb"
    with duckdb.connect(str(database)) as con:
        con.execute("create table t (id integer)")
    path = folder / "saferoom.yaml"
    path.write_text(f"""version: 1
sources: {{db: {{engine: duckdb, path: {database}}}}}
tables: {{db.t: {{id: public}}}}
tags: {{}}
users: {{{", ".join(f"{u}: {{roles: [analyst]}}" for u in users)}}}
roles: {{analyst: {{}}}}
""")
    return path


@pytest.mark.parametrize(("user", "args", "code", "said"), [
    ("nobody", (), 2, "--policy"),  # no policy to check against: a usage error, saying how
    ("alice", (), 2, "--policy"),  # even for a user who exists: the check is never skipped
    ("nobody", ("-p", "{policy}"), 4, "`nobody` is not in the policy"),
    ("alice", ("-p", "{policy}", "--role", "admin"), 4, "does not hold role `admin`"),
])
def test_a_token_is_only_made_for_a_user_and_role_the_policy_has(tmp_path: Path, user: str, args: tuple[str, ...], code: int,
                                                                 said: str) -> None:
    from saferoom.identity import TokenStore

    policy = users_policy(tmp_path, ["alice"])
    command = [sys.executable, "-c", SERVE, "token", "create", "--state", str(tmp_path / "state"), "-u", user]
    done = subprocess.run([*command, *(a.format(policy=policy) for a in args)], check=False, capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "SAFEROOM_POLICY"})
    assert (done.returncode, done.stdout) == (code, "") and said in " ".join(done.stderr.split())
    assert TokenStore(tmp_path / "state").list() == []  # nothing minted


@pytest.mark.parametrize("sql", ["select * from db.vault", "select v.* from db.vault v", "select * from db.t, db.vault",
                                 "select v from db.vault v"])
def test_a_star_over_a_table_the_role_sees_none_of_is_refused_alike_embedded_and_remote(tmp_path: Path, sql: str) -> None:
    database = tmp_path / "db.duckdb"
    with duckdb.connect(str(database)) as con:
        con.execute("create table t (id integer); insert into t values (1)")
        con.execute("create table vault (pan varchar, note varchar); insert into vault values ('4111', 'n')")
    policy = tmp_path / "saferoom.yaml"
    policy.write_text(f"""version: 1
sources: {{db: {{engine: duckdb, path: {database}}}}}
tables: {{db.t: {{id: public}}, db.vault: {{pan: pci}}}}
tags: {{pci: {{}}}}
users: {{alice: {{roles: [analyst]}}, ivan: {{roles: [investigator]}}}}
roles: {{analyst: {{columns: {{pci: deny}}}}, investigator: {{columns: {{pci: mask}}}}}}
""")
    server = Server(policy, tmp_path / "state", free_port(), tmp_path / "server.log").start()
    try:
        with saferoom.connect(policy, user="alice") as local, RemoteSession(server.url, server.token("alice")) as remote:
            refusals = []
            for session in (local, remote):
                with pytest.raises(saferoom.QueryRejected) as caught:
                    session.query(sql).to_arrow()
                refusals.append(caught.value)
            assert local.query("select count(*) as n from db.vault").to_pylist() == [{"n": 1}]  # no column read: allowed
    finally:
        server.stop()
    for refusal in refusals:
        assert str(refusal).startswith("role `analyst` sees no column of db.vault") and "investigator" in str(refusal)
        assert "__saferoom" not in str(refusal) and "note" not in str(refusal)  # no internal name, no unclassified column
        assert refusal.allowed_roles == ("investigator",)
    assert str(refusals[0]) == str(refusals[1])


def test_every_response_is_uncacheable_and_the_page_runs_only_its_own_script(server, tokens) -> None:
    page = httpx.get(f"{server.url}/")
    answer = post(server, tokens["alice"], "select 1")
    refused = post(server, None, "select 1")
    for response in (page, answer, refused, httpx.get(f"{server.url}/healthz")):
        assert response.headers["cache-control"] == "no-store"  # results are data: no browser or proxy keeps them
        assert response.headers["x-content-type-options"] == "nosniff" and response.headers["x-frame-options"] == "DENY"
    policy = page.headers["content-security-policy"]
    assert policy.split("script-src")[1].split(";")[0].strip() == "'self'"  # its own files: no inline script, no eval
    assert "<script>" not in page.text
    assert "connect-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert answer.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"


def test_an_identity_provider_that_stops_answering_fails_fast_and_closed() -> None:
    import socket

    import jwt

    from saferoom.identity import JWKS_TIMEOUT, JWTSettings, JWTVerifier

    with socket.socket() as silent:  # accepts connections into its backlog and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        verifier = JWTVerifier(JWTSettings(jwks=f"http://127.0.0.1:{silent.getsockname()[1]}/jwks.json"))
        token = jwt.encode({"sub": "ivan", "exp": int(time.time()) + 60}, "not-the-key-" * 4, algorithm="HS256",
                           headers={"kid": "k1"})
        start = time.monotonic()
        with pytest.raises(saferoom.AuthError, match="cannot be fetched"):
            verifier.verify(token)
        assert time.monotonic() - start < JWKS_TIMEOUT + 3


def test_a_url_that_is_not_a_gateway_is_a_clear_error() -> None:
    import http.server
    import socketserver

    class Portal(http.server.BaseHTTPRequestHandler):  # a proxy's login page answers 200 with HTML
        def do_GET(self) -> None:
            body = b"<html>please sign in to the network</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET

        def log_message(self, *args: object) -> None:
            pass

    with socketserver.TCPServer(("127.0.0.1", 0), Portal) as portal:
        threading.Thread(target=portal.serve_forever, daemon=True).start()
        try:
            with pytest.raises(saferoom.UsageError, match="did not answer as a saferoom gateway.*text/html"):
                RemoteSession(f"http://127.0.0.1:{portal.server_address[1]}", "sr_0123456789ab_secret")
        finally:
            portal.shutdown()


def test_tls_serves_verified_clients_only(room, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    port, policy = free_port(), gateway_policy(room, tmp_path)
    process = subprocess.Popen([sys.executable, "-c", SERVE, "serve", "-p", str(policy), "--state",
                                str(tmp_path / "state"), "--port", str(port), "--tls-cert", str(cert), "--tls-key", str(key)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"https://127.0.0.1:{port}"
    try:
        eventually(lambda: answers(url, verify=ssl.create_default_context(cafile=str(cert))) or process.poll() is not None,
                   "the gateway to start")
        token = subprocess.run([sys.executable, "-c", SERVE, "token", "create", "--state", str(tmp_path / "state"), "-p", str(policy),
                                "-u", "alice"], capture_output=True, text=True, check=True).stdout.strip()
        with RemoteSession(url, token, verify=str(cert)) as remote:
            assert remote.query("select count(*) as n from prod.orders").to_arrow().num_rows == 1
        with pytest.raises(saferoom.UsageError, match="cannot reach the gateway"):
            RemoteSession(url, token)  # the system's CAs do not vouch for it: refused before the token is sent
        with pytest.raises(saferoom.UsageError, match="CA bundle"):
            RemoteSession(url, token, verify=str(tmp_path / "missing-ca.pem"))
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=3)  # no plain HTTP on a TLS port
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_an_unusable_certificate_is_a_clear_error_before_anything_starts(room, tmp_path: Path) -> None:
    (tmp_path / "bad.pem").write_text("not a certificate")
    for cert, key in ((tmp_path / "missing.pem", tmp_path / "missing.key"), (tmp_path / "bad.pem", tmp_path / "bad.pem")):
        done = subprocess.run([sys.executable, "-c", SERVE, "serve", "-p", str(gateway_policy(room, tmp_path)), "--state",
                               str(tmp_path / "state"), "--port", str(free_port()), "--tls-cert", str(cert), "--tls-key", str(key)],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 2 and "cannot be used" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "state" / "audit.log").exists()  # refused before the gateway opened anything
