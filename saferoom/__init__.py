"""saferoom: ordinary SQL for data scientists; sensitive data stays put."""

from saferoom.errors import (
    AccessDenied,
    BuildError,
    EngineError,
    PolicyError,
    QueryRejected,
    SaferoomError,
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
    "BuildError",
    "ColumnInfo",
    "EngineError",
    "Explanation",
    "OutputColumn",
    "Policy",
    "PolicyError",
    "QueryRejected",
    "Result",
    "SaferoomError",
    "Session",
    "TableInfo",
    "UsageError",
    "__version__",
    "connect",
    "load_policy",
]
