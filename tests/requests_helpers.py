"""A gateway with reviewers, for the request engine's tests, and small ways to drive its HTTP API."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import httpx

from saferoom.identity import TokenStore
from tests.gateway_helpers import SERVE, Server, free_port

POLICY = """version: 1
sources: {{prod: {{engine: duckdb, path: {database}}}}}
threats: {{identify: "names a person"}}
tags: {{pii: {{threats: [identify]}}}}
tables:
  prod.people: {{id: public, city: public, email: pii}}
users:
  ana: {{roles: [analyst]}}
  bob: {{roles: [analyst]}}
  rev1: {{roles: [reviewer]}}
  rev2: {{roles: [reviewer]}}
  rev3: {{roles: [reviewer, analyst]}}
  boss: {{roles: [security]}}
roles:
  analyst: {{columns: {{pii: deny}}}}
  investigator: {{columns: {{pii: allow}}}}
  reviewer: {{columns: {{}}}}
  security: {{columns: {{}}, audit: true}}
reviews:
  release: {{roles: [reviewer]}}
  access: {{roles: [security], max_duration: 1d}}
  packages: {{roles: [security]}}
"""


@dataclass
class Gateway:
    server: Server
    tokens: dict[str, str]

    @property
    def outbox(self) -> Path:
        return self.server.state / "outbox"

    def http(self, user: str) -> httpx.Client:
        return httpx.Client(base_url=self.server.url, headers={"Authorization": f"Bearer {self.tokens[user]}"}, timeout=120)

    def call(self, user: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        with self.http(user) as http:
            return http.request(method, path, **kwargs)

    def ok(self, user: str, method: str, path: str, **kwargs: Any) -> Any:
        response = self.call(user, method, path, **kwargs)
        assert response.status_code == 200, response.text
        return response.json()

    def cli(self, user: str, *args: str) -> subprocess.CompletedProcess[str]:
        """A `saferoom` command run as ``user`` against this gateway."""
        env = {**os.environ, "SAFEROOM_URL": self.server.url, "SAFEROOM_TOKEN": self.tokens[user]}
        return subprocess.run([sys.executable, "-c", SERVE, *args], check=False, capture_output=True, text=True, env=env)

    def release(self, user: str, files: dict[str, bytes], reason: str = "a summary") -> dict[str, Any]:
        request = self.ok(user, "POST", "/v1/requests/release", json={"reason": reason})
        for name, content in files.items():
            self.ok(user, "PUT", f"/v1/requests/{request['id']}/files/{name}", content=content)
        return self.ok(user, "POST", f"/v1/requests/{request['id']}/submit")

    def review(self, user: str, request: dict[str, Any], verdict: str = "approve", **extra: Any) -> httpx.Response:
        seen = {f["name"]: f["sha256"] for f in request["files"]}
        return self.call(user, "POST", f"/v1/requests/{request['id']}/review", json={"verdict": verdict, "files": seen, **extra})


def start(folder: Path, *extra: str) -> Gateway:
    database = folder / "prod.duckdb"
    with duckdb.connect(str(database)) as con:
        con.execute("create table people as select i as id, 'city' || (i % 5) as city, "
                    "'person' || i || '@example.com' as email from range(50) t(i)")
    (folder / "state").mkdir()
    (folder / "saferoom.yaml").write_text(POLICY.format(database=database))
    server = Server(folder / "saferoom.yaml", folder / "state", free_port(), folder / "server.log", extra=list(extra)).start()
    users = ("ana", "bob", "rev1", "rev2", "rev3", "boss")
    store = TokenStore(server.state)  # what `saferoom token create` does, without a process per user
    return Gateway(server, {u: store.create(u)[0] for u in users})
