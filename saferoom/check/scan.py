"""Run the detectors, the fingerprint index and the disclosure rules over cells."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from saferoom.check.cells import PLACE
from saferoom.check.detectors import DETECTORS, Detector
from saferoom.check.rules import ruleset
from saferoom.check.secrets import find_secrets

if TYPE_CHECKING:
    from saferoom.secrets import Secret

COUNT_COLUMN = re.compile(r"^(n|count|cnt|num|number|freq|frequency|patients|customers|people|.*_count|.*_n|n_.*)$", re.I)
SUPPRESSED = {"*", "<10", "< 10", "c", "~", "suppressed", "redacted", "[suppressed]", "x"}
SAFEROOM_RULES = "saferoom"
TOTAL = re.compile(r"(?i)^(total|all|overall|sum)$")


@dataclass(frozen=True)
class Finding:
    kind: str
    file: str
    location: str
    rule: str
    preview: str
    sha256: str
    rule_id: str = ""  # the detector or the rule set's rule that matched
    ruleset: str = ""  # "saferoom" for the personal-data detectors, else the secret rule set's name
    ruleset_version: str = ""

    def __post_init__(self) -> None:
        if not self.rule_id:  # saferoom's own checks name their rule by their kind
            object.__setattr__(self, "rule_id", self.kind)
            object.__setattr__(self, "ruleset", SAFEROOM_RULES)
            object.__setattr__(self, "ruleset_version", saferoom_version())

    def to_dict(self) -> dict[str, str]:
        return self.__dict__.copy()


def mask(value: str) -> str:
    """Enough to find it again, never the value: first and last two characters."""
    value = value.strip()
    return f"{value[:2]}{'*' * max(3, len(value) - 4)}{value[-2:]}" if len(value) >= 8 else "*" * max(3, len(value))


def digest(value: str) -> str:
    return hashlib.sha256(value.strip().encode()).hexdigest()


def location(row: int | None, column: str | None, cell_line: int | None = None) -> str:
    """Where a cell is, as its format names it: a line, a table's row and column, a notebook cell's line."""
    if column == "bytes":
        return f"byte {row}"
    if cell_line is not None:
        return f"cell {row}, {column}, line {cell_line}"
    if column and row:
        return f"row {row}, column {column}"
    if column and column.startswith(("$", "source", "output", "image")):
        return f"{column} (cell {row})" if row else column
    if column:
        return f"header, column {column}"
    return f"line {row}"


ANY = "|".join(f"(?:{d.pattern})" for d in DETECTORS)


@cache
def prefilter() -> str:
    """One regex for every detector's pattern and every secret rule's keyword: a cell it misses holds no finding."""
    return f"{ANY}|{ruleset().candidate_pattern}"


def detect(cells: pl.DataFrame, *, text: bool = True) -> list[Finding]:
    """Personal data, then secrets by the rule set.

    A table's cells are read once by one regex holding every detector's pattern and every rule's keyword;
    only the cells it matches go further. A text's lines all go to the secret rules, since a key block's
    body lines hold no keyword: they are joined there, and only the joined texts are prefiltered.
    """
    if not text:
        cells = cells.filter(pl.col("text").str.contains(prefilter()))
    return _once_per_chunked_value(personal(cells) + secrets(cells, text=text))


def personal(cells: pl.DataFrame) -> list[Finding]:
    """One pass over everything with all patterns at once; each detector then reads only those hits."""
    candidates = cells.filter(pl.col("text").str.contains(ANY))
    findings: list[Finding] = []
    for detector in DETECTORS:
        findings += _detected(detector, candidates)
    return findings


def _detected(detector: Detector, candidates: pl.DataFrame) -> list[Finding]:
    if detector.blank is not None:  # text another kind owns (an IBAN's digits) is blanked for this one
        candidates = candidates.with_columns(pl.col("text").str.replace_all(detector.blank, " "))
    hits = candidates.filter(pl.col("text").str.contains(detector.pattern))
    if hits.is_empty():
        return []
    matches = hits.with_columns(pl.col("text").str.extract_all(detector.pattern).alias("match")).explode("match")
    valid = _valid(detector, matches.get_column("match").drop_nulls().unique().to_list())
    if not valid:
        return []
    rows = matches.filter(pl.col("match").is_in(list(valid))).select("file", "row", "column", "cell_line", "match").iter_rows()
    return [Finding(detector.kind, file, location(row, column, line), detector.rule, mask(valid[match]), digest(valid[match]))
            for file, row, column, line, match in rows]


def secrets(cells: pl.DataFrame, *, text: bool = True) -> list[Finding]:
    rules = ruleset()
    findings = []
    for hit in find_secrets(cells, rules, text=text):
        name, version = (rules.name, rules.version) if hit.rule.source == rules.name else (SAFEROOM_RULES, saferoom_version())
        findings.append(Finding("secret", hit.file, location(hit.row, hit.column, hit.cell_line), f"{hit.rule.id} ({name} {version})",
                                mask(hit.secret), digest(hit.secret), hit.rule.id, name, version))
    return findings


def saferoom_version() -> str:
    from saferoom import __version__

    return __version__


def _once_per_chunked_value(findings: list[Finding]) -> list[Finding]:
    """Overlapping chunks of a huge file can show one match twice; report it once."""
    seen: set[tuple[str, str, str]] = set()
    kept = []
    for finding in findings:
        key = (finding.file, finding.kind, finding.sha256)
        if finding.location.startswith("byte "):
            if key in seen:
                continue
            seen.add(key)
        kept.append(finding)
    return kept


def _valid(detector: Detector, matches: list[str]) -> dict[str, str]:
    """Each distinct match is validated once, however often it repeats: match -> the value it carries."""
    values = {m: detector.valid(m) for m in matches}
    return {m: value for m, value in values.items() if value}


def fingerprint_matches(cells: pl.DataFrame, key: Secret, index: list[object]) -> list[Finding]:
    """Cells, and word runs of up to three words in text, that equal a real value the build removed."""
    import duckdb
    import numpy as np

    from saferoom.keyed import fingerprint_function
    from saferoom.split.fingerprints import contains

    candidates = _candidates(cells)
    if candidates.is_empty():
        return []
    with duckdb.connect() as con:
        fingerprint_function(con, key)
        con.register("candidates", candidates.select("value").unique().to_arrow())
        hashed = con.sql("SELECT value, memory.main.__saferoom_fingerprint(value) AS h FROM candidates").pl()
    found = hashed.filter(pl.Series(contains(index, hashed.get_column("h").to_numpy().astype(np.uint64))))  # type: ignore[arg-type]
    hits = candidates.join(found.select("value"), on="value")
    return [Finding("real-value", file, location(row, column, line), "equals a real sensitive value (fingerprint index)",
                    mask(value), digest(value)) for file, row, column, line, value in hits.select(*PLACE, "value").iter_rows()]


def _candidates(cells: pl.DataFrame) -> pl.DataFrame:
    """Whole cells, and in free text every run of one to three words (names hide in sentences)."""
    whole = cells.select(*PLACE, pl.col("text").str.strip_chars().alias("value"))
    prose = cells.filter(pl.col("column").is_null() | pl.col("column").str.starts_with("source")
                         | pl.col("column").str.starts_with("output"))
    words = prose.with_columns(pl.col("text").str.extract_all(r"[\w.@'+-]+").alias("w"))
    runs = [whole]
    for size in (1, 2, 3):
        gram = pl.concat_str([pl.element().shift(-i) for i in range(size)], separator=" ")
        runs.append(words.select(*PLACE, pl.col("w").list.eval(gram).alias("value")).explode("value"))
    return pl.concat(runs).drop_nulls("value").filter(pl.col("value").str.len_chars() >= 4)


@dataclass
class TableChecks:
    """The checks that look at a table as a whole, fed a batch at a time: small cells, a suppressed cell
    its total gives back, and dates of birth beside names."""

    label: str
    min_cell: int
    suppressed: dict[str, list[int]] = field(default_factory=dict)  # count column -> rows of its suppressed cells (two at most)
    has_total: bool = False
    births: bool = False

    def add(self, frame: pl.DataFrame, offset: int) -> list[Finding]:
        self.has_total = self.has_total or _has_total(frame)
        findings = self._births(frame)
        for name in frame.columns:
            if COUNT_COLUMN.match(str(name)):
                values = frame.get_column(name).cast(pl.String, strict=False)
                findings += self._small(values, str(name), offset)
                self._suppressed(values, str(name), offset)
        return findings

    def finish(self) -> list[Finding]:
        """One suppressed cell in a count column of a table with a total row: subtraction gives it back."""
        if not self.has_total:
            return []
        return [Finding("recoverable-cell", self.label, location(rows[0], name),
                        "one suppressed cell with its total present: subtraction gives it back", "<suppressed>",
                        digest(f"{self.label}:{rows[0]}:{name}:recoverable")) for name, rows in self.suppressed.items() if len(rows) == 1]

    def _small(self, values: pl.Series, name: str, offset: int) -> list[Finding]:
        numbers = values.cast(pl.Float64, strict=False).to_frame("n").with_row_index("row", offset + 1)
        small = numbers.filter((pl.col("n") > 0) & (pl.col("n") < self.min_cell)).get_column("row").to_list()
        return [Finding("small-cell", self.label, location(row, name), f"a count below the minimum cell size of {self.min_cell}",
                        "<small>", digest(f"{self.label}:{row}:{name}")) for row in small]

    def _suppressed(self, values: pl.Series, name: str, offset: int) -> None:
        rows = values.str.strip_chars().str.to_lowercase().is_in(list(SUPPRESSED)).arg_true().head(2)
        seen = self.suppressed.setdefault(name, [])
        seen += [offset + int(r) + 1 for r in rows][:2 - len(seen)]

    def _births(self, frame: pl.DataFrame) -> list[Finding]:
        """Dates of birth next to names: a birth-date column in a table with a name column, reported once."""
        births = [c for c in frame.columns if BIRTH_COLUMN.match(str(c))]
        names = [c for c in frame.columns if NAME_COLUMN.match(str(c))]
        values = frame.get_column(births[0]).cast(pl.String, strict=False).drop_nulls() if births and names else None
        if self.births or values is None or not len(values):
            return []
        self.births = True
        return [Finding("birth-date", self.label, f"column {births[0]} beside column {names[0]}",
                        "dates of birth next to names", mask(values[0]), digest(f"{self.label}:{births[0]}"))]


def _has_total(frame: pl.DataFrame) -> bool:
    if not frame.width:
        return False
    first = frame.get_column(frame.columns[0]).cast(pl.String, strict=False).fill_null("")
    return bool(first.str.strip_chars().str.contains(TOTAL.pattern).any())


def read_allowlist(path: Path) -> set[str]:
    if not path.exists():
        return set()
    hashes = set()
    for line in path.read_text().splitlines():
        token = line.split("#", 1)[0].strip().removeprefix("sha256:")
        if re.fullmatch(r"[0-9a-f]{64}", token):
            hashes.add(token)
    return hashes


BIRTH_COLUMN = re.compile(r"(?i)^(dob|birth.?date|date.?of.?birth|birthday|born)$")
NAME_COLUMN = re.compile(r"(?i)^(name|full.?name|first.?name|last.?name|surname|given.?name|customer|patient)$")
DATE = r"\b(?:\d{4}-\d{2}-\d{2}|\d{1,2}/\d{1,2}/\d{2,4}|\d{1,2}\.\d{1,2}\.\d{4})\b"
BIRTH_WORDS = r"(?i)\b(?:born|dob|d\.o\.b\.?|date of birth|birth ?date|birthday)\b"


def birth_dates(cells: pl.DataFrame) -> list[Finding]:
    """A date said to be a birth date in text (a table's birth-date columns are ``TableChecks``')."""
    prose = cells.filter(pl.col("column").is_null() | pl.col("column").str.starts_with("source")
                         | pl.col("column").str.starts_with("output"))
    prose = prose.filter(pl.col("text").str.contains(BIRTH_WORDS) & pl.col("text").str.contains(DATE))
    findings = []
    for file, row, column, line, text in prose.select(*PLACE, "text").iter_rows():
        value = re.search(DATE, text).group(0)  # type: ignore[union-attr]
        findings.append(Finding("birth-date", file, location(row, column, line), "a date of birth in text", mask(value), digest(value)))
    return findings
