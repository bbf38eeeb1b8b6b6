"""Several gateway processes on one PostgreSQL state: one chain through kill -9 and a database restart,
revocation and limits that hold across gateways, and a state folder migrated in."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.gateway_helpers import SERVE, Server, eventually, free_port, gateway_policy

SMALL = "select region, count(*) as n from prod.orders group by region"
SLOW = "select count(*) from prod.orders a, prod.orders b, prod.orders c"


def post(server: Server, token: str, sql: str = SMALL, http: httpx.Client | None = None) -> httpx.Response:
    client = http or httpx
    return client.post(f"{server.url}/v1/query", json={"sql": sql, "format": "json"},  # type: ignore[attr-defined]
                       headers={"Authorization": f"Bearer {token}"}, timeout=120)


def saferoom(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", SERVE, *args], capture_output=True, text=True, check=False, timeout=300)


def records(url: str) -> list[dict]:
    """The chain in PostgreSQL; none when saferoom has not even made its tables there."""
    with psycopg.connect(url) as db:
        if db.execute("SELECT to_regclass('saferoom_audit')").fetchone() == (None,):
            return []
        return [json.loads(line) for (line,) in db.execute("SELECT line FROM saferoom_audit ORDER BY seq")]


def three(policy: Path, state_url: str, folder: Path, *extra: str) -> Iterator[list[Server]]:
    """Three gateways on one PostgreSQL state, each stopped however the test ends."""
    servers = [Server(policy, state_url, free_port(), folder / f"gateway{n}.log", extra=list(extra))  # type: ignore[arg-type]
               for n in range(3)]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def cluster(room, state_url: str, tmp_path: Path) -> Iterator[list[Server]]:
    yield from three(gateway_policy(room, tmp_path), state_url, tmp_path)


class Load:
    """Clients sending small queries round the gateways until stopped; what each got back."""

    def __init__(self, servers: list[Server], token: str, clients: int = 6) -> None:
        self.servers, self.token = servers, token
        self.answered: list[str] = []
        self.statuses: Counter[object] = Counter()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(n,)) for n in range(clients)]
        for thread in self._threads:
            thread.start()

    def _client(self, n: int) -> None:
        with httpx.Client() as http:
            while not self._stop.is_set():
                n += 1
                try:
                    response = post(self.servers[n % len(self.servers)], self.token, http=http)
                except httpx.HTTPError:
                    self.statuses["unreachable"] += 1
                    continue
                self.statuses[response.status_code] += 1
                if response.status_code == 200:
                    self.answered.append(response.headers["X-Saferoom-Request"])

    def more(self, count: int, what: str) -> None:
        target = len(self.answered) + count
        eventually(lambda: len(self.answered) >= target, what)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def test_one_chain_through_kill_9_and_a_database_restart(cluster: list[Server], state_server, state_url: str) -> None:
    load = Load(cluster, cluster[0].token("alice"))
    try:
        load.more(20, "queries answered by three gateways")
        cluster[1].kill9()  # mid-query: its clients' queries are cut off
        load.more(20, "queries answered by the two left")
        state_server.crash()
        eventually(lambda: load.statuses[503] > 0, "a query refused while PostgreSQL is down (fail closed)")
        state_server.resume()
        load.more(20, "queries answered again once PostgreSQL is back, with no restart of the gateways")
    finally:
        load.stop()
    for server in cluster:
        server.stop()
    done = saferoom("audit", "verify", "--state", state_url)
    assert done.returncode == 0, done.stdout + done.stderr
    chain = records(state_url)
    assert [r["seq"] for r in chain] == list(range(1, len(chain) + 1))  # none duplicated, none skipped
    decided = {r["request_id"] for r in chain if r.get("event") == "decision" and r.get("decision") == "allowed"}
    assert set(load.answered) <= decided  # every answered query's decision was durable before its first byte
    assert load.statuses[500] == 0, load.statuses


def token_id(token: str) -> str:
    return token.split("_")[1]


def test_a_token_revoked_is_refused_by_every_gateway(cluster: list[Server], state_url: str) -> None:
    token = cluster[0].token("alice")
    assert [post(server, token).status_code for server in cluster] == [200, 200, 200]
    done = saferoom("token", "revoke", token_id(token), "--state", state_url)
    assert done.returncode == 0, done.stderr
    for server in cluster:  # within the documented bound (TOKEN_CACHE_SECONDS)
        eventually(lambda s=server: post(s, token).status_code == 401, f"the revoked token refused by {server.url}")
    listed = json.loads(saferoom("token", "list", "--state", state_url, "--format", "json").stdout)
    assert [t["revoked"] for t in listed] == [True]


REVIEWERS = ("  rev1: {roles: [reviewer]}\n  rev2: {roles: [reviewer]}\n",
             "reviews:\n  release: {roles: [reviewer]}\n  access: {roles: [security]}\n")
EMAIL = "select email from prod.customers order by customer_id limit 1"


@pytest.fixture
def reviewed(room, state_url: str, tmp_path: Path) -> Iterator[list[Server]]:
    """Three gateways on one PostgreSQL state with reviewers in the policy, writing releases to one outbox."""
    policy = gateway_policy(room, tmp_path)
    text = policy.read_text().replace("roles:\n", "roles:\n  reviewer: {columns: {}}\n", 1)
    policy.write_text(text.replace("users:\n", "users:\n" + REVIEWERS[0], 1) + REVIEWERS[1])
    yield from three(policy, state_url, tmp_path, "--outbox", str(tmp_path / "outbox"))


def ok(server: Server, token: str, method: str, path: str, **kwargs: object) -> dict:
    answer = httpx.request(method, f"{server.url}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=120,
                           **kwargs)  # type: ignore[arg-type]
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def test_a_release_requested_on_one_gateway_and_approved_on_two_others_lands_in_the_outbox(
        reviewed: list[Server], state_url: str, tmp_path: Path) -> None:
    one, two, three = reviewed
    tokens = {user: one.token(user) for user in ("alice", "rev1", "rev2")}
    content = b"region,total\n" + b"".join(b"EU,%d\n" % n for n in range(300_000))  # several chunks in PostgreSQL
    asked = ok(one, tokens["alice"], "POST", "/v1/requests/release", json={"reason": "q3 totals"})
    ok(one, tokens["alice"], "PUT", f"/v1/requests/{asked['id']}/files/totals.csv", content=content)
    submitted = ok(one, tokens["alice"], "POST", f"/v1/requests/{asked['id']}/submit")
    seen = {f["name"]: f["sha256"] for f in submitted["files"]}
    review = {"verdict": "approve", "files": seen}
    assert ok(two, tokens["rev1"], "POST", f"/v1/requests/{asked['id']}/review", json=review)["state"] == "submitted"
    assert ok(three, tokens["rev2"], "POST", f"/v1/requests/{asked['id']}/review", json=review)["state"] == "released"
    released = tmp_path / "outbox" / asked["id"]
    assert (released / "totals.csv").read_bytes() == content
    assert {r["user"] for r in json.loads((released / "manifest.json").read_text())["reviewers"]} == {"rev1", "rev2"}
    assert ok(one, tokens["alice"], "GET", f"/v1/requests/{asked['id']}")["state"] == "released"  # seen everywhere
    trail = [r["state"] for r in records(state_url) if r.get("request_id") == asked["id"] and r["action"] == "state"]
    assert trail == ["submitted", "submitted", "approved", "released"]  # one chain, whichever gateway wrote


def test_an_access_grant_approved_on_one_gateway_works_on_another(reviewed: list[Server]) -> None:
    one, two, three = reviewed
    alice, sam = one.token("alice"), one.token("sam")
    assert "@" not in json.dumps(post(three, alice, EMAIL).json())  # tokenized for an analyst
    asked = ok(one, alice, "POST", "/v1/requests/access",
               json={"column": "prod.customers.email", "duration": "1h", "reason": "fraud case 1142"})
    assert ok(two, sam, "POST", f"/v1/requests/{asked['id']}/review", json={"verdict": "approve"})["state"] == "approved"
    eventually(lambda: "@" in json.dumps(post(three, alice, EMAIL).json()),  # within the sweep's second
               "the grant approved on gateway 2 in force on gateway 3")


def test_releases_without_an_outbox_say_how_to_turn_them_on(cluster: list[Server]) -> None:
    token = cluster[0].token("alice")
    assert ok(cluster[0], token, "GET", "/v1/requests") == []  # requests are kept: in PostgreSQL
    answer = httpx.post(f"{cluster[0].url}/v1/requests/release", json={"reason": "q3"}, timeout=60,
                        headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 400 and "`--outbox DIR`" in answer.text  # never an outbox on one host only, by default


def test_a_users_concurrent_query_limit_holds_across_gateways(cluster: list[Server], state_url: str) -> None:
    token = cluster[0].token("lee")  # role `limited`: max_concurrent 1, each query stopped after 1 s
    held: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        with psycopg.connect(state_url, autocommit=True) as db:
            while not stop.is_set():
                row = db.execute("SELECT count(*) FROM saferoom_slots WHERE username = 'lee'").fetchone()
                held.append(row[0] if row else 0)

    messages: list[str] = []

    def run(server: Server) -> None:
        messages.append(post(server, token, SLOW).json()["error"]["message"])

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=run, args=(cluster[n % 3],)) for n in range(9)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    stop.set()
    watcher.join()
    assert max(held) <= 1 and any(h == 1 for h in held)
    assert sum("max_concurrent" in m for m in messages) >= 1 and any("timeout_seconds" in m for m in messages)


def test_migrate_a_state_folder_into_postgresql(room, state_url: str, tmp_path: Path) -> None:
    policy = gateway_policy(room, tmp_path)
    folder = tmp_path / "state"
    server = Server(policy, folder, free_port(), tmp_path / "files.log").start()
    token = server.token("alice")
    assert all(post(server, token).status_code == 200 for _ in range(3))
    asked = ok(server, token, "POST", "/v1/requests/release", json={"reason": "q3 totals"})
    ok(server, token, "PUT", f"/v1/requests/{asked['id']}/files/totals.csv", content=b"region,total\nEU,3\n")
    submitted = ok(server, token, "POST", f"/v1/requests/{asked['id']}/submit")
    server.stop()
    before = [json.loads(line) for line in (folder / "audit.log").read_text().splitlines()]

    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "audit.log").write_text("".join(line + "\n" for n, line in enumerate(
        (broken / "audit.log").read_text().splitlines()) if n != 1))  # a record deleted
    refused = saferoom("state", "migrate", "--from", str(broken), "--to", state_url)
    assert refused.returncode != 0 and "does not verify" in " ".join((refused.stdout + refused.stderr).split())  # rich wraps at any width
    assert records(state_url) == []  # nothing half-written

    for _ in range(2):  # run again: the same chain is there already, nothing doubles
        done = saferoom("state", "migrate", "--from", str(folder), "--to", state_url)
        assert done.returncode == 0, done.stdout + done.stderr
    assert records(state_url) == before

    shared = Server(policy, state_url, free_port(), tmp_path / "pg.log").start()  # type: ignore[arg-type]
    try:
        assert post(shared, token).status_code == 200  # the token moved with the chain
        moved = ok(shared, token, "GET", f"/v1/requests/{asked['id']}")  # the request, its files and its report too
        assert (moved["state"], moved["files"], moved["check"]) == ("submitted", submitted["files"], submitted["check"])
        kept = httpx.get(f"{shared.url}/v1/requests/{asked['id']}/files/totals.csv", timeout=60,
                         headers={"Authorization": f"Bearer {token}"})
        assert kept.content == b"region,total\nEU,3\n"
    finally:
        shared.stop()
    after = records(state_url)
    assert after[: len(before)] == before and len(after) > len(before)
    assert saferoom("audit", "verify", "--state", state_url).returncode == 0

    other = tmp_path / "other"
    server = Server(policy, other, free_port(), tmp_path / "other.log").start()
    post(server, server.token("alice"))
    server.stop()
    foreign = saferoom("state", "migrate", "--from", str(other), "--to", state_url)
    assert foreign.returncode != 0 and "another audit chain" in " ".join((foreign.stdout + foreign.stderr).split())
    assert records(state_url) == after


def scratch_folders(pid: int) -> list[Path]:
    """The scratch folders (saferoom/scratch.py) a process holds: those whose lock file it has open."""
    links = (Path(os.readlink(fd)) for fd in Path(f"/proc/{pid}/fd").iterdir() if fd.is_symlink())
    return [link.parent for link in links if link.name == ".held"]


def test_a_gateway_killed_mid_upload_leaves_no_part_of_the_file_anywhere(reviewed: list[Server], state_url: str) -> None:
    """kill -9 while a file streams in: PostgreSQL holds no chunk of it, no gateway lists it, the killed
    gateway's local copy goes when it starts again, and the upload made again on another gateway is whole."""
    one, two, _ = reviewed
    alice = one.token("alice")
    assert one.process is not None
    held = [f for f in scratch_folders(one.process.pid) if f.name.startswith("saferoom-requests-")]  # its local copies
    assert held
    asked = ok(one, alice, "POST", "/v1/requests/release", json={"reason": "q3 totals"})
    sent = threading.Event()

    def body() -> Iterator[bytes]:
        yield b"region,total\n" + b"EU,1\n" * 400_000  # past one chunk of PostgreSQL's
        sent.set()
        one.kill9()  # the gateway dies with the upload half read
        yield b"EU,2\n" * 400_000

    with pytest.raises(httpx.HTTPError):
        httpx.put(f"{one.url}/v1/requests/{asked['id']}/files/totals.csv", content=body(), timeout=120,
                  headers={"Authorization": f"Bearer {alice}"})
    assert sent.is_set()
    assert all(folder.exists() for folder in held)  # kill -9: the gateway removed nothing
    assert ok(two, alice, "GET", f"/v1/requests/{asked['id']}")["files"] == []
    with psycopg.connect(state_url) as db:
        assert db.execute("SELECT count(*) FROM saferoom_request_files WHERE request_id = %s",
                          (asked["id"],)).fetchone() == (0,)
    one.start()  # its scratch folder is swept as it makes a new one
    assert not any(folder.exists() for folder in held), held
    content = b"region,total\nEU,3\n"
    ok(two, alice, "PUT", f"/v1/requests/{asked['id']}/files/totals.csv", content=content)
    submitted = ok(one, alice, "POST", f"/v1/requests/{asked['id']}/submit")
    assert [f["name"] for f in submitted["files"]] == ["totals.csv"]
