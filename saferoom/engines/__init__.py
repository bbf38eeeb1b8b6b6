"""Engines run guarded SQL. Each declares its dialect and allowlists as data, and is registered by name
in :mod:`saferoom.engines.registry`."""

from __future__ import annotations

from saferoom.engines.base import Engine, EngineSpec
from saferoom.engines.registry import ENGINES, Registered, engine, require_driver, spec_for

__all__ = ["ENGINES", "Engine", "EngineSpec", "Registered", "engine", "require_driver", "spec_for"]
