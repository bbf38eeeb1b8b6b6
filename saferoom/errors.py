"""Every error saferoom raises.

    SaferoomError
    ├── PolicyError        the policy file is wrong (file, line, what to fix)
    ├── QueryRejected      the guard refused a query (column, tag, threats, roles that may see it)
    ├── AccessDenied       unknown user, or a role the user does not hold
    ├── EngineError        the database failed; message scrubbed of paths and settings
    ├── BuildError         `saferoom build` could not finish; the last good build is untouched
    ├── AuthError          no valid credential (missing, malformed, expired, revoked or forged token)
    ├── AuditError         the audit log cannot be written, so nothing runs (fail closed)
    ├── LimitExceeded      a role's limit (bytes per day, concurrent queries, time) was reached
    │   └── TooLarge       a request or SQL text past the gateway's size limit
    ├── QueryCancelled     a query was stopped before it finished: its client left, or the gateway is stopping
    ├── PackagesError      a package snapshot could not be made; the previous one is untouched
    ├── PackagesRefused    a snapshot was published without some top-level requirements (refused)
    ├── NotFound           a package or file that is not there
    ├── RoomError          a room's sandbox cannot be made on this host (fail closed: nothing runs)
    ├── RequestRefused     a request or review the request engine refuses (wrong state, self-approval, changed file)
    ├── StateConflict      a state record changed since it was read (compare-and-set lost): read again
    └── UsageError         the caller asked for something that cannot be done (bad argument)

Each class carries ``exit_code`` for the command line and ``http_status`` for
the gateway, so every surface renders errors the same way; ``fields()`` is the
structured part the gateway sends and the client raises again.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


class SaferoomError(Exception):
    """Root of every error saferoom raises on purpose."""

    exit_code = 1
    http_status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def fields(self) -> dict[str, object]:
        return {}


@dataclass(frozen=True)
class Problem:
    """One mistake in a policy file: its line, the key path as the file writes it, and what to fix."""

    line: int | None
    key: str
    message: str


MAX_PROBLEMS = 20  # past this, more lines hide the first fixes rather than help


class PolicyError(SaferoomError):
    """The policy file is malformed, inconsistent or refers to something missing.

    ``file`` and ``line`` point at the first problem; ``problems`` holds every one found, sorted by line.
    """

    exit_code = 2
    http_status = 500

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 problems: Sequence[Problem] = ()) -> None:
        super().__init__(_located(message, file, line))
        self.file = file
        self.line = line
        self.detail = message
        self.problems = tuple(problems) or (Problem(line, "", message),)

    @classmethod
    def of(cls, problems: Iterable[Problem], *, file: str | None) -> PolicyError:
        """One error for all the problems a check found, so a single edit-and-retry fixes them all."""
        found = sorted(problems, key=lambda p: (p.line is None, p.line or 0))
        if len(found) == 1:
            return cls(found[0].message, file=file, line=found[0].line, problems=found)
        shown = [f"\n  line {p.line}: {p.message}" if p.line else f"\n  {p.message}" for p in found[:MAX_PROBLEMS]]
        if len(found) > MAX_PROBLEMS:
            shown.append(f"\n  and {len(found) - MAX_PROBLEMS} more")
        return cls(f"{len(found)} problems in the policy:" + "".join(shown), file=file, line=found[0].line, problems=found)


def _located(message: str, file: str | None, line: int | None) -> str:
    if not file:
        return message
    return f"{file}:{line}: {message}" if line else f"{file}: {message}"


class QueryRejected(SaferoomError):
    """The guard refused the query. The message explains the rule in plain words."""

    exit_code = 3
    http_status = 403

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

    def fields(self) -> dict[str, object]:
        return {"column": self.column, "tag": self.tag, "threats": list(self.threats), "allowed_roles": list(self.allowed_roles)}


class AccessDenied(SaferoomError):
    """The user is unknown, or asked to act as a role they do not hold."""

    exit_code = 4
    http_status = 403


class EngineError(SaferoomError):
    """The database refused or failed to run a guarded query."""

    exit_code = 5
    http_status = 400


class BuildError(SaferoomError):
    """A build failed before it swapped anything in; the previous target is untouched."""

    exit_code = 6
    http_status = 500


class AuthError(SaferoomError):
    """No valid credential: missing, malformed, expired, revoked or forged."""

    exit_code = 7
    http_status = 401


class AuditError(SaferoomError):
    """The audit log cannot be written; the query does not run."""

    exit_code = 8
    http_status = 503


class LimitExceeded(SaferoomError):
    """A role's limit was reached: bytes per day, concurrent queries or statement time."""

    exit_code = 9
    http_status = 429


class TooLarge(LimitExceeded):
    """A request body or SQL text larger than the gateway accepts."""

    http_status = 413


class QueryCancelled(SaferoomError):
    """A query stopped before it finished: its client hung up, or the gateway is shutting down."""

    exit_code = 11
    http_status = 503


class PackagesError(SaferoomError):
    """A package sync failed (unreachable upstream, tampered wheel); the previous snapshot is untouched."""

    exit_code = 10
    http_status = 502


class PackagesRefused(SaferoomError):
    """A snapshot was published, but without top-level requirements the policy refused; scripts must notice."""

    exit_code = 12
    http_status = 409


class NotFound(SaferoomError):
    """The thing asked for does not exist (a package, a file)."""

    exit_code = 2
    http_status = 404


class RoomError(SaferoomError):
    """A room's sandbox cannot be built here (no bubblewrap, no namespaces, no account to run as); nothing runs."""

    exit_code = 13
    http_status = 500


class RequestRefused(SaferoomError):
    """A release, access or package request step that its state or its reviewers' rules do not allow."""

    exit_code = 14
    http_status = 409


class StateConflict(SaferoomError):
    """A record of the gateway's state changed since it was read (compare-and-set lost): read it again and retry."""

    exit_code = 15
    http_status = 409


class UsageError(SaferoomError):
    """A bad argument from the caller: a missing file, an unknown format, SQL that does not parse."""

    exit_code = 2
    http_status = 400


ERRORS: dict[str, type[SaferoomError]] = {
    cls.__name__: cls
    for cls in (SaferoomError, PolicyError, QueryRejected, AccessDenied, EngineError, BuildError, AuthError,
                AuditError, LimitExceeded, TooLarge, QueryCancelled, PackagesError, PackagesRefused, NotFound, RoomError, RequestRefused,
                StateConflict, UsageError)
}


def from_fields(kind: str, message: str, fields: dict[str, object]) -> SaferoomError:
    """Rebuild an error the gateway sent, as the same class the embedded session raises."""
    cls = ERRORS.get(kind, SaferoomError)
    if cls is QueryRejected:
        return QueryRejected(message, **{k: v for k, v in fields.items() if k in ("column", "tag", "threats", "allowed_roles")})  # type: ignore[arg-type]
    error = cls.__new__(cls)
    SaferoomError.__init__(error, message)
    return error


def closest(written: object, names: Iterable[object]) -> str | None:
    """The closest of ``names`` to a misspelt name, or None. The caller passes only names the reader may
    know of: a hint is itself a disclosure."""
    close = difflib.get_close_matches(str(written).lower(), sorted(str(n) for n in names), n=1)
    return close[0] if close else None


def did_you_mean(written: str, names: Iterable[str]) -> str:
    """`` Did you mean `x`?`` for the closest of ``names`` to a misspelt name, or nothing.

    >>> did_you_mean("ammount", ["amount", "order_id"])
    ' Did you mean `amount`?'
    """
    close = closest(written, names)
    return f" Did you mean `{close}`?" if close else ""
