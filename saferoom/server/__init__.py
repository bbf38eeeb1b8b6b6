"""`saferoom serve`: one gateway holds the credentials and the policy; people hold personal tokens."""

from __future__ import annotations

from saferoom.server.app import create_app
from saferoom.server.gateway import Gateway

__all__ = ["Gateway", "create_app"]
