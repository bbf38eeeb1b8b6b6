"""A real IPython kernel in its own process, driven as a notebook drives it (jupyter_client)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.gateway_helpers import HUNG


class Kernel:
    """``Kernel(cwd, env)``; ``run(code)`` returns what the cell showed and its error, ``stop()`` ends it."""

    def __init__(self, cwd: Path, env: Mapping[str, str] | None = None) -> None:
        from jupyter_client.manager import start_new_kernel

        env = {**(os.environ if env is None else env), "PLOOMBER_STATS_ENABLED": "false"}  # JupySQL would report usage
        self.manager, self.client = start_new_kernel(kernel_name="python3", cwd=str(cwd), env=env)

    def messages(self, code: str) -> list[dict[str, Any]]:
        """Every IOPub message the cell caused, up to its end."""
        msg_id = self.client.execute(code)
        found = []
        while True:
            message = self.client.get_iopub_msg(timeout=HUNG)
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            found.append(message)
            if message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
                return found

    def run(self, code: str) -> tuple[str, str | None]:
        """What the cell printed or returned, and its error as ``Name: message`` (None when it ran)."""
        shown, error = [], None
        for message in self.messages(code):
            kind, content = message["msg_type"], message["content"]
            if kind == "stream":
                shown.append(content["text"])
            elif kind in ("execute_result", "display_data"):
                shown.append(content["data"].get("text/plain", ""))
            elif kind == "error":
                error = f"{content['ename']}: {content['evalue']}"
        return "".join(shown), error

    def stop(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)
