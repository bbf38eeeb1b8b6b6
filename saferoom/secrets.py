"""Secrets that cannot print themselves, and the references that locate them.

A policy names secrets only by reference (``env:NAME`` or ``file:PATH``); the
value is read at the edge and wrapped in :class:`Secret`, whose ``repr`` and
``str`` are stars, so a traceback, a log line or an f-string cannot reveal it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

REFERENCE_SCHEMES = ("env:", "file:")


class Secret:
    """A secret value. Read it with :meth:`reveal`, and only where it is used."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __str__(self) -> str:
        return "**********"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a Secret cannot be pickled")


def is_reference(text: str) -> bool:
    return text.startswith(REFERENCE_SCHEMES)


def resolve(reference: str, base: Path) -> Secret:
    """Read the secret a reference points at; ``ValueError`` says why it cannot be read."""
    if reference.startswith("env:"):
        name = reference[4:]
        value = os.environ.get(name)
        if not value:
            raise ValueError(f"environment variable {name} is not set; export it before starting saferoom")
        return Secret(value)
    if reference.startswith("file:"):
        path = (base / reference[5:]).expanduser()
        try:
            value = path.read_text().strip()
        except OSError as exc:
            raise ValueError(f"cannot read secret file {path}: {exc.strerror}") from None
        if not value:
            raise ValueError(f"secret file {path} is empty")
        return Secret(value)
    raise ValueError("a secret must be a reference (env:NAME or file:PATH), never the value itself")


def hmac_block(key: Secret) -> bytes:
    """The key as HMAC-SHA256 uses it: hashed first if longer than the 64-byte block (as Python's ``hmac``
    does), then zero-padded to 64 bytes."""
    block = key.reveal().encode()
    block = hashlib.sha256(block).digest() if len(block) > 64 else block
    return block.ljust(64, b"\0")


def hmac_pads(key: Secret) -> tuple[bytes, bytes]:
    """RFC 2104's K ^ ipad and K ^ opad, so engines can compute HMAC-SHA256 with a plain sha256."""
    block = hmac_block(key)
    return bytes(b ^ 0x36 for b in block), bytes(b ^ 0x5C for b in block)
