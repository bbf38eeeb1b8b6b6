"""A real JupyterHub on 127.0.0.1 whose RoomSpawner starts a person's notebook server in their room; a notebook
cell run through the hub's proxy and the Jupyter server's API queries the gateway and reaches nothing else.

As root (CI), the room runs as the unprivileged account `nobody`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import policies
from tests.gateway_helpers import HUNG, Server, eventually, free_port
from tests.test_room import ACCOUNT, ROOT, room_uid, running, sandbox, tasks_of, tokens

pytest.importorskip("jupyterhub")
CHP = shutil.which("configurable-http-proxy")
needs_proxy = pytest.mark.skipif(CHP is None and not os.environ.get("SAFEROOM_REQUIRE_HUB"),
                                 reason="configurable-http-proxy is not installed (npm install -g configurable-http-proxy)")
PASSWORD = "room-test-password"
CELL_SECONDS = 120  # a cell that shows nothing for this long hangs


class Hub:
    """A JupyterHub process, its admin token, and the REST calls the test makes."""

    def __init__(self, folder: Path, gateway: Server) -> None:
        self.folder, self.port, self.hub_port = folder, free_port(), free_port()
        self.admin = secrets.token_hex(24)
        (folder / "jupyterhub_config.py").write_text(self._config(gateway))
        self.log = folder / "hub.log"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen([str(Path(sys.executable).parent / "jupyterhub"), "-f", "jupyterhub_config.py"],
                                            cwd=folder, stdout=log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"

    def _config(self, gateway: Server) -> str:
        settings = {
            "JupyterHub.ip": "127.0.0.1", "JupyterHub.port": self.port, "JupyterHub.hub_ip": "127.0.0.1",
            "JupyterHub.hub_port": self.hub_port, "ConfigurableHTTPProxy.api_url": f"http://127.0.0.1:{free_port()}",
            "JupyterHub.db_url": f"sqlite:///{self.folder / 'hub.sqlite'}",
            "JupyterHub.cookie_secret_file": str(self.folder / "cookie_secret"),
            "JupyterHub.authenticator_class": "dummy", "DummyAuthenticator.password": PASSWORD,
            "Authenticator.allow_all": True,
            "JupyterHub.services": [{"name": "test-admin", "api_token": self.admin}],
            "JupyterHub.load_roles": [{"name": "admin", "services": ["test-admin"]}],
            "JupyterHub.spawner_class": "saferoom.jupyterhub.RoomSpawner",
            "RoomSpawner.gateway_socket": str(gateway.socket), "RoomSpawner.state": str(gateway.state),
            "RoomSpawner.policy": str(gateway.policy), "RoomSpawner.workspace": str(self.folder / "rooms" / "{user}"),
            "RoomSpawner.user_map": {"ann": "alice"}, "RoomSpawner.account": ACCOUNT if ROOT else "{user}",
            "RoomSpawner.cmd": [str(Path(sys.executable).parent / "jupyterhub-singleuser")],
            "Spawner.start_timeout": int(HUNG), "Spawner.http_timeout": int(HUNG),
        }
        return "".join(f"c.{name} = {value!r}\n" for name, value in settings.items())

    def api(self, method: str, path: str, token: str, **options: Any) -> httpx.Response:
        return httpx.request(method, f"{self.url}/hub/api{path}", headers={"Authorization": f"token {token}"},
                             timeout=60, **options)

    def signs_in(self, user: str, password: str) -> bool:
        """Whether the hub's login form lets ``user`` in with ``password``, as a browser signs in."""
        with httpx.Client(base_url=self.url, timeout=60) as browser:
            browser.get("/hub/login")
            done = browser.post("/hub/login", data={"username": user, "password": password,
                                                    "_xsrf": browser.cookies.get("_xsrf", "")})
            return done.status_code == 302 and any(c.startswith("jupyterhub-session-id") for c in browser.cookies)

    def answers(self) -> bool:
        assert self.process.poll() is None, self.log.read_text()[-3000:]
        try:
            return self.api("GET", "/", self.admin).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # the hub stops its servers and its proxy on the way out
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def execute(url: str, token: str, code: str) -> dict[str, Any]:
    """Run ``code`` in a new kernel of the notebook server at ``url`` (through the hub's proxy), as a notebook's
    page does: the kernels API, then the kernel's websocket. Returns what it printed and its error."""
    import websocket

    headers = {"Authorization": f"token {token}"}
    kernel = httpx.post(f"{url}/api/kernels", headers=headers, json={"name": "python3"}, timeout=HUNG)
    assert kernel.status_code == 201, kernel.text
    channel = websocket.create_connection(f"{url.replace('http', 'ws', 1)}/api/kernels/{kernel.json()['id']}/channels",
                                          header=[f"Authorization: token {token}"], timeout=CELL_SECONDS)
    try:
        msg_id = uuid.uuid4().hex
        channel.send(json.dumps({
            "header": {"msg_id": msg_id, "username": "ann", "session": uuid.uuid4().hex, "msg_type": "execute_request",
                       "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {}, "allow_stdin": False},
        }))
        shown, error = [], None
        while True:
            message = json.loads(channel.recv())
            if message.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = message["msg_type"], message["content"]
            if kind == "stream":
                shown.append(content["text"])
            elif kind == "execute_result":  # a notebook shows the HTML where there is some
                shown.append(content["data"].get("text/html", content["data"].get("text/plain", "")))
            elif kind == "error":
                error = f"{content['ename']}: {content['evalue']}"
            elif kind == "status" and content["execution_state"] in ("restarting", "dead"):
                raise AssertionError(f"the kernel died running {code!r}")
            elif kind == "status" and content["execution_state"] == "idle":
                return {"shown": "".join(shown), "error": error}
    finally:
        channel.close()
        httpx.delete(f"{url}/api/kernels/{kernel.json()['id']}", headers=headers, timeout=HUNG)


@pytest.fixture
def gateway(room, tmp_path) -> Iterator[Server]:
    """A gateway over the demo data whose rooms may run a notebook server and its kernels (the room tests' are small)."""
    folder = tmp_path / "gateway"
    folder.mkdir()
    policy = policies.demo(room)
    policy["sources"]["prod"]["path"] = str(room.database)
    policy["rooms"] = {"default": {"memory": "8GiB", "processes": tasks_of(room_uid()) + 512, "cpu_seconds": 3600, "tmp": "64MB"}}
    server = Server(policies.write(policy, folder / "saferoom.yaml"), folder / "state", free_port(), folder / "server.log",
                    socket=folder / "gateway.sock").start()
    yield server
    server.stop()


@sandbox
@needs_proxy
def test_a_hub_users_notebook_runs_in_their_room_and_reaches_only_the_gateway(gateway, tmp_path) -> None:
    (tmp_path / "hub").mkdir()
    before = tokens(gateway)
    hub = Hub(tmp_path / "hub", gateway)
    try:
        eventually(hub.answers, "the hub to start")
        assert not hub.signs_in("ann", "wrong") and hub.signs_in("ann", PASSWORD)  # signing in made her a hub user
        # her token for the REST API, as the hub's token page would make it
        made = hub.api("POST", "/users/ann/tokens", hub.admin, json={"note": "test", "expires_in": 3600})
        assert made.status_code == 201, made.text
        token = made.json()["token"]
        assert hub.api("POST", "/users/ann/server", token).status_code in (201, 202)
        eventually(lambda: hub.api("GET", "/users/ann", token).json()["servers"].get("", {}).get("ready"),
                   "ann's server to be ready")
        notebook = f"{hub.url}/user/ann"
        found = execute(notebook, token, """
import json, os, saferoom
s = saferoom.connect()
regions = s.query("select distinct region from prod.orders").to_arrow().column(0).to_pylist()
print(json.dumps({"user": s.user, "regions": regions, "uid": os.getuid(), "cwd": os.getcwd()}))
""")
        assert found["error"] is None, found
        shown = json.loads(found["shown"])
        assert (shown["user"], shown["regions"], shown["cwd"]) == ("alice", ["EU"], "/workspace")  # her row filter
        assert shown["uid"] == room_uid()  # as root: the account the room runs as
        cell = execute(notebook, token, "%load_ext saferoom\n%sql select distinct region from prod.orders")
        assert cell["error"] is None and "<table" in cell["shown"] and ">EU<" in cell["shown"], cell
        outside = execute(notebook, token, f"""
import socket
for address in [("127.0.0.1", {hub.port}), ("127.0.0.1", {hub.hub_port}), ("1.1.1.1", 443)]:
    try:
        socket.create_connection(address, timeout=5)
        print("connected")
    except OSError as exc:
        print(type(exc).__name__)
""")
        assert outside == {"shown": "ConnectionRefusedError\nConnectionRefusedError\nOSError\n", "error": None}, outside
        with socket.create_connection(("127.0.0.1", hub.port), timeout=5):
            pass  # while outside the room the hub is there
        assert hub.api("DELETE", "/users/ann/server", token).status_code in (202, 204)
        eventually(lambda: not hub.api("GET", "/users/ann", token).json()["servers"], "ann's server to stop")
        minted = {i: revoked for i, revoked in tokens(gateway).items() if i not in before}
        assert len(minted) == 1 and all(minted.values())  # the room's token died with it
    finally:
        hub.stop()
        for pid in running(str(tmp_path / "hub" / "rooms")):  # a room the hub failed to stop must not outlive the test
            os.kill(pid, signal.SIGKILL)
    assert not running(str(tmp_path / "hub" / "rooms"))
