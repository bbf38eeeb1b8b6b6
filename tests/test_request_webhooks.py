"""Webhooks: a JSON notice for each state change; a hook that fails is retried a bounded number of times and
never costs the change itself; notices carry no reasons, comments, file contents or tokens."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from saferoom.requests.notify import ATTEMPTS
from tests.gateway_helpers import eventually, free_port
from tests.requests_helpers import start


class Hook:
    """A local endpoint that keeps what it is sent and answers ``status``."""

    def __init__(self, status: int) -> None:
        received: list[dict] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?token=hook-secret"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def hooks(tmp_path):
    good, failing = Hook(200), Hook(500)
    dead = f"http://127.0.0.1:{free_port()}/nobody-listens"
    gateway = start(tmp_path, "--webhook", good.url, "--webhook", failing.url, "--webhook", dead)
    yield gateway, good, failing
    gateway.server.stop()
    good.close()
    failing.close()


def test_each_state_change_is_posted_and_a_failing_hook_loses_nothing(hooks) -> None:
    gateway, good, failing = hooks
    request = gateway.release("ana", {"summary.csv": b"a,b\n1,2\n"}, reason="secret project name")
    gateway.review("rev1", request, comment="a private remark")
    assert gateway.review("rev2", request).json()["state"] == "released"  # the failing hooks did not hold it up
    eventually(lambda: [e["state"] for e in good.received if e["action"] == "state"] ==
               ["submitted", "submitted", "approved", "released"], "every state change reaches the good hook")
    assert {e["request_id"] for e in good.received} == {request["id"]}
    assert good.received[-1]["files"] == ["summary.csv"] and good.received[-1]["requester"] == "ana"
    text = json.dumps(good.received)
    assert "secret project name" not in text and "a private remark" not in text and "a,b" not in text
    assert all(token not in text for token in gateway.tokens.values())
    first = good.received[0]
    eventually(lambda: sum(e == first for e in failing.received) == ATTEMPTS, "the failing hook is tried, a bounded number of times")
    assert sum(e == first for e in failing.received) == ATTEMPTS
    assert "hook-secret" not in (gateway.server.log.read_text())  # a hook's URL may hold a token: never logged
