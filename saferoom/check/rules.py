"""Secrets found by a maintained rule set: gitleaks' default configuration, shipped as data.

``rules/gitleaks.toml`` is gitleaks' own file (MIT, ``rules/gitleaks.LICENSE``), its release in
``rules/gitleaks.version``; ``scripts/update-check-rules.py`` replaces both. Each rule carries a regex,
keywords, an entropy floor and allowlists. The keywords are the prefilter (one Aho-Corasick pass over
every cell, as gitleaks does), the regex runs only on cells holding one of its rule's keywords, and the
entropy floor and allowlists judge each distinct secret once.

gitleaks writes Go (RE2) regexes; polars runs Rust's, which agree on nearly everything. ``rust_regex``
closes the two gaps that matter: Go's ``\\w``, ``\\d``, ``\\s`` and ``\\b`` are ASCII (Rust's are Unicode,
which also makes the generic rule too large to compile), and Go reads a ``{`` that starts no repetition
as a literal.
"""

from __future__ import annotations

import math
import re
import tomllib
import warnings
from collections import Counter
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

RULES_DIR = Path(__file__).parent / "rules"
RULES_FILE = RULES_DIR / "gitleaks.toml"
VERSION_FILE = RULES_DIR / "gitleaks.version"
EXTRA_FILE = RULES_DIR / "saferoom.toml"
_ASCII = {"w": "0-9A-Za-z_", "d": "0-9", "s": "\\t\\n\\f\\r "}
_QUANTIFIER = re.compile(r"\{\d+(?:,\d*)?\}")
SHORT_KEYWORD = 2


@dataclass(frozen=True)
class Allowlist:
    """What a rule lets through: regexes over the secret, the match or the line, stopwords in the secret."""

    regexes: tuple[str, ...] = ()
    target: str = "secret"
    stopwords: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    all_of: bool = False  # gitleaks' condition = "AND": every listed check must hold


@dataclass(frozen=True)
class Rule:
    id: str
    description: str
    regex: str
    keywords: tuple[str, ...]
    entropy: float = 0.0
    group: int = 0
    allowlists: tuple[Allowlist, ...] = ()
    source: str = "gitleaks"  # or "saferoom", for the few rules saferoom adds in rules/saferoom.toml
    shortest: int = 0  # no shorter text can match: a prefilter as cheap as reading a string's length


@dataclass(frozen=True)
class RuleSet:
    name: str
    version: str
    rules: tuple[Rule, ...]
    allowlist: Allowlist

    @property
    def keywords(self) -> list[str]:
        return sorted({k for r in self.rules for k in r.keywords})

    @property
    def keyword_pattern(self) -> str:
        """Every keyword as one case-blind regex: Rust runs a literal alternation faster than Aho-Corasick here."""
        return "(?i:" + "|".join(re.escape(k) for k in self.keywords) + ")"

    @property
    def candidate_pattern(self) -> str:
        """What a text needs for any rule to match it, tighter than the keywords alone: a keyword of one or two
        characters (``sk``, ``ey``, ``s.``) is in every other word, so there its rule's own regex stands in, which
        a finding needs anyway; or the keyword with a ``<`` (a tag is read as a space before rules run)."""
        needs = {re.escape(k) for r in self.rules for k in r.keywords if len(k) > SHORT_KEYWORD}
        for rule in self.rules:
            for short in (re.escape(k) for k in rule.keywords if len(k) <= SHORT_KEYWORD):
                needs |= {f"(?:{rule.regex})", f"(?s:(?i:{short}).*<|<.*(?i:{short}))"}
        return "(?i:" + "|".join(sorted(needs)) + ")"

    @property
    def shortest(self) -> int:
        return min((r.shortest for r in self.rules), default=0)


@cache
def ruleset(path: Path = RULES_FILE, version_file: Path = VERSION_FILE, extra: Path = EXTRA_FILE) -> RuleSet:
    """The shipped rule set with saferoom's extra allowlists, read once."""
    config, additions = _toml(path), _toml(extra) if extra.exists() else {}
    version = version_file.read_text().split()[0] if version_file.exists() else "unknown"
    added: dict[str, list[dict[str, Any]]] = {}
    for entry in additions.get("allowlists", []):
        added.setdefault(entry["rule"], []).append(entry)
    rules = [_rule(r, added.get(r["id"], [])) for r in config.get("rules", []) if "regex" in r]  # path-only rules name files
    rules += [replace(_rule(r, []), source="saferoom") for r in additions.get("rules", [])]
    return RuleSet("gitleaks", version, tuple(rules), _allowlist(config.get("allowlist", {})))


def _toml(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        return tomllib.load(f)


def _rule(raw: dict[str, Any], extra: list[dict[str, Any]]) -> Rule:
    allowlists = [*raw.get("allowlists", []), *extra]
    return Rule(raw["id"], raw.get("description", raw["id"]), rust_regex(raw["regex"]),
                tuple(k.lower() for k in raw.get("keywords", [])), float(raw.get("entropy", 0.0)),
                int(raw.get("secretGroup", 0)), tuple(_allowlist(a) for a in allowlists), shortest=shortest(raw["regex"]))


def shortest(go: str) -> int:
    """The fewest characters a match can have, by Python's parser; 0 (no prefilter) for what it cannot read.

    Case flags do not change a width, so they are dropped first: Python refuses them mid-pattern, Go does not;
    a POSIX class (``[[:alnum:]]``), which Python would read as two characters, becomes one letter.
    """
    go = re.sub(r"\[:\w+:\]", "a", re.sub(r"\(\?i\)", "", go))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "possible nested set": a POSIX class, read by Go as meant
        try:
            low, _ = re._parser.parse(go.replace("\\z", "\\Z")).getwidth()  # type: ignore[attr-defined]
        except (re.error, OverflowError, ValueError):
            return 0
    return int(low)


def _allowlist(raw: dict[str, Any]) -> Allowlist:
    return Allowlist(tuple(rust_regex(r) for r in raw.get("regexes", [])), raw.get("regexTarget", "secret"),
                     tuple(s.lower() for s in raw.get("stopwords", [])), tuple(raw.get("paths", [])),
                     raw.get("condition", "OR").upper() == "AND")


def rust_regex(go: str) -> str:
    """A Go (RE2) regex as the same regex for Rust: ASCII classes and boundaries, literal braces escaped."""
    out: list[str] = []
    i, in_class = 0, False
    while i < len(go):
        char = go[i]
        if char == "\\" and i + 1 < len(go):
            out.append(_escape(go[i + 1], in_class))
            i += 2
            continue
        if char == "[" and not in_class:
            in_class = True
            out.append(char)
            i += 1
            if go[i:i + 1] == "^":
                out.append("^")
                i += 1
            if go[i:i + 1] == "]":  # a leading ] is a literal
                out.append("\\]")
                i += 1
            continue
        if char == "[" and in_class and go[i:i + 2] == "[:":
            end = go.index(":]", i) + 2
            out.append(go[i:end])
            i = end
            continue
        if char == "]" and in_class:
            in_class = False
        elif char == "{" and not in_class and not _QUANTIFIER.match(go, i):
            char = "\\{"
        out.append(char)
        i += 1
    return "".join(out)


def _escape(letter: str, in_class: bool) -> str:
    if letter in _ASCII:
        return _ASCII[letter] if in_class else f"[{_ASCII[letter]}]"
    if letter.upper() in _ASCII and letter.isupper():
        return f"[^{_ASCII[letter.lower()]}]"  # Rust nests classes, so this holds inside one too
    if letter in "bB" and not in_class:
        return f"(?-u:\\{letter})"
    return f"\\{letter}"


def entropy(text: str) -> float:
    """Shannon entropy in bits per character, as gitleaks computes it."""
    if not text:
        return 0.0
    return -sum(n / len(text) * math.log2(n / len(text)) for n in Counter(text).values())
