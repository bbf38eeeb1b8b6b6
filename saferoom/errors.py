"""Every error saferoom raises.

    SaferoomError
    ├── PolicyError        the policy file is wrong (file, line, what to fix)
    ├── QueryRejected      the guard refused a query (column, tag, threats, roles that may see it)
    ├── AccessDenied       unknown user, or a role the user does not hold
    ├── EngineError        the database failed; message scrubbed of paths and settings
    ├── BuildError         `saferoom build` could not finish; the last good build is untouched
    └── UsageError         the caller asked for something that cannot be done (bad argument)

Each class carries ``exit_code`` for the command line, so every surface renders
errors the same way.
"""

from __future__ import annotations

from collections.abc import Sequence


class SaferoomError(Exception):
    """Root of every error saferoom raises on purpose."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class PolicyError(SaferoomError):
    """The policy file is malformed, inconsistent or refers to something missing."""

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None) -> None:
        where = ""
        if file:
            where = f"{file}:{line}: " if line else f"{file}: "
        super().__init__(f"{where}{message}")
        self.file = file
        self.line = line
        self.detail = message


class QueryRejected(SaferoomError):
    """The guard refused the query. The message explains the rule in plain words."""

    exit_code = 3

    def __init__(
        self,
        message: str,
        *,
        column: str | None = None,
        tag: str | None = None,
        threats: Sequence[str] = (),
        allowed_roles: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.column = column
        self.tag = tag
        self.threats = tuple(threats)
        self.allowed_roles = tuple(allowed_roles)


class AccessDenied(SaferoomError):
    """The user is unknown, or asked to act as a role they do not hold."""

    exit_code = 4


class EngineError(SaferoomError):
    """The database refused or failed to run a guarded query."""

    exit_code = 5


class BuildError(SaferoomError):
    """A build failed before it swapped anything in; the previous target is untouched."""

    exit_code = 6


class UsageError(SaferoomError):
    """A bad argument from the caller: a missing file, an unknown format."""

    exit_code = 2
