"""The allowlist is tested, not trusted: every function on it runs through the guard and the engine.

sqlglot parses many function names into typed expressions (``dayname`` is ``Dayname``); a name on the
list that no longer matched after such a change was refused always, silently. Each name here has an
example call over the demo's tables, run as a role that sees every column it reads.
"""

from __future__ import annotations

import pytest

import saferoom
from saferoom.engines.duckdb import _ANONYMOUS

# One call per allowlisted name, over prod.orders (order_id, customer_id, amount, region, created_at).
DUCKDB_CALLS = {
    "AGE": "age(created_at)", "DATE_PART": "date_part('year', created_at)", "HASH": "hash(region)",
    "NOW": "now() is not null", "LEN": "len(region)", "ARRAY_LENGTH": "array_length([1, 2])",
    "LIST_SUM": "list_sum([amount, amount])", "LIST_AVG": "list_avg([amount])", "LIST_SORT": "list_sort([3, 1, 2])",
    "LIST_DISTINCT": "list_distinct([1, 1, 2])", "LIST_UNIQUE": "list_unique([1, 1, 2])",
    "QUANTILE_DISC": "quantile_disc(amount, 0.5)", "QUANTILE_CONT": "quantile_cont(amount, 0.5)",
    "ROUND_EVEN": "round_even(amount, 1)", "TRUNC": "trunc(amount)", "EVEN": "even(2.5)", "ISNAN": "isnan(amount::double)",
    "ISINF": "isinf(amount::double)", "ISFINITE": "isfinite(amount::double)", "FACTORIAL": "factorial(5)",
    "GAMMA": "gamma(5.0)", "STRIP_ACCENTS": "strip_accents(region)", "JACCARD": "jaccard(region, 'EU')",
    "HAMMING": "hamming(region, 'EU')", "DAMERAU_LEVENSHTEIN": "damerau_levenshtein(region, 'EU')",
    "JARO_WINKLER_SIMILARITY": "jaro_winkler_similarity(region, 'EU')", "PRINTF": "printf('%s!', region)",
    "FORMAT": "format('{}!', region)", "TIME_BUCKET": "time_bucket(interval 7 day, created_at)",
    "DAYNAME": "dayname(created_at)", "MONTHNAME": "monthname(created_at)", "ISODOW": "isodow(created_at)",
    "ISOYEAR": "isoyear(created_at)", "YEARWEEK": "yearweek(created_at)", "EPOCH": "epoch(created_at)",
    "EPOCH_MS": "epoch_ms(1700000000000)", "BIT_LENGTH": "bit_length(region)", "ENDS_WITH": "ends_with(region, 'U')",
    "SUFFIX": "suffix(region, 'U')", "PREFIX": "prefix(region, 'E')", "REGEXP_FULL_MATCH": "regexp_full_match(region, 'E.')",
    "REGEXP_SPLIT_TO_ARRAY": "regexp_split_to_array(region, 'U')", "STRING_SPLIT": "string_split(region, 'U')",
    "ARRAY_TO_STRING": "array_to_string([region, region], '-')", "MAKE_TIMESTAMP": "make_timestamp(2024, 1, 2, 3, 4, 5.0)",
    "DATE_SUB": "date_sub('day', created_at, created_at)", "DATE_ADD": "date_add(created_at, interval 1 day)",
    "DATEDIFF": "datediff('day', created_at, created_at)", "DATESUB": "datesub('day', created_at, created_at)",
    "DATEADD": "date_add(created_at, interval 1 day)", "ENTROPY": "entropy(region)", "KURTOSIS": "kurtosis(amount)",
    "SKEWNESS": "skewness(amount)", "REGR_SLOPE": "regr_slope(amount, order_id)", "REGR_INTERCEPT": "regr_intercept(amount, order_id)",
    "REGR_R2": "regr_r2(amount, order_id)", "REGR_COUNT": "regr_count(amount, order_id)", "FAVG": "favg(amount)",
    "FSUM": "fsum(amount)", "BIT_AND": "bit_and(order_id)", "BIT_OR": "bit_or(order_id)", "BIT_XOR": "bit_xor(order_id)",
    "GROUPING": None, "TYPEOF": "typeof(amount)", "HISTOGRAM": "histogram(region)",
}
AGGREGATES = {"QUANTILE_DISC", "QUANTILE_CONT", "ENTROPY", "KURTOSIS", "SKEWNESS", "REGR_SLOPE", "REGR_INTERCEPT", "REGR_R2",
              "REGR_COUNT", "FAVG", "FSUM", "BIT_AND", "BIT_OR", "BIT_XOR", "HISTOGRAM"}


def test_every_allowlisted_name_has_an_example() -> None:
    assert set(DUCKDB_CALLS) == set(_ANONYMOUS)


@pytest.mark.parametrize("name", sorted(n for n, call in DUCKDB_CALLS.items() if call))
def test_every_allowlisted_function_runs_through_the_guard(ivan: saferoom.Session, name: str) -> None:
    call = DUCKDB_CALLS[name]
    sql = f"select {call} as v from prod.orders" + ("" if name in AGGREGATES else " limit 3")
    result = ivan.query(sql).to_pylist()
    assert result and "v" in result[0]


def test_grouping_marks_the_rollup_rows(ivan: saferoom.Session, room) -> None:
    sql = "select region, grouping(region) as g, count(*) as n from orders group by rollup(region) order by g, region"
    got = [tuple(r.values()) for r in ivan.query(sql.replace("from orders", "from prod.orders")).to_pylist()]
    assert got == room.raw(sql) and got[-1][1] == 1
