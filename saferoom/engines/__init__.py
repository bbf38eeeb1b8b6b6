"""Engines run guarded SQL. Each declares its dialect and allowlists as data, and is registered by name
in :mod:`saferoom.engines.registry`."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from saferoom.engines.base import Engine, EngineSpec

if TYPE_CHECKING:
    from saferoom.engines.registry import ENGINES, Registered, engine, require_driver, spec_for


def __getattr__(name: str) -> Any:
    """The registry's names, imported when first used: a module that needs only :mod:`saferoom.engines.base`
    (the client's results, say) does not load every engine's driver."""
    if name not in ("ENGINES", "Registered", "engine", "require_driver", "spec_for"):
        raise AttributeError(f"module 'saferoom.engines' has no attribute {name!r}")
    return getattr(import_module("saferoom.engines.registry"), name)


__all__ = ["ENGINES", "Engine", "EngineSpec", "Registered", "engine", "require_driver", "spec_for"]
