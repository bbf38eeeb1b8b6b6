"""What counts as sensitive, each with a validator so look-alikes do not ring.

A detector is a regular expression that polars runs over a whole column at
once (the prefilter), and a validator that runs in Python only on what the
expression matched (Luhn, issued SSN ranges, IBAN checksums, real phone
numbers). Nothing loops over cells in Python.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import phonenumbers


@dataclass(frozen=True)
class Detector:
    kind: str
    rule: str
    pattern: str
    valid: Callable[[str], bool]
    group: int = 0


def luhn(text: str) -> bool:
    digits = [int(c) for c in text if c.isdigit()]
    if not 13 <= len(digits) <= 19 or len(set(digits)) == 1:
        return False
    total = 0
    for i, digit in enumerate(reversed(digits)):
        doubled = digit * 2 if i % 2 else digit
        total += doubled - 9 if doubled > 9 else doubled
    return total % 10 == 0 and _issuer(digits)


def _issuer(digits: list[int]) -> bool:
    """Plausible issuer ranges, each with the lengths that issuer uses."""
    text = "".join(map(str, digits))
    n, two, four = len(text), int(text[:2]), int(text[:4])
    if text[0] == "4":
        return n in (13, 16, 19)  # Visa
    if 51 <= two <= 55 or 2221 <= four <= 2720:
        return n == 16  # Mastercard
    if two in (34, 37):
        return n == 15  # American Express
    if text.startswith(("6011", "65", "62")) or 3528 <= four <= 3589:
        return 16 <= n <= 19  # Discover, UnionPay, JCB
    return (two in (36, 38) or 300 <= int(text[:3]) <= 305) and 14 <= n <= 19  # Diners


def ssn(text: str) -> bool:
    area, group, serial = text[:3], text[4:6], text[7:]
    return area not in ("000", "666") and not area.startswith("9") and group != "00" and serial != "0000" and text not in (
        "078-05-1120", "219-09-9999")  # the two famous advertising SSNs


def iban(text: str) -> bool:
    compact = text.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34:
        return False
    rotated = compact[4:] + compact[:4]
    number = "".join(str(int(c, 36)) for c in rotated)
    return int(number) % 97 == 1


def email(text: str) -> bool:
    domain = text.rsplit("@", 1)[-1].lower()
    return not (domain.endswith(("example.com", "example.org", "example.net", ".example", ".test", ".invalid", ".localhost"))
                or domain in ("example.com", "test.com", "localhost"))


def phone(text: str) -> bool:
    try:
        number = phonenumbers.parse(text, "US")
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_valid_number(number) and not re.fullmatch(r"\+?1?[ .-]?\(?555\)?[ .-]?01\d\d", text.strip())


def ip(text: str) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return not (address.is_loopback or address.is_unspecified or address.is_reserved or address.is_multicast
                or text.startswith(("192.0.2.", "198.51.100.", "203.0.113.")))  # documentation ranges


def entropy(text: str) -> bool:
    value = text.strip("'\"")
    if len(value) < 20 or value.isdigit() or re.fullmatch(r"[a-f0-9]{32}|[a-f0-9]{40}|[a-f0-9]{64}", value):
        return False  # hashes and ids are not secrets by themselves
    counts = {c: value.count(c) for c in set(value)}
    bits = -sum(n / len(value) * math.log2(n / len(value)) for n in counts.values())
    return bits > 4.0 and any(c.isdigit() for c in value) and any(c.isalpha() for c in value)


def always(_text: str) -> bool:
    return True


DETECTORS: tuple[Detector, ...] = (
    Detector("card-number", "Luhn-valid payment card number in a known issuer range",
             r"\b(?:\d{4}[ -]){3}\d{4}(?:[ -]\d{3})?\b|\b\d{4}[ -]\d{6}[ -]\d{5}\b|\b\d{13,19}\b", luhn),
    Detector("ssn", "US Social Security number (issued ranges)", r"\b\d{3}-\d{2}-\d{4}\b", ssn),
    Detector("email", "email address (documentation domains excluded)", r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b", email),
    Detector("phone", "phone number (libphonenumber-valid)", r"(?:\+\d{1,3}[ .-]?)?\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4}\b", phone),
    Detector("iban", "IBAN (mod-97 checksum)", r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b", iban),
    Detector("ip-address", "IP address (loopback and documentation ranges excluded)", r"\b(?:\d{1,3}\.){3}\d{1,3}\b", ip),
    Detector("private-key", "private key block", r"-----BEGIN (?:RSA |EC |OPENSSH |DSA |ENCRYPTED )?PRIVATE KEY-----", always),
    Detector("cloud-key", "cloud access key id", r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b|\bAIza[0-9A-Za-z_-]{35}\b", always),
    Detector("connection-string", "connection string with a password",
             r"\b[a-z][a-z0-9+.-]*://[^\s:/@]+:[^\s@/]{3,}@[^\s/]+", lambda t: not re.search(r"://[^:]+:(\*+|<[^>]+>|\$\{?\w+\}?|password)@", t)),
    Detector("bearer-token", "bearer token", r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{20,}", always),
    Detector("secret-assignment", "high-entropy string assigned to a secret-looking name",
             r"(?i)(?:secret|token|passw(?:or)?d|api[_-]?key|access[_-]?key|private[_-]?key)\w*\s*[:=]\s*['\"]?([A-Za-z0-9+/=_.-]{20,})",
             entropy, group=1),
)
