"""saferoom: ordinary SQL for data scientists; sensitive data stays put."""

from saferoom.client import RemoteSession
from saferoom.errors import (
    AccessDenied,
    AuditError,
    AuthError,
    BuildError,
    EngineError,
    LimitExceeded,
    PolicyError,
    QueryCancelled,
    QueryRejected,
    SaferoomError,
    TooLarge,
    UsageError,
)
from saferoom.explain import ColumnInfo, Explanation, OutputColumn, TableInfo
from saferoom.policy import Action, Policy, load_policy
from saferoom.result import Result
from saferoom.session import Session, connect

__version__ = "0.1.0"

__all__ = [
    "AccessDenied",
    "Action",
    "AuditError",
    "AuthError",
    "BuildError",
    "ColumnInfo",
    "EngineError",
    "Explanation",
    "LimitExceeded",
    "OutputColumn",
    "Policy",
    "PolicyError",
    "QueryCancelled",
    "QueryRejected",
    "RemoteSession",
    "Result",
    "SaferoomError",
    "Session",
    "TableInfo",
    "TooLarge",
    "UsageError",
    "__version__",
    "connect",
    "load_policy",
]
