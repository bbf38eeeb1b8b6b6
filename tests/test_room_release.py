"""A release request from inside a real room: the room's only door is the gateway's socket, and the files
go through it into the request area."""

from __future__ import annotations

import hashlib
import json

from tests.test_room import gateway, in_room, last_json, sandbox, workspace  # noqa: F401 - shared fixtures


@sandbox
def test_a_release_request_from_inside_a_room_reaches_the_request_area(gateway, workspace) -> None:  # noqa: F811
    found = last_json(in_room(gateway, workspace, code="""
        import contextlib, io, json, sys
        from pathlib import Path
        from saferoom.cli import main
        Path("summary.csv").write_text("region,total\\nEU,1200\\n")
        sys.argv = ["saferoom", "release", "request", "summary.csv", "--reason", "from the room", "--json"]
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            main()
        print(json.dumps(json.loads(out.getvalue())))
    """))
    assert found["state"] == "submitted" and found["requester"] == "alice" and found["check"]["files"] == 1
    kept = gateway.state / "requests" / "files" / found["id"] / "summary.csv"
    assert hashlib.sha256(kept.read_bytes()).hexdigest() == found["files"][0]["sha256"]
    assert json.loads((gateway.state / "requests" / "records" / f"{found['id']}.json").read_text())["state"] == "submitted"
