"""The audit key: one secret from outside the state folder, and the two keys derived from it.

The gateway is given the secret as a reference (``--audit-key env:NAME`` or ``file:PATH``), the way a
policy names its secrets; it is never written to the state folder. HKDF-SHA256 derives, under two labels:

- the **chain key**: each record's ``hmac`` is HMAC-SHA256(chain key, the record's hash), and the head's
  slots carry one too, so whoever can only write the state folder cannot re-chain or re-head the log;
- the **checkpoint key**: an Ed25519 key that signs checkpoints. Its public half
  (``saferoom audit public-key``) is all a verifier of a forwarded copy needs; it reveals nothing of the
  secret and can be published.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from saferoom import secrets
from saferoom.errors import UsageError
from saferoom.secrets import Secret

MIN_LENGTH = 32
CHAIN_LABEL, SIGNING_LABEL = b"saferoom audit chain hmac-sha256", b"saferoom audit checkpoint ed25519"
PREFIX = "ed25519:"


def _derive(material: bytes, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(material)


class PublicKey:
    """The public half of the checkpoint key, written ``ed25519:<base64>``."""

    __slots__ = ("_key", "raw")

    def __init__(self, key: Ed25519PublicKey) -> None:
        self._key = key
        self.raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)

    @classmethod
    def parse(cls, text: str) -> PublicKey:
        try:
            if not text.startswith(PREFIX):
                raise ValueError
            return cls(Ed25519PublicKey.from_public_bytes(base64.b64decode(text[len(PREFIX):], validate=True)))
        except (ValueError, binascii.Error):
            raise UsageError(f"not an audit public key (expected {PREFIX}… as `saferoom audit public-key` prints it)") from None

    @classmethod
    def load(cls, value: str) -> PublicKey:
        """The key itself (``ed25519:…``), or a file holding it."""
        if value.startswith(PREFIX):
            return cls.parse(value)
        try:
            return cls.parse(Path(value).expanduser().read_text().strip())
        except OSError as exc:
            raise UsageError(f"cannot read the public key file {value}: {exc.strerror}") from None

    @property
    def id(self) -> str:
        """A short name for the key, carried in each checkpoint."""
        return hashlib.sha256(self.raw).hexdigest()[:16]

    def verify(self, signature: str, data: bytes) -> bool:
        try:
            self._key.verify(base64.b64decode(signature, validate=True), data)
        except (InvalidSignature, ValueError, TypeError, binascii.Error):
            return False
        return True

    def __str__(self) -> str:
        return PREFIX + base64.b64encode(self.raw).decode()

    def __repr__(self) -> str:
        return f"PublicKey({str(self)!r})"


class AuditKey:
    """The audit secret's derived keys. Like :class:`Secret`, it never prints them."""

    __slots__ = ("_chain", "_signer", "public")

    def __init__(self, secret: Secret) -> None:
        material = secret.reveal().encode()
        if len(material) < MIN_LENGTH:
            raise UsageError(f"the audit key is too short; use at least {MIN_LENGTH} random bytes "
                             "(for example `openssl rand -base64 32`)")
        self._chain = _derive(material, CHAIN_LABEL)
        self._signer = Ed25519PrivateKey.from_private_bytes(_derive(material, SIGNING_LABEL))
        self.public = PublicKey(self._signer.public_key())

    @classmethod
    def resolve(cls, reference: str, base: Path | None = None) -> AuditKey:
        """The key a reference (``env:NAME`` or ``file:PATH``) points at; a clear error when it cannot be read."""
        try:
            secret = secrets.resolve(reference, base or Path.cwd())
        except ValueError as exc:
            raise UsageError(f"the audit key cannot be read: {exc}") from None
        return cls(secret)

    def seal(self, digest: str) -> str:
        """A record's ``hmac``: HMAC-SHA256 of its hash under the chain key."""
        return hmac.new(self._chain, digest.encode(), hashlib.sha256).hexdigest()

    def head_mac(self, seq: int, digest: str) -> str:
        """The check of a head slot (64 bits: a slot has 128 bytes)."""
        return hmac.new(self._chain, f"head:{seq}:{digest}".encode(), hashlib.sha256).hexdigest()[:16]

    def sign(self, data: bytes) -> str:
        return base64.b64encode(self._signer.sign(data)).decode()

    def __repr__(self) -> str:
        return "AuditKey('**********')"

    def __str__(self) -> str:
        return "**********"

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("an AuditKey cannot be pickled")
