"""Scan results and messages for anything an analyst must never see."""

from __future__ import annotations

import re
from decimal import Decimal

import pyarrow as pa

from tests.conftest import (
    CANARY_BIRTH,
    CANARY_EMAIL,
    CANARY_NAME,
    CANARY_PAN,
    CANARY_SSN,
    HIDDEN_AMOUNT,
    HIDDEN_ORDER_ID,
)

SUBSTRINGS = ("Zebediah", "Canaryfield", "canaryfield", CANARY_SSN, CANARY_PAN, CANARY_EMAIL, CANARY_NAME, CANARY_BIRTH)
DIGIT_RUNS = re.compile(r"\d{3}-\d{2}-\d{4}|\d{13,19}")


def cells(table: pa.Table) -> list[object]:
    found: list[object] = []
    for column in table.columns:
        for value in column.to_pylist():
            found.extend(_flatten(value))
    return found


def _flatten(value: object) -> list[object]:
    if isinstance(value, dict):
        return [v for item in value.values() for v in _flatten(item)]
    if isinstance(value, (list, tuple)):
        return [v for item in value for v in _flatten(item)]
    return [value]


def leaks(table: pa.Table, secrets: set[str], key: str) -> list[str]:
    problems: list[str] = []
    for value in cells(table):
        text = str(value)
        if text in secrets or key in text:
            problems.append(f"raw value {text[:40]!r}")
        problems += [f"canary {s!r} in {text[:40]!r}" for s in SUBSTRINGS if s in text]
        problems += [f"sensitive run {m!r}" for m in DIGIT_RUNS.findall(text) if m in secrets]
        if value == HIDDEN_ORDER_ID or value == Decimal(HIDDEN_AMOUNT) or text == HIDDEN_AMOUNT:
            problems.append(f"filtered-out row value {text!r}")
        if text.startswith("0.731"):
            problems.append("value of an unclassified column")
    return problems


def message_leaks(message: str, secrets: set[str], key: str) -> list[str]:
    found = [s for s in SUBSTRINGS if s in message]
    if key in message:
        found.append("token key")
    if re.search(r"[0-9a-f]{64,}", message):
        found.append("long hex blob")
    if "/" in message and re.search(r"/(tmp|root|home|work)/", message):
        found.append("filesystem path")
    return found


def assert_refused_or_harmless(session: object, sql: str, secrets: set[str], key: str, unseen: tuple[str, ...] = ()) -> None:
    """A bypass attempt either raises a SaferoomError that leaks nothing, or returns nothing protected."""
    import saferoom

    try:
        table = session.query(sql).to_arrow()  # type: ignore[attr-defined]
    except saferoom.SaferoomError as exc:
        assert not message_leaks(str(exc), secrets, key), str(exc)
        assert not any(s in str(exc) for s in unseen), str(exc)
        return
    assert not leaks(table, secrets, key), sql
