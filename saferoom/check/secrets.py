"""Cells matched against the secret rule set, in gitleaks' order: keywords, regex, secret group, entropy, allowlists.

Keywords are found in one Aho-Corasick pass over every cell; a rule's regex then runs only on the cells
holding one of its keywords. A text file's lines are joined back into one document first, so a key block
or a ``curl`` command that spans lines is matched whole, and each finding is placed on its own line.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import polars as pl

from saferoom.check.cells import PLACE
from saferoom.check.rules import Allowlist, Rule, RuleSet, entropy, ruleset

NOTEBOOK_PARTS = ("source", "output ", "image alt text")
GENERIC = "generic-api-key"  # gitleaks' catch-all: dropped where a specific rule found the same secret


@dataclass(frozen=True)
class Hit:
    """One secret a rule found: where (the cell's file, row and column, and the line in a joined text) and what."""

    rule: Rule
    file: str
    row: int | None
    column: str | None
    secret: str
    cell_line: int | None = None  # the line within a notebook cell


def find_secrets(cells: pl.DataFrame, rules: RuleSet | None = None, *, text: bool = True) -> list[Hit]:
    """``text``: the cells may be lines of a text or notebook parts, to be joined first; a table's never are."""
    rules = rules or ruleset()
    docs = (documents(cells) if text else cells.with_columns(pl.lit(False).alias("lines"))).with_row_index("cell")
    long_enough = pl.col("text").str.len_bytes() >= rules.shortest  # a length is read without reading the text
    candidates = docs.filter(long_enough).filter(pl.col("text").str.contains(rules.keyword_pattern))
    if candidates.is_empty():
        return []
    # A tag ends a value as whitespace does: gitleaks' rules end a secret at a quote, space or line end,
    # and would miss a token in <p>…</p> or <apiKey>…</apiKey>.
    candidates = candidates.with_columns(pl.col("text").str.replace_all("<", " <", literal=True))
    hits: list[Hit] = []
    common = replace(rules.allowlist, paths=())  # gitleaks' global list of files to skip: an output is checked whatever its name
    for rule, rows in _per_rule(candidates, rules):
        hits += _rule_hits(rule, rows, common)
    return _without_generic_duplicates(hits)


def documents(cells: pl.DataFrame) -> pl.DataFrame:
    """Table cells as they are; a text's lines, and a notebook cell's, joined into one text each."""
    lines = pl.col("column").is_null() & (pl.col("row") > 0)
    parts = pl.col("column").str.starts_with(NOTEBOOK_PARTS[0]) | pl.col("column").str.starts_with(NOTEBOOK_PARTS[1]) \
        | (pl.col("column") == NOTEBOOK_PARTS[2])
    in_text = cells.select((lines | parts.fill_null(False)).alias("in_text")).to_series()
    joined = cells.filter(in_text).with_columns(
        pl.when(lines).then(None).otherwise(pl.col("row")).alias("key"))
    texts = joined.group_by("file", "key", "column", maintain_order=True).agg(
        pl.col("row").min(), pl.col("cell_line").min(), pl.col("text").str.join("\n")).with_columns(pl.lit(True).alias("lines"))
    rest = cells.filter(~in_text).with_columns(pl.lit(False).alias("lines"))
    return pl.concat([rest.select(*PLACE, "text", "lines"), texts.select(*PLACE, "text", "lines")], how="vertical_relaxed")


def _per_rule(candidates: pl.DataFrame, rules: RuleSet) -> list[tuple[Rule, pl.DataFrame]]:
    """Each rule with the candidate cells that hold one of its keywords (one keyword pass for all rules)."""
    found = candidates.select("cell", pl.col("text").str.extract_many(
        rules.keywords, ascii_case_insensitive=True, overlapping=True).alias("keyword")).explode("keyword")
    present = found.with_columns(pl.col("keyword").str.to_lowercase()).unique()
    cells_by_keyword: dict[str, list[int]] = {}
    for keyword, cells in present.group_by("keyword").agg("cell").iter_rows():
        cells_by_keyword[keyword] = cells
    out = []
    for rule in rules.rules:
        wanted = {c for k in rule.keywords for c in cells_by_keyword.get(k, [])}
        if wanted:
            rows = candidates.filter(pl.col("cell").is_in(list(wanted)) & (pl.col("text").str.len_bytes() >= rule.shortest))
            out.append((rule, rows))
    return out


def _rule_hits(rule: Rule, rows: pl.DataFrame, common: Allowlist) -> list[Hit]:
    hits = rows.filter(pl.col("text").str.contains(rule.regex))
    if hits.is_empty():
        return []
    matches = hits.with_columns(pl.col("text").str.extract_all(rule.regex).alias("match")).explode("match").drop_nulls("match")
    secrets = _secrets(rule, matches.get_column("match").unique())
    kept = matches.join(secrets, on="match")
    kept = kept.with_columns(pl.struct("text", "match").map_elements(_line, return_dtype=pl.String).alias("line"))
    for allowlist in (*rule.allowlists, common):
        kept = kept.filter(~_allowed(allowlist))
    return [_hit(rule, file, row, column, line, text, match, secret, lines) for file, row, column, line, text, match, secret, lines
            in kept.select(*PLACE, "text", "match", "secret", "lines").iter_rows()]


def _hit(rule: Rule, file: str, row: int | None, column: str | None, cell_line: int | None,
         text: str, match: str, secret: str, lines: bool) -> Hit:
    """In a joined text, the line the match starts on: a text's line, or the line within a notebook cell."""
    below = text.count("\n", 0, text.find(match)) if lines else 0
    if cell_line is not None:
        return Hit(rule, file, row, column, secret, cell_line + below)
    return Hit(rule, file, row + below if row is not None else None, column, secret)


def _secrets(rule: Rule, matches: pl.Series) -> pl.DataFrame:
    """match -> secret: the rule's secret group, else its first non-empty group, else the match; above its entropy."""
    groups = matches.str.extract_groups(rule.regex).struct.unnest() if matches.len() else pl.DataFrame()
    if groups.width == 0:
        secret = matches
    elif rule.group:
        secret = groups.to_series(rule.group - 1)
    else:
        secret = groups.select(pl.coalesce(pl.all().replace("", None))).to_series()
    frame = pl.DataFrame({"match": matches, "secret": secret.fill_null(matches)})
    return frame.filter(pl.col("secret").map_elements(entropy, return_dtype=pl.Float64) > rule.entropy)


def _allowed(allowlist: Allowlist) -> pl.Expr:
    """gitleaks' allowlist: any listed check lets a finding through, or with condition AND, all of them."""
    target = {"match": "match", "line": "line"}.get(allowlist.target, "secret")
    checks = []
    if allowlist.regexes:
        checks.append(pl.any_horizontal(pl.col(target).str.contains(r) for r in allowlist.regexes))
    if allowlist.stopwords:
        checks.append(pl.col("secret").str.to_lowercase().str.contains_any(list(allowlist.stopwords)))
    if allowlist.paths:
        checks.append(pl.any_horizontal(pl.col("file").str.contains(p) for p in allowlist.paths))
    if not checks:
        return pl.lit(False)
    combined = pl.all_horizontal(checks) if allowlist.all_of else pl.any_horizontal(checks)
    return combined.fill_null(False)


def _line(pair: dict[str, str]) -> str:
    """The whole line a match starts on, for allowlists that look at the line."""
    text, match = pair["text"], pair["match"]
    start = text.find(match)
    end = text.find("\n", start + len(match))
    return text[text.rfind("\n", 0, start) + 1:end if end >= 0 else len(text)]


def _without_generic_duplicates(hits: list[Hit]) -> list[Hit]:
    specific: dict[tuple[str, int | None, str | None, int | None], list[str]] = {}
    for hit in hits:
        if hit.rule.id != GENERIC:
            specific.setdefault((hit.file, hit.row, hit.column, hit.cell_line), []).append(hit.secret)
    return [h for h in hits if h.rule.id != GENERIC
            or not any(_overlap(s, h.secret) for s in specific.get((h.file, h.row, h.column, h.cell_line), []))]


def _overlap(one: str, other: str) -> bool:
    return one in other or other in one
