"""The settings the command line reads, declared once: option, environment variable, default and meaning.

The CLI builds its options from :data:`SETTINGS`, docs/cli.md lists the same table, and a test
keeps the two in step. Precedence is the usual one: an option given on the command line, then the
environment variable, then the default.

A secret has no option, because a command line is visible to every user of the machine (``ps``)
and stays in shell history; it comes from the environment only, wrapped in :class:`Secret`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from saferoom.secrets import Secret


@dataclass(frozen=True)
class Setting:
    name: str
    help: str
    env: str | None = None
    default: str | None = None
    short: str | None = None
    secret: bool = False

    @property
    def flags(self) -> tuple[str, ...]:
        """The option's spellings; a secret has none."""
        if self.secret:
            return ()
        return (f"--{self.name.replace('_', '-')}", *((self.short,) if self.short else ()))


SETTINGS: tuple[Setting, ...] = (
    Setting("policy", "The policy file.", env="SAFEROOM_POLICY", default="saferoom.yaml", short="-p"),
    Setting("user", "Who is asking.", env="SAFEROOM_USER", short="-u"),
    Setting("role", "Act as this role (default: the user's first).", short="-r"),
    Setting("format", "Output format.", default="table", short="-f"),
    Setting("state", "The gateway's state: a folder (tokens, the audit log), or a postgresql:// URL that "
            "several gateways share.", default="saferoom-state"),
    Setting("url", "The gateway to query through when no policy file is at hand (`saferoom login` saves one).",
            env="SAFEROOM_URL"),
    Setting("socket", "The gateway's Unix socket, instead of a URL (a room sets it).", env="SAFEROOM_SOCKET"),
    Setting("token", "Your personal token for that gateway.", env="SAFEROOM_TOKEN", secret=True),
    Setting("admin_password", "The password `saferoom compile --apply|--drop` connects with.",
            env="SAFEROOM_ADMIN_PASSWORD", secret=True),
    Setting("fingerprint_key", "The key a fingerprint index was made with, for `saferoom check --fingerprints` "
            "(or give --policy: the key is derived from its token key).", env="SAFEROOM_FINGERPRINT_KEY", secret=True),
)

_BY_NAME = {s.name: s for s in SETTINGS}


def setting(name: str) -> Setting:
    return _BY_NAME[name]


def default(name: str) -> str:
    """A setting's default; asking for one that has none is a programming error."""
    value = setting(name).default
    if value is None:
        raise KeyError(f"setting {name} has no default")
    return value


def secret(name: str, environ: Mapping[str, str]) -> Secret | None:
    """A secret setting from the environment (``None`` when unset or empty), never as plain text."""
    found = setting(name)
    value = environ.get(found.env) if found.env and found.secret else None
    return Secret(value) if value else None
