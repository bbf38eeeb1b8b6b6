"""``RoomSpawner``: JupyterHub starts each person's notebook server inside their room.

In ``jupyterhub_config.py``::

    c.JupyterHub.spawner_class = "saferoom.jupyterhub.RoomSpawner"
    c.RoomSpawner.gateway_socket = "/run/saferoom/gateway.sock"
    c.RoomSpawner.state = "/var/lib/saferoom"          # a token is minted for each room, revoked when it stops
    c.RoomSpawner.policy = "/etc/saferoom/saferoom.yaml"
    c.RoomSpawner.workspace = "/srv/rooms/{user}"
    c.RoomSpawner.user_map = {"alice@example.org": "alice"}   # or a callable; default: the same name

The server is started as ``saferoom room ... -- jupyterhub-singleuser`` and is one more command in a room:
no network, the gateway's socket its only way to data. Two more doors are opened by the room's starter,
outside the room, for the hub alone: a relay to the hub's API (which the server asks who a visitor is),
seen in the room as ``/run/saferoom/hub.sock``; and a port on 127.0.0.1, the one the hub is told, whose
connections reach the Unix socket the server listens on in the room. The hub's own authentication
guards that port, as it guards any single-user server's.
"""

from __future__ import annotations

import os
import shlex
import sys
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from subprocess import Popen

from jupyterhub.spawner import LocalProcessSpawner
from jupyterhub.utils import random_port
from traitlets import Callable as CallableTrait
from traitlets import Dict, Unicode, Union

from saferoom import room as rooms
from saferoom.errors import UsageError
from saferoom.relay import Opening

# jupyter_server refuses --sock with any port but its default, and the single-user extension takes its port
# from JUPYTERHUB_SERVICE_URL: the room is told this one, which listens on nothing there
SERVER_DEFAULT_PORT = 8888
PASSED = ("JUPYTERHUB_", "JPY_")  # the hub's variables for the server: its token, URLs, OAuth client


class RoomSpawner(LocalProcessSpawner):  # type: ignore[misc]  # JupyterHub ships no types
    """Each person's single-user server in their own room (see the module's documentation)."""

    port: int  # Spawner's: where the hub reaches the server (here, the room's opening)
    gateway_socket = Unicode(config=True, help="The gateway's Unix socket (`saferoom serve --socket`).")
    state = Unicode(config=True, help="The gateway's state folder, where each room's token is minted.")
    policy = Unicode(config=True, help="The policy file: its users and the rooms' limits.")
    workspace = Unicode("/srv/rooms/{user}", config=True,
                        help="Each person's workspace; {user} is their name in the policy. Made if missing.")
    packages = Unicode("", config=True, help="A package snapshot (`saferoom packages sync --dest`), for pip in rooms.")
    role = Unicode("", config=True, help="The role the rooms' tokens act as; empty: each user's default role.")
    account = Unicode("{user}", config=True,
                      help="Started as root: the host account a room runs as; {user} is the person's name in the policy.")
    user_map = Union([Dict(), CallableTrait()], default_value={}, config=True,
                     help="The hub's user name to the policy's: a dict (names it lacks map to themselves) or a callable.")

    def policy_user(self) -> str:
        """Whom the policy knows this hub user as."""
        name: str = self.user.name
        mapped = self.user_map(name) if callable(self.user_map) else self.user_map.get(name, name)
        if not isinstance(mapped, str) or not mapped:
            raise UsageError(f"RoomSpawner.user_map gave no policy user for the hub's user {name!r}")
        return mapped

    def make_preexec_fn(self, name: str) -> Callable[[], None] | None:
        return None  # the room drops to the person's account itself, inside the sandbox

    def user_env(self, env: dict[str, str]) -> dict[str, str]:
        return env  # the room sets HOME and USER; the hub's user need not be a host account

    def get_env(self) -> dict[str, str]:
        """The hub's variables, pointed at the room's doors: its API through the relay's socket, and the
        server's address at a port jupyter_server accepts together with a socket."""
        env: dict[str, str] = super().get_env()
        api = env["JUPYTERHUB_API_URL"]
        inside = "http+unix://" + urllib.parse.quote(rooms.HUB, safe="") + urllib.parse.urlsplit(api).path
        for name in ("JUPYTERHUB_API_URL", "JUPYTERHUB_ACTIVITY_URL"):
            if name in env:
                env[name] = env[name].replace(api, inside)
        prefix = env.get("JUPYTERHUB_SERVICE_PREFIX", "/")
        env["JUPYTERHUB_SERVICE_URL"] = f"http://127.0.0.1:{SERVER_DEFAULT_PORT}{prefix}"
        env["SAFEROOM_HUB_API"] = api  # for the room's starter, which opens the relay; not passed into the room
        return env

    def room_command(self, env: dict[str, str]) -> list[str]:
        user = self.policy_user()
        workspace = Path(self.workspace.format(user=user))
        self._make_workspace(workspace, user)
        passed = [arg for name in sorted(env) if name.startswith(PASSED) for arg in ("--env", name)]
        options = [
            "--socket", self.gateway_socket, "--state", self.state, "--policy", self.policy, "-u", user,
            "--workspace", str(workspace), "--hub", env["SAFEROOM_HUB_API"], "--publish", str(self.port), *passed,
            *(["--role", self.role] if self.role else []), *(["--packages", self.packages] if self.packages else []),
            *(["--account", self.account.format(user=user)] if os.geteuid() == 0 else []),
        ]
        server = [*self.cmd, *self.get_args(), f"--sock={rooms.PUBLISHED}/{Opening.SOCKET_NAME}"]
        return [sys.executable, "-m", "saferoom", "room", *options, "--", *server]

    def _make_workspace(self, workspace: Path, user: str) -> None:
        """A workspace the person's account owns, made on first start (an admin may have made it already)."""
        if workspace.exists():
            return
        workspace.mkdir(mode=0o700, parents=True)
        if os.geteuid() == 0:
            owner = rooms.account(self.account.format(user=user))
            os.chown(workspace, owner.uid, owner.gid)

    async def start(self) -> tuple[str, int]:
        """Start the room; the hub reaches its server at the port the room's starter opens."""
        port: int = self.port or random_port()
        self.port = port
        env = self.get_env()
        command = self.room_command(env)
        self.log.info("Starting a room: %s", " ".join(shlex.quote(arg) for arg in command))
        self.proc = Popen(command, env=env, start_new_session=True)  # signals from the hub's terminal stay there
        self.pid = self.proc.pid
        return ("127.0.0.1", port)
