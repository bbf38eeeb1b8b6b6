"""The published port's relay connects only to the socket the room's own server made.

The room can write the folder the socket is made in; the relay runs as root. A symlink planted there, or a
socket made by anyone else, would have root connect wherever the room points it (any Unix socket on the host).
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from saferoom.relay import Opening
from tests.gateway_helpers import free_port

NOBODY = 65534


def serving(path: Path, answer: bytes) -> socket.socket:
    """A Unix socket server at ``path`` answering every connection with ``answer``."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()

    def answering() -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            client.sendall(answer)
            client.close()

    threading.Thread(target=answering, daemon=True).start()
    return server


def ask(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        return client.recv(100)


@pytest.fixture()
def host_service(tmp_path: Path):
    """A root-only host service: a 0600 socket in a 0700 folder."""
    folder = tmp_path / "rootonly"
    folder.mkdir(mode=0o700)
    server = serving(folder / "svc.sock", b"HOST SERVICE")
    os.chmod(folder / "svc.sock", 0o600)
    yield folder / "svc.sock"
    server.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="the folder is handed to another account, which only root can do")
def test_a_symlink_or_a_foreign_socket_in_the_published_folder_is_not_followed(host_service: Path) -> None:
    port = free_port()
    with Opening(port) as folder:
        os.chown(folder, NOBODY, NOBODY)  # as the room has it
        (folder / Opening.SOCKET_NAME).symlink_to(host_service)
        assert ask(port) == b""  # the connection is closed: root did not connect through the link
        (folder / Opening.SOCKET_NAME).unlink()
        foreign = serving(folder / Opening.SOCKET_NAME, b"NOT THE ROOM'S")  # made by root, not the room's account
        try:
            assert ask(port) == b""
            os.chown(folder / Opening.SOCKET_NAME, NOBODY, NOBODY)  # now as the room's server would have made it
            assert ask(port) == b"NOT THE ROOM'S"
        finally:
            foreign.close()
