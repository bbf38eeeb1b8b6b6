"""A corpus of ordinary analyst SQL (tests/fixtures/analyst/queries.sql) answered exactly through the guard.

Each query runs as ivan, who sees raw values (card numbers masked), and is compared with DuckDB on the raw
file; those marked ``alice`` also run as alice, compared with DuckDB over views that apply her policy by
hand (orders of her region; no personal column is read by them). Window functions, date arithmetic,
string cleaning, pivots, cohorts, funnels, percentiles, calendar spines and sampling are all there.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import saferoom
from tests import answers

CORPUS = Path(__file__).parent / "fixtures" / "analyst" / "queries.sql"
IVAN = {
    "customers": "SELECT * EXCLUDE (internal_score) FROM raw.customers",
    "cards": "SELECT card_id, customer_id, repeat('*', length(pan) - 4) || right(pan, 4) AS pan FROM raw.cards",
    "orders": "SELECT * FROM raw.orders",
}
ALICE = {
    "customers": "SELECT customer_id, segment FROM raw.customers",
    "cards": "SELECT card_id, customer_id FROM raw.cards",
    "orders": "SELECT * FROM raw.orders WHERE region = 'EU'",
}


def corpus() -> list[tuple[str, bool, str]]:
    """(name, whether alice runs it too, SQL) for each query of the corpus."""
    entries = re.split(r"^-- name: ", CORPUS.read_text(), flags=re.MULTILINE)[1:]
    queries = []
    for entry in entries:
        header, _, body = entry.partition("\n")
        name, alice = re.subn(r"\s+alice$", "", header.strip())
        queries.append((name, bool(alice), body.strip().rstrip(";")))
    return queries


QUERIES = corpus()


def _params(who: str) -> list[Any]:
    return [pytest.param(sql, id=name) for name, alice, sql in QUERIES if who == "ivan" or alice]




def test_the_corpus_is_large_and_named_once() -> None:
    names = [name for name, _, _ in QUERIES]
    assert len(names) >= 150 and len(set(names)) == len(names)
    assert sum(alice for _, alice, _ in QUERIES) >= 100


@pytest.mark.parametrize("sql", _params("ivan"))
def test_ivan_gets_what_duckdb_gives_on_the_raw_data(room: Any, ivan: saferoom.Session, sql: str) -> None:
    answers.same(answers.guarded(ivan, sql), answers.direct(room.database, sql, IVAN))


@pytest.mark.parametrize("sql", _params("alice"))
def test_alice_gets_what_duckdb_gives_on_her_rows(room: Any, alice: saferoom.Session, sql: str) -> None:
    answers.same(answers.guarded(alice, sql), answers.direct(room.database, sql, ALICE))
