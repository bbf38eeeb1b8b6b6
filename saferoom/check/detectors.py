"""Personal data, each kind with a validator from a maintained library so look-alikes do not ring.

A detector is a regular expression that polars runs over a whole column at once (the prefilter), and a
validator that runs in Python only on each distinct match: libphonenumber for phones, python-stdnum for
SSNs, IBANs, BICs and the Luhn check, the standard ``ipaddress`` for addresses. A validator returns the
value to report (a match may carry more than the value) or None. Nothing loops over cells in Python.
Secrets come from a maintained rule set instead: see ``rules.py``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

import phonenumbers
from stdnum import bic as stdnum_bic
from stdnum import iban as stdnum_iban
from stdnum import luhn
from stdnum.us import ssn as stdnum_ssn

Validator = Callable[[str], str | None]


@dataclass(frozen=True)
class Detector:
    kind: str
    rule: str
    pattern: str
    valid: Validator
    blank: str | None = None  # text this detector must not see: an IBAN's digits are no card, an OID's no address


def _only(test: Callable[[str], bool]) -> Validator:
    """A yes/no check as a validator that reports the match itself."""
    return lambda text: text if test(text) else None


def _context_value(text: str) -> str:
    """A match that starts with its context word (``SSN: 078051121``): the value is what follows."""
    found = re.search(r"[\d(+][\d ().-]*\d|[A-Z0-9]{8,11}$", text)
    return found.group(0) if found else text


# Issuer prefixes with the lengths that issuer uses: any Luhn-valid number of a plausible issuer is a card.
# Prefixes per ISO/IEC 7812 issuer tables: UATP, Mir, Mastercard, Amex, Diners, JCB, Visa, Dankort,
# Maestro, Discover, RuPay, UnionPay.
_ISSUERS: tuple[tuple[str, tuple[int, ...]], ...] = (
    (r"1", (15,)), (r"220[0-4]", tuple(range(16, 20))), (r"2(?:2[2-9]|[3-6]\d|7[01]|720)", (16,)),
    (r"3[47]", (15,)), (r"3(?:0[0-5]|[689])", tuple(range(14, 20))), (r"35(?:2[89]|[3-8]\d)", tuple(range(16, 20))),
    (r"4", (13, 16, 19)), (r"5019|4571", (16,)), (r"5[1-5]", (16,)), (r"5[06-8]|6", tuple(range(12, 20))),
)


def card(text: str) -> bool:
    digits = re.sub(r"\D", "", text)
    if len(set(digits)) == 1 or not luhn.is_valid(digits):
        return False
    return any(re.match(prefix, digits) and len(digits) in lengths for prefix, lengths in _ISSUERS)


def ssn(text: str) -> str | None:
    """Any separator (or none, with context); stdnum knows the never-issued areas and the advertising numbers."""
    value = _context_value(text)
    digits = re.sub(r"\D", "", value)
    return value if len(digits) == 9 and stdnum_ssn.is_valid(digits) else None


def iban(text: str) -> str | None:
    """The longest valid IBAN the match starts with: a trailing word in capitals is not part of it."""
    parts = re.split(r"([ -])", text)
    while parts:
        candidate = "".join(parts)
        if stdnum_iban.is_valid(candidate.replace("-", " ")):
            return candidate
        parts = parts[:-2]
    return None


def bic(text: str) -> str | None:
    value = _context_value(text)
    return value if stdnum_bic.is_valid(value) else None


def email(text: str) -> bool:
    domain = text.rsplit("@", 1)[-1].lower()
    return not (domain.endswith(("example.com", "example.org", "example.net", ".example", ".test", ".invalid", ".localhost"))
                or domain in ("example.com", "test.com", "localhost"))


def phone(text: str) -> str | None:
    """International numbers for their own region; national ones as US/Canadian, or with a context word, any region."""
    value = _context_value(text)
    try:
        number = phonenumbers.parse(value, None if value.startswith("+") else "US")
    except phonenumbers.NumberParseException:
        number = None
    if number is not None and phonenumbers.is_valid_number(number):
        return None if _fictional(number) else value
    ssn_shaped = re.fullmatch(r"\d{3}([ .-])\d{2}\1\d{4}", value)  # an SSN, whatever word precedes it
    # "number" is a weak context word: the value must then look like a whole phone number, not a short id
    weak = re.match(r"(?i)number", text) is not None and len(re.sub(r"\D", "", value)) < 9
    return value if value != text and not ssn_shaped and not weak and _valid_somewhere(value) else None


def _fictional(number: phonenumbers.PhoneNumber) -> bool:
    """North American 555-0100 to 555-0199 are reserved for fiction, whatever the area code."""
    national = str(number.national_number)
    return number.country_code == 1 and national[3:6] == "555" and national[6:8] == "01"


def _valid_somewhere(value: str) -> bool:
    for region in phonenumbers.SUPPORTED_REGIONS:
        try:
            if phonenumbers.is_valid_number(phonenumbers.parse(value, region)):
                return True
        except phonenumbers.NumberParseException:
            continue
    return False


def address(text: str) -> str | None:
    """An IPv6 match carries the character on either side (so ``2001::db8::1`` is not read in pieces)."""
    found = re.search(r"[0-9A-Fa-f:][0-9A-Fa-f:.]*", text)
    value = found.group(0).rstrip(".") if found else ""  # a sentence's full stop is not part of it
    return value if value and ip(value) else None


def ip(text: str) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    documentation = ipaddress.ip_network("2001:db8::/32")
    reserved = address.version == 4 and address.is_reserved  # IPv6's "reserved" is most of the unallocated space
    return not (address.is_loopback or address.is_unspecified or reserved or address.is_multicast
                or address.is_link_local or (address.version == 6 and address in documentation)
                or text.startswith(("192.0.2.", "198.51.100.", "203.0.113.")))  # documentation ranges


_IBAN = r"\b[A-Z]{2}\d{2}(?:[ -]?[A-Z0-9]{4}){2,7}(?:[ -]?[A-Z0-9]{1,3})?\b"
_HEX = "[0-9A-Fa-f]{1,4}"
_PHONE_WORDS = r"(?i:phone|tel|telephone|mobile|mob|cell|call|fax|whatsapp|number)"
_SSN_WORDS = r"(?i:ssn|social security(?: number| no\.?)?|ss#)"

DETECTORS: tuple[Detector, ...] = (
    Detector("card-number", "Luhn-valid payment card number with an issuer's prefix and length",
             r"\b(?:\d{4}[ -]){3}\d{4}(?:[ -]\d{3})?\b|\b\d{4}[ -]\d{6}[ -]\d{4,5}\b|\b\d{13,19}\b", _only(card), blank=_IBAN),
    Detector("ssn", "US Social Security number (python-stdnum: issued areas, groups and serials)",
             rf"\b\d{{3}}-\d{{2}}-\d{{4}}\b|\b\d{{3}} \d{{2}} \d{{4}}\b|\b\d{{3}}\.\d{{2}}\.\d{{4}}\b|\b{_SSN_WORDS}\W{{0,3}}\d{{9}}\b", ssn),
    Detector("email", "email address (documentation domains excluded)", r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b", _only(email)),
    Detector("phone", "phone number (libphonenumber-valid for its region)",
             r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)|\d{1,4})(?:[ .-]?\d{1,5}){1,5}\b|(?:\+\d{1,3}[ .-]?)?\(?\b\d{3}\)?[ .-]?\d{3}[ .-]\d{4}\b"
             rf"|\b{_PHONE_WORDS}\b[^\d+(\n]{{0,12}}\(?\d[\d ().-]{{6,16}}\d\b", phone),
    Detector("iban", "IBAN (python-stdnum: country format and mod-97 checksum)", _IBAN, iban),
    Detector("bic", "BIC / SWIFT code named as such (python-stdnum)", r"\b(?i:bic|swift)(?i: code)?\W{0,3}[A-Z]{6}[A-Z0-9]{2}(?:[A-Z0-9]{3})?\b", bic),
    Detector("ip-address", "IP address (loopback, link-local and documentation ranges excluded)",
             rf"\b(?:\d{{1,3}}\.){{3}}\d{{1,3}}\b|(?:^|[^:\w])(?:(?:{_HEX}:){{7}}{_HEX}|(?:{_HEX}:){{1,6}}(?::{_HEX}){{1,6}})(?:$|[^:\w])",
             address, blank=r"(?i)\b(?:version|ver\.?|v)\s*\d+(?:\.\d+)+|\b\d+(?:\.\d+){4,}"),
    Detector("connection-string", "connection string with a password",
             r"\b[a-z][a-z0-9+.-]*://[^\s:/@]+:[^\s@/]{3,}@[^\s/]+",
             _only(lambda t: not re.search(r"://[^:]+:(\*+|<[^>]+>|\$\{?\w+\}?|password)@", t))),
)
