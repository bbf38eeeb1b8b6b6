"""saferoom: ordinary SQL for data scientists; sensitive data stays put.

The names below are imported when first used, so that importing one part
(``saferoom.policy``, say) does not bring in the engines and everything above
them: each part imports only what it is allowed to see.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from saferoom.errors import (
    AccessDenied,
    AuditError,
    AuthError,
    BuildError,
    EngineError,
    LimitExceeded,
    NotFound,
    PackagesError,
    PackagesRefused,
    PolicyError,
    QueryCancelled,
    QueryRejected,
    RequestRefused,
    RoomError,
    SaferoomError,
    StateConflict,
    TooLarge,
    UsageError,
)

if TYPE_CHECKING:
    from saferoom.client import RemoteSession
    from saferoom.decision import ColumnInfo, Decision, OutputColumn, Refusal, TableInfo
    from saferoom.policy import Action, Policy, load_policy
    from saferoom.result import Result
    from saferoom.session import Session, SessionProtocol, connect

__version__ = "0.1.0"

_LAZY = {
    "RemoteSession": "saferoom.client",
    "ColumnInfo": "saferoom.decision",
    "Decision": "saferoom.decision",
    "OutputColumn": "saferoom.decision",
    "Refusal": "saferoom.decision",
    "TableInfo": "saferoom.decision",
    "Action": "saferoom.policy",
    "Policy": "saferoom.policy",
    "load_policy": "saferoom.policy",
    "Result": "saferoom.result",
    "Session": "saferoom.session",
    "SessionProtocol": "saferoom.session",
    "connect": "saferoom.session",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'saferoom' has no attribute {name!r}")
    value = getattr(import_module(_LAZY[name]), name)
    globals()[name] = value  # once
    return value


def load_ipython_extension(shell: Any) -> None:
    """``%load_ext saferoom``: ``%%sql`` cells that run guarded queries (see :mod:`saferoom.magic`)."""
    from saferoom.magic import load

    load(shell)


def unload_ipython_extension(shell: Any) -> None:
    from saferoom.magic import unload

    unload(shell)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AccessDenied",
    "Action",
    "AuditError",
    "AuthError",
    "BuildError",
    "ColumnInfo",
    "Decision",
    "EngineError",
    "LimitExceeded",
    "NotFound",
    "OutputColumn",
    "PackagesError",
    "PackagesRefused",
    "Policy",
    "PolicyError",
    "QueryCancelled",
    "QueryRejected",
    "Refusal",
    "RemoteSession",
    "RequestRefused",
    "Result",
    "RoomError",
    "SaferoomError",
    "Session",
    "SessionProtocol",
    "StateConflict",
    "TableInfo",
    "TooLarge",
    "UsageError",
    "__version__",
    "connect",
    "load_policy",
]
