"""Who is asking: personal API tokens, and optionally OIDC bearer tokens (JWT).

A personal token reads ``sr_<id>_<secret>``. Only the SHA-256 of the secret is
stored (``DIR/tokens.json``, mode 0600), looked up by id and compared in
constant time, with an expiry and a revocation flag. The token is shown once,
when it is created.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from saferoom.errors import AuthError, UsageError
from saferoom.files import atomic_write, locked

TOKENS, LOCK = "tokens.json", ".tokens.lock"
JWKS_TIMEOUT = 5.0
_SHAPE = re.compile(r"^sr_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_DUMMY = hashlib.sha256(b"no such token").hexdigest()
_TTL = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@dataclass(frozen=True)
class Identity:
    """A verified caller: the user, the role they asked for, and how they proved it."""

    user: str
    role: str | None
    method: str
    token_id: str | None = None


@dataclass(frozen=True)
class TokenRecord:
    id: str
    user: str
    role: str | None
    created: str
    expires: str | None
    revoked: bool
    secret_sha256: str

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        del data["secret_sha256"]
        return data


def parse_ttl(text: str | None) -> timedelta | None:
    if not text:
        return None
    match = _TTL.match(text.strip())
    if not match:
        raise UsageError(f"--ttl {text!r}: write a number and a unit, like 30d, 12h or 90m")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


class TokenStore:
    """Personal API tokens kept as hashes in ``DIR/tokens.json``."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / TOKENS
        self._lock = threading.Lock()
        self._cache: tuple[tuple[int, int, int], dict[str, TokenRecord]] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def create(self, user: str, role: str | None = None, ttl: timedelta | None = None) -> tuple[str, TokenRecord]:
        """Make a token; the returned string is the only time the secret exists in clear."""
        token, record = new_token(user, role, ttl)
        with self._writing():
            self._save({**self._load(), record.id: record})
        return token, record

    def revoke(self, token_id: str) -> TokenRecord:
        with self._writing():
            records = self._load()
            if token_id not in records:
                raise UsageError(f"no token with id {token_id}; `saferoom token list` shows them")
            revoked = replace(records[token_id], revoked=True)
            self._save({**records, token_id: revoked})
            return revoked

    def renew(self, token_id: str, expires: datetime) -> TokenRecord:
        """Move a token's expiry to ``expires`` (a lease renewed); a revoked token stays revoked."""
        with self._writing():
            records = self._load()
            if token_id not in records:
                raise UsageError(f"no token with id {token_id}; `saferoom token list` shows them")
            renewed = replace(records[token_id], expires=expires.isoformat(timespec="seconds"))
            if not records[token_id].revoked:
                self._save({**records, token_id: renewed})
            return renewed

    def list(self) -> list[TokenRecord]:
        return sorted(self._load().values(), key=lambda r: r.created)

    def verify(self, token: str) -> Identity:
        return check_token(token, self._load().get)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """One writer at a time across processes: two admins at once must not lose a token or undo a revocation."""
        with self._lock, locked(self.path.parent / LOCK):
            yield

    def _load(self) -> dict[str, TokenRecord]:
        """The records (shared, immutable), re-read only when the file changed (`token revoke` from another process)."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return {}
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if self._cache is None or self._cache[0] != stamp:
            data = json.loads(self.path.read_text())
            self._cache = (stamp, {item["id"]: TokenRecord(**item) for item in data})
        return self._cache[1]

    def _save(self, records: dict[str, TokenRecord]) -> None:
        atomic_write(self.path, json.dumps([asdict(r) for r in records.values()], indent=1).encode())


def new_token(user: str, role: str | None, ttl: timedelta | None) -> tuple[str, TokenRecord]:
    """A fresh token and the record kept of it (the secret's hash, never the secret)."""
    token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    created = datetime.now(UTC)
    record = TokenRecord(
        token_id, user, role, created.isoformat(timespec="seconds"),
        (created + ttl).isoformat(timespec="seconds") if ttl else None, False, _hash(secret),
    )
    return f"sr_{token_id}_{secret}", record


def check_token(token: str, lookup: Callable[[str], TokenRecord | None]) -> Identity:
    """Who ``token`` names, with its record found by ``lookup``; compared in constant time, refused unless valid."""
    match = _SHAPE.match(token)
    if not match:
        raise AuthError("the token is malformed; tokens look like sr_<id>_<secret>")
    token_id, secret = match.groups()
    record = lookup(token_id)
    expected = record.secret_sha256 if record else _DUMMY
    if not hmac.compare_digest(_hash(secret), expected) or record is None:
        raise AuthError("the token is not valid")
    if record.revoked:
        raise AuthError("the token was revoked; ask for a new one")
    if record.expires and datetime.fromisoformat(record.expires) <= datetime.now(UTC):
        raise AuthError("the token has expired; ask for a new one")
    return Identity(record.user, record.role, "token", record.id)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class JWTSettings:
    """Bearer JWTs from an identity provider, verified against its JWKS."""

    jwks: str
    audience: str | None = None
    issuer: str | None = None
    claim: str = "sub"


class JWTVerifier:
    def __init__(self, settings: JWTSettings) -> None:
        import jwt

        self.settings = settings
        if settings.jwks.startswith(("http://", "https://")):
            # an identity provider that stops answering costs a request a few seconds, not half a minute
            self._client: Any = jwt.PyJWKClient(settings.jwks, timeout=JWKS_TIMEOUT)
            self._keys = None
        else:
            self._client = None
            self._keys = jwt.PyJWKSet.from_json(Path(settings.jwks).read_text())

    def verify(self, token: str) -> Identity:
        import jwt

        try:
            key = self._key(token)
            claims = jwt.decode(token, key, algorithms=["RS256", "ES256", "EdDSA"],
                                audience=self.settings.audience, issuer=self.settings.issuer,
                                options={"require": ["exp"]})
        except jwt.PyJWKClientConnectionError:
            raise AuthError("the identity provider's keys (JWKS) cannot be fetched, so no bearer token can be checked; "
                            "personal tokens still work") from None
        except jwt.PyJWTError as exc:
            raise AuthError(f"the bearer token is not valid: {exc}") from None
        user = claims.get(self.settings.claim)
        if not isinstance(user, str) or not user:
            raise AuthError(f"the bearer token has no `{self.settings.claim}` claim")
        return Identity(user, None, "jwt")

    def _key(self, token: str) -> Any:
        import jwt

        if self._keys is None:  # keys from the identity provider
            return self._client.get_signing_key_from_jwt(token).key
        kid = jwt.get_unverified_header(token).get("kid")
        for key in self._keys.keys:
            if key.key_id == kid:
                return key.key
        raise AuthError("the bearer token was signed by a key the gateway does not know")


class Tokens(Protocol):
    """Where personal tokens are kept: a state folder's tokens.json, or PostgreSQL (:mod:`saferoom.store`)."""

    def create(self, user: str, role: str | None = None, ttl: timedelta | None = None) -> tuple[str, TokenRecord]: ...
    def revoke(self, token_id: str) -> TokenRecord: ...
    def list(self) -> list[TokenRecord]: ...
    def verify(self, token: str) -> Identity: ...


class Authenticator:
    """Tries personal tokens, then JWTs when configured."""

    def __init__(self, store: Tokens, jwt: JWTVerifier | None = None) -> None:
        self.store, self.jwt = store, jwt

    def identify(self, authorization: str | None) -> Identity:
        if not authorization:
            raise AuthError("no credential: send `Authorization: Bearer <token>` (saferoom login stores one)")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "basic":  # pip sends the token as a password: https://__token__:<token>@host/simple/
            token = _basic_password(token)
        elif scheme.lower() != "bearer" or not token.strip():
            raise AuthError("use `Authorization: Bearer <token>`")
        token = token.strip()
        if token.startswith("sr_") or self.jwt is None:
            return self.store.verify(token)
        return self.jwt.verify(token)


def _basic_password(encoded: str) -> str:
    try:
        return base64.b64decode(encoded.strip(), validate=True).decode().partition(":")[2]
    except (ValueError, UnicodeDecodeError):
        raise AuthError("malformed Basic credentials") from None
