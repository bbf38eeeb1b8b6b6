"""Attacks on the aggregate-only rules' key-rows certificates (Engine.key_rows, docs/aggregate.md).

A read-only DuckDB file proves once, per table, the most rows one entity has (``most``) and how many
entities there are (``values``). The rules use that to certify a group of one table by its row count, to
answer a table read whole without counting, and to leave out a DP bounding window no entity reaches. Each
case below is a hostile analyst's attempt to make those shortcuts show a group of fewer than ``min_group``
entities, to drop a DP bound some entity exceeds, or to learn ``most``/``values`` beyond the one documented
bit. Every answer is compared with the exact ``count(DISTINCT key) >= min_group`` semantics, computed by a
role without aggregate rules on the same file.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

import saferoom
from saferoom.engines.base import KeyRows
from saferoom.errors import QueryRejected
from tests.test_aggregate import POLICY, SETUP, rows

MINIMUM = 10

# Hostile tables next to the base ones of tests/test_aggregate.py. `padded`: no customer has more than 20 rows,
# so 200 non-NULL keys certify a group. `other.padded` has the same name in another schema, where 5 customers
# hold 40 rows each (200 rows: certified if its `most` were padded's). `owned` is about owners (`keys:`), not
# the unique `customer_id` it also carries. `mixed` names its key in mixed case. `padded_x5` is a view of the
# file that repeats every row five times. `nullkeys` has no key at all, `empty` no row.
RED_SETUP = """
CREATE TABLE padded AS
  SELECT 'ten_full' AS g, i AS customer_id, 1.0 AS amount FROM range(1000, 1010) t(i), range(20)
  UNION ALL SELECT 'nine_full', i, 1.0 FROM range(2000, 2009) t(i), range(20)
  UNION ALL SELECT 'nulls', i, 1.0 FROM range(3000, 3009) t(i), range(20)
  UNION ALL SELECT 'nulls', NULL, 1.0 FROM range(60)
  UNION ALL SELECT 'whale', 4000, 1.0 FROM range(20)
  UNION ALL SELECT 'whale', i, 1.0 FROM range(4001, 4009) t(i)
  UNION ALL SELECT 'exact10', i, 1.0 FROM range(5000, 5010) t(i)
  UNION ALL SELECT 'big', i, 1.0 FROM range(6000, 6100) t(i)
  UNION ALL SELECT NULL, i, 1.0 FROM range(7000, 7010) t(i), range(2);
CREATE SCHEMA other;
CREATE TABLE other.padded AS SELECT 'hot' AS g, i AS customer_id, 1.0 AS amount FROM range(1, 6) t(i), range(40)
  UNION ALL SELECT 'cold', i, 1.0 FROM range(10, 30) t(i);
CREATE TABLE owned AS SELECT i AS customer_id, i % 5 AS owner_id, 'o' || (i % 2) AS g FROM range(100) t(i);
CREATE TABLE mixed AS SELECT i % 9 AS "CustID", 'm' || (i % 2) AS "G" FROM range(90) t(i);
CREATE TABLE nullkeys AS SELECT NULL::BIGINT AS customer_id, 'x' AS g FROM range(100);
CREATE TABLE empty (customer_id BIGINT, g VARCHAR);
CREATE VIEW padded_x5 AS SELECT p.* FROM padded AS p, range(5);
CREATE VIEW padded_x25 AS SELECT v.* FROM padded_x5 AS v, range(5);
"""

RED_TABLES = """\
  prod.padded: {g: public, customer_id: key, amount: public}
  prod.owned: {customer_id: public, owner_id: key, g: public}
  prod.mixed: {CustID: key, G: public}
  prod.nullkeys: {customer_id: key, g: public}
  prod.empty: {customer_id: key, g: public}
  prod.padded_x5: {g: public, customer_id: key, amount: public}
  prod.padded_x25: {g: public, customer_id: key, amount: public}
  prod.tokened: {g: public, customer_id: tkey, amount: public}
"""

ENTITY = "entity: prod.customers.customer_id"
KEYS = "keys: {prod.owned: owner_id, prod.mixed: CustID}"
RED_ROLES = f"""\
  rita:
    columns: {{key: allow, pii: tokenize, quasi: allow, tkey: allow}}
    rows: {{prod.padded: "g = 'nine_full'"}}
    aggregate: {{min_group: 10, {ENTITY}, {KEYS}}}
  ursula:
    columns: {{key: allow, pii: tokenize, quasi: allow, tkey: allow}}
    rows: {{prod.padded: "g = {{user.seg}}"}}
    aggregate: {{min_group: 10, {ENTITY}, {KEYS}}}
  vera:
    columns: {{key: allow, pii: tokenize, quasi: allow, tkey: allow}}
    rows: {{prod.padded: "customer_id IN (SELECT customer_id FROM prod.orders WHERE region = 'R9') OR g = 'whale'"}}
    aggregate: {{min_group: 10, {ENTITY}, {KEYS}}}
  tess:
    columns: {{key: allow, pii: tokenize, quasi: allow, tkey: tokenize}}
    aggregate: {{min_group: 10, {ENTITY}, {KEYS}}}
"""


def red_policy(text: str = POLICY) -> str:
    """POLICY with the hostile tables and roles, `mo` and `dana` keyed to `owned` and `mixed` too."""
    text = text.replace("tags: {key: {}, pii: {}, quasi: {}}", "tags: {key: {}, pii: {}, quasi: {}, tkey: {}, secret: {}}")
    text = text.replace("  prod.accounts:", RED_TABLES + "  prod.accounts:")
    text = text.replace("  ann: {roles: [reader]}", "  ann: {roles: [reader]}\n  rita: {roles: [rita]}\n"
                        "  ursula: {roles: [ursula], attributes: {seg: nine_full}}\n  tess: {roles: [tess]}\n  vera: {roles: [vera]}")
    text = text.replace(f"{ENTITY}}}", f"{ENTITY}, {KEYS}}}").replace(f"{ENTITY}\n", f"{ENTITY}\n      {KEYS}\n")
    text = text.replace("columns: {key: allow, pii: tokenize, quasi: allow}", "columns: {key: allow, pii: tokenize, quasi: allow, tkey: allow}")
    text = text.replace("columns: {key: allow, pii: allow, quasi: allow}", "columns: {key: allow, pii: allow, quasi: allow, tkey: allow, secret: allow}")
    return text.replace("roles:\n  marketing:", "roles:\n" + RED_ROLES + "  marketing:")


def red_folder(folder: Path, policy: str | None = None) -> Path:
    """``folder`` with the red-team policy, its token key and the database (base tables and hostile ones)."""
    (folder / "token.key").write_text("k" * 64)
    (folder / "saferoom.yaml").write_text(policy or red_policy())
    with duckdb.connect(str(folder / "prod.duckdb")) as con:
        con.execute(SETUP + RED_SETUP + "CREATE TABLE tokened AS SELECT * FROM padded;")
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return red_folder(tmp_path_factory.mktemp("keyrows"))


@pytest.fixture(scope="module")
def sessions(folder: Path) -> Iterator[dict[str, saferoom.Session]]:
    users = ("mo", "ivan", "rita", "ursula", "tess", "vera")
    opened = {u: saferoom.connect(folder / "saferoom.yaml", user=u) for u in users}
    try:
        yield opened
    finally:
        for session in opened.values():
            session.close()


def exact(ivan: saferoom.Session, sql: str, key: str, source: str, where: str | None = None) -> list[tuple]:
    """The answer the rules must give, by a role without them: ``sql`` (no HAVING of its own) with the groups
    of ``count(DISTINCT key) >= 10``, and, with a WHERE, only if the WHERE leaves 10 entities of ``source``
    out (the query-set restriction, over the whole query)."""
    having = f" having count(distinct {key}) >= {MINIMUM}"
    if where is not None:
        everyone = f"(select count(distinct {key}) from {source})"
        kept = f"(select count(distinct {key}) from {source} where {where})"
        having += f" and {everyone} - {kept} >= {MINIMUM}"
    return rows(ivan, sql + having)


def by_rows(session: saferoom.Session, sql: str) -> int | None:
    """The row count that certifies a group of ``sql``'s rewrite, when it is certified by its rows (the plan
    may as well take the buckets, or count exactly: the threshold, when there is one, is what must be right)."""
    found = re.search(r"__saferoom_b0 >= (\d+)", session.guard(sql).sql)
    return int(found.group(1)) if found else None


# --- groups that are small but might pass the row certificate ----------------------------------------------

SMALL = [
    # (query, key as ivan counts it, source, WHERE as written or None)
    ("select g, count(*) as n from padded group by g", "customer_id", "padded", None),
    ("select g, count(customer_id) as n, sum(amount) from padded group by g", "customer_id", "padded", None),
    ("select g, count(*) as n from padded where amount > 0 group by g", "customer_id", "padded", "amount > 0"),
    ("select count(*) as n from padded where g = 'nulls'", "customer_id", "padded", "g = 'nulls'"),
    ("select count(*) as n from padded where g = 'whale'", "customer_id", "padded", "g = 'whale'"),
    ("select count(*) as n from padded where g = 'exact10'", "customer_id", "padded", "g = 'exact10'"),
    ("select count(*) as n from padded where g is null", "customer_id", "padded", "g is null"),
    ("select g = 'nulls' or g = 'whale' as w, count(*) from padded group by 1", "customer_id", "padded", None),
    ("select count(*) from padded where g in ('nine_full', 'whale')", "customer_id", "padded", "g in ('nine_full', 'whale')"),
    # `keys:` names owner_id: customer_id (unique per row) must not be what the rows are counted by
    ("select g, count(*) as n from owned group by g", "owner_id", "owned", None),
    ("select count(*) as n from owned", "owner_id", "owned", None),
    ("select count(customer_id) from owned where g = 'o1'", "owner_id", "owned", "g = 'o1'"),
    # a key written in mixed case, asked in every case
    ('select "G", count(*) from mixed group by 1', '"CustID"', "mixed", None),
    ("select g, count(custid) from MIXED group by g", "custid", "mixed", None),
    ('select count(distinct "CUSTID") from mixed', "custid", "mixed", None),
    # a view of the file that repeats rows: not fixed, counted distinct
    ("select g, count(*) from padded_x5 group by g", "customer_id", "padded_x5", None),
    ("select count(*) from padded_x5 where g = 'nine_full'", "customer_id", "padded_x5", "g = 'nine_full'"),
    ("select count(*) from padded_x5", "customer_id", "padded_x5", None),
    ("select g, count(*) from padded_x25 group by g", "customer_id", "padded_x25", None),  # a view of a view
    ("select count(*) from padded_x25 where g = 'whale'", "customer_id", "padded_x25", "g = 'whale'"),
    # aggregates of their own kinds
    ("select g, sum(amount), count(distinct amount) from padded group by g", "customer_id", "padded", None),
    ("select count(distinct g), avg(amount), stddev(amount) from padded", "customer_id", "padded", None),
    ("select g, count(distinct customer_id) from padded group by g", "customer_id", "padded", None),
    ("select g, count(padded) from padded group by g", "customer_id", "padded", None),
    # group keys that are conditions: the recount must match the whole key, not its last comparison
    ("select g <> 'exact10' and amount > 0 as t, count(*) from padded group by 1", "customer_id", "padded", None),
    ("select g = 'exact10' or amount < 0 as t, count(*) from padded group by 1", "customer_id", "padded", None),
    ("select (amount > 0) = (g = 'exact10') as t, count(*) from padded group by 1", "customer_id", "padded", None),
    # no key, no rows
    ("select g, count(*) from nullkeys group by g", "customer_id", "nullkeys", None),
    ("select count(*) from nullkeys", "customer_id", "nullkeys", None),
    ("select count(*) from empty", "customer_id", "empty", None),
    ("select g, count(*) from empty group by g", "customer_id", "empty", None),
    # the user's own HAVING, ORDER BY, LIMIT, DISTINCT around the certificate
    ("select g, count(*) as n from padded group by g having count(*) < 200", "customer_id", "padded", None),
    ("select count(*) from padded having count(*) > 0", "customer_id", "padded", None),
    ("select g, count(*) from padded group by g order by 2 limit 3", "customer_id", "padded", None),
    ("select distinct count(*) from padded group by g", "customer_id", "padded", None),
    ("select count(*) from padded group by true", "customer_id", "padded", None),
    ("select count(*) from padded where true", "customer_id", "padded", "true"),
    ("select count(*) from padded group by g having g = 'whale'", "customer_id", "padded", None),
]


@pytest.mark.parametrize(("sql", "key", "source", "where"), SMALL)
def test_small_groups_do_not_pass_the_row_certificate(sessions, sql: str, key: str, source: str, where: str | None) -> None:
    mo, ivan = sessions["mo"], sessions["ivan"]
    reference = sql
    for clause in (" order by", " limit", " having"):  # the exact HAVING goes before the user's ORDER BY/LIMIT
        reference = reference.split(clause)[0]
    suffix = sql[len(reference):]
    if suffix.startswith(" having"):
        expected = rows(ivan, reference + suffix + f" and count(distinct {key}) >= {MINIMUM}")
    else:
        expected = exact(ivan, reference, key, source, where)
        if suffix:
            expected = sorted(rows(ivan, f"select * from ({reference} having count(distinct {key}) >= {MINIMUM})"
                                          + suffix.replace("order by 2", "order by 2")), key=repr)
    assert rows(mo, sql) == expected


def test_the_row_certificate_is_the_one_of_the_table_read(sessions) -> None:
    """padded (most 20) and other.padded (most 40) are certified at 200 and 400 rows; owned by its owners
    (most 20), not its unique customer_id; the view that repeats rows not by rows at all."""
    mo = sessions["mo"]
    assert by_rows(mo, "select g, count(*) from padded group by g") in (None, 200)
    assert by_rows(mo, "select count(*) from padded where amount > 0") in (None, 200)
    assert by_rows(mo, "select g, count(*) from owned group by g") in (None, 200)  # owners' 20 rows, not 1 of customer_id
    assert by_rows(mo, "select count(*) from owned where g = 'o1'") in (None, 200)
    assert "HAVING FALSE" in mo.guard("select count(*) from owned").sql  # 5 owners, not 100 customer_ids
    assert "HAVING FALSE" in mo.guard("select count(*) from mixed").sql  # 9 customers
    assert by_rows(mo, "select g, count(*) from padded_x5 group by g") is None
    assert rows(mo, "select g, count(*) from padded group by g") == [("big", 100), ("exact10", 10), ("ten_full", 200), (None, 20)]


@pytest.mark.parametrize(("sql", "where"), [
    ("select g, count(*) as n from prod.other.padded group by g", None),
    ("select count(*) as n from prod.other.padded where g = 'hot'", "g = 'hot'"),
    ('select g, count(*) from "prod"."other"."padded" group by g', None),
    ("select g, count(*) from PROD.OTHER.PADDED group by g", None),
    ("select count(*) from prod.other.padded", None),
    ("select g, count(*) from prod.padded group by g", None),
])
def test_a_table_named_like_another_is_certified_by_its_own_rows(tmp_path: Path, sql: str, where: str | None) -> None:
    """other.padded: five customers of 40 rows each (200 rows, which would pass padded's certificate of
    200) and twenty of one row. Each table is certified by its own `most`."""
    policy = red_policy().replace("  prod.padded: {", "  prod.other.padded: {g: public, customer_id: key, amount: public}\n  prod.padded: {")
    folder = red_folder(tmp_path, policy)
    with saferoom.connect(folder / "saferoom.yaml", user="mo") as mo, saferoom.connect(folder / "saferoom.yaml", user="ivan") as ivan:
        source = "prod.other.padded" if "other" in sql.lower() else "prod.padded"
        assert rows(mo, sql) == exact(ivan, sql, "customer_id", source, where)
        assert by_rows(mo, f"select count(*) from {source} where g = 'x'") in (None, 400 if "other" in source else 200)


# --- disguised joins, set operations, table functions: refused, never certified ------------------------------

REFUSED = [
    ("select p.g, count(*) from padded p, padded q group by p.g", None),  # a join: no row certificate, still exact
    ("select g, count(*) from padded, range(5) group by g", "policy tables only"),
    ("select g, count(*) from padded cross join unnest([1, 2]) group by g", "UNNEST"),
    ("select g, count(*) from padded, lateral (select 1) t group by g", "LATERAL"),
    ("select g, count(*) from (select * from padded, padded) group by g", "subqueries"),
    ("select g, count(*) from padded group by g union all select g, count(*) from padded group by g", "only one SELECT"),
    ("select count(*) from padded intersect select count(*) from padded", "only one SELECT"),
    ("with padded as (select * from padded, range(5)) select count(*) from padded", "WITH"),
    ("select count(*) from read_parquet('x.parquet')", "table functions are not allowed"),
    ("select count(*) from padded using sample 50%", "sampling"),
    ("select count(*) from padded tablesample reservoir(50 rows)", "sampling"),
    ("select count(*) from padded qualify count(*) > 1", "QUALIFY"),
    ("select count(*) filter (where g = 'whale') from padded", "FILTER"),
    ("select sum(case when g = 'whale' then 1 end) from padded", "takes a column as it is"),
    ("select count(*) from padded group by rollup(g)", "ROLLUP"),
    ("select count(*) from padded group by all", "GROUP BY ALL"),
    ("select count(*) from padded pivot (count(*) for g in ('whale'))", "(pivots) are not allowed"),
    ("select count(*) from padded as p(a, b, c)", "renamed by position"),
    ("select count(*) from padded at (version => 1)", "table modifiers"),
    ("select count(*) from padded where customer_id > 4000", "direct identifier"),
    ("select count(*) from owned where owner_id = 3", "direct identifier"),
    ("select count(*), sum(amount) over () from padded", "WINDOW"),
    ("select count(*) from padded p join padded q on p.g = 'whale'", "may only equate columns"),
    ("select count(*) from padded p positional join padded_x5 q", None),  # a join: counted distinct on both sides
    ("select g, sum(amount order by amount) from padded group by g", "takes a column as it is"),
    ("select count(*) from padded p semi join padded q on p.customer_id = q.customer_id", "q"),
    ("select count(*) from padded p anti join padded q on p.customer_id = q.customer_id", "q"),
    ("select count(*) from padded p asof join padded q on p.customer_id = q.customer_id and p.amount >= q.amount",
     "may only equate columns"),
    ("select count(*) from padded p natural join padded_x5", "NATURAL"),
    ('select "unnest"([1, 2]) as x, count(*) from padded group by x', "UNNEST"),
]


@pytest.mark.parametrize(("sql", "says"), REFUSED)
def test_queries_that_read_other_rows_than_the_table_s_are_refused_or_exact(sessions, sql: str, says: str | None) -> None:
    mo, ivan = sessions["mo"], sessions["ivan"]
    if says is None:
        assert by_rows(mo, sql) is None
        expected = rows(ivan, sql + " having count(distinct p.customer_id) >= 10 and count(distinct q.customer_id) >= 10")
        assert rows(mo, sql) == expected
        return
    with pytest.raises((QueryRejected, saferoom.EngineError, saferoom.UsageError)) as refused:
        mo.query(sql)
    assert says in refused.value.message, refused.value.message


RANDOM_DRAWS = [
    # random() is drawn again by the recount and the left-out count: nine_full's nine customers were shown in
    # about a quarter of the runs of the first query (180 rows: no `big` row drawn for the answer, some for the
    # recount), and of the second
    "select count(*), sum(amount) from padded where g = 'nine_full' or (g = 'big' and random() < 0.007)",
    "select g = 'big' as b, count(*) from padded where g = 'nine_full' or (g = 'ten_full' and random() < 0.005) group by 1",
    "select (g = 'nine_full' or (g = 'big' and random() < 0.01))::int as t, count(*) from padded group by 1",
    'select count(*) from padded where "random"() < 0.5',
    "select count(*) from padded where rand() < 0.5",
    "select g, count(*) from padded group by g having count(*) > random()",
    "select g, count(*) from padded group by g order by random()",
    "select count(*) from padded p join padded_x5 q on p.g = q.g where random() < 0.5",
    "select count(*) from padded where uuid() is not null",
    "select count(*) from padded where setseed(0.5) is null",
]


@pytest.mark.parametrize("sql", RANDOM_DRAWS)
def test_random_draws_are_refused(sessions, sql: str) -> None:
    """A group's minimum is counted again (the recount of uncertified groups, the rows a WHERE leaves out) by
    reading the rows again: a value drawn at random would be drawn anew, and the count would vouch for other
    rows than the answer's, as a sample would."""
    with pytest.raises(QueryRejected, match="random|allowlist"):
        sessions["mo"].query(sql)


# --- the table read whole --------------------------------------------------------------------------------

WHOLE = [
    # (user, query, expected rows): whole reads must rest on the role's own rows
    ("mo", "select count(*) from padded", [(778,)]),
    ("mo", "select count(*), sum(amount) from padded as p", [(778, 778.0)]),
    ("rita", "select count(*) from padded", []),  # the row filter keeps nine customers
    ("rita", "select count(*) as n, avg(amount) from padded having count(*) > 0", []),
    ("ursula", "select count(*) from padded", []),  # a filter bound to the user's attribute keeps nine
    ("ursula", "select count(*), count(distinct customer_id) from padded", []),
    ("vera", "select count(*) from padded", []),  # a filter reading orders keeps the whale's nine customers
    ("vera", "select g, count(*) from padded group by g", []),
    ("mo", "select count(*) from owned", []),  # 5 owners
    ("mo", "select count(*) from nullkeys", []),
    ("mo", "select count(*) from empty", []),
    ("mo", "select count(*) from mixed", []),
    ("mo", "select count(*) from padded_x5", [(3890,)]),
    ("mo", "select count(*) from padded where g = 'nine_full'", []),
    ("mo", "select count(*) from padded limit 1 offset 1", []),
]


@pytest.mark.parametrize(("user", "sql", "expected"), WHOLE)
def test_a_table_read_whole_rests_on_what_the_role_sees(sessions, user: str, sql: str, expected: list[tuple]) -> None:
    assert rows(sessions[user], sql) == expected


def test_the_row_filter_s_rows_are_still_certified_by_rows(sessions) -> None:
    """A row filter only removes rows: `most` still bounds them, so the rows certificate stays, and the nine
    customers the filter keeps are recounted and suppressed (never the table's own 157)."""
    for user in ("rita", "ursula", "vera"):
        guarded = sessions[user].guard("select count(*) from padded").sql
        assert by_rows(sessions[user], "select count(*) from padded") in (None, 200) and "HAVING FALSE" not in guarded
        assert rows(sessions[user], "select g, count(*) from padded group by g") == []


def test_a_key_tokenized_in_one_table_is_not_counted_by_rows_there(sessions) -> None:
    """tess sees customer_id whole in padded and as tokens in tokened (the same rows): only padded is
    certified by rows; both give the exact groups."""
    tess, ivan = sessions["tess"], sessions["ivan"]
    assert by_rows(tess, "select count(*) from padded where amount > 0") == 200
    assert by_rows(tess, "select count(*) from tokened where amount > 0") is None
    assert "HAVING FALSE" not in tess.guard("select count(*) from tokened").sql
    expected = exact(ivan, "select g, count(*) from padded group by g", "customer_id", "padded")
    assert rows(tess, "select g, count(*) from tokened group by g") == expected
    assert rows(tess, "select g, count(*) from padded group by g") == expected


def test_a_key_the_role_is_denied_is_a_policy_error_and_refused_queries_group_nothing(folder: Path) -> None:
    """A covered table whose key the role may not see cannot be counted: the policy is refused before any
    session. A query refused by its shape, or naming a table the policy does not list, never makes the engine
    group a table once."""
    denied = red_policy().replace("prod.owned: {customer_id: public, owner_id: key", "prod.owned: {customer_id: public, owner_id: pii")
    denied = denied.replace("columns: {key: allow, pii: tokenize, quasi: allow, tkey: allow}\n    aggregate",
                            "columns: {key: allow, pii: deny, quasi: allow, tkey: allow}\n    aggregate")
    (folder / "denied.yaml").write_text(denied)
    with pytest.raises(saferoom.PolicyError, match="must see `prod.owned.owner_id`"):
        saferoom.load_policy(folder / "denied.yaml")
    with saferoom.connect(folder / "saferoom.yaml", user="mo") as mo:
        for sql in ("select max(amount) from padded", "select count(*) from secret_table", "select * from padded",
                    "select count(*) from padded where customer_id = 1000"):
            with pytest.raises(QueryRejected):
                mo.query(sql)
        assert mo._engine._keys == {}


# --- differential privacy ----------------------------------------------------------------------------------

def dp_session(folder: Path, most: int) -> saferoom.Session:
    """dana's DP role bounding each customer to ``most`` rows per table; she sees tokened's key as tokens."""
    policy = red_policy().replace("bounds: {amount: [0, 100]}}", f"bounds: {{amount: [0, 100]}}, max_contributions: {most}}}")
    policy = policy.replace("tkey: allow}\n    aggregate:\n      min_group", "tkey: tokenize}\n    aggregate:\n      min_group")
    (folder / f"dp{most}.yaml").write_text(policy)
    return saferoom.connect(folder / f"dp{most}.yaml", user="dana")


def contributions(ivan: saferoom.Session, joined: str, keys: list[str]) -> int:
    """The most rows of ``joined`` (FROM … JOIN …) that one entity is behind, through any of ``keys``."""
    numbered = f"(select row_number() over () as r, {', '.join(f'{k} as k{i}' for i, k in enumerate(keys))} from {joined})"
    union = " union all ".join(f"select r, k{i} as e from {numbered}" for i in range(len(keys)))
    return rows(ivan, f"select max(n) from (select count(distinct r) as n from ({union}) where e is not null group by e)")[0][0]


@pytest.mark.parametrize(("bound", "sql", "bounded"), [
    (20, "select g, count(*) from padded group by g", False),
    (19, "select g, count(*) from padded group by g", True),
    (20, "select count(*) from owned", False),  # 20 rows of each owner
    (19, "select count(*) from owned", True),
    (20, "select g, count(*) from tokened group by g", True),  # tokens: nothing proven
    (20, "select g, count(*) from padded_x5 group by g", True),  # a view: nothing proven
    (10, "select region, count(*) from orders group by region", False),
])
def test_dp_bounding_is_left_out_only_where_no_entity_exceeds_it(folder: Path, bound: int, sql: str, bounded: bool) -> None:
    with dp_session(folder, bound) as dana:
        guarded = dana.guard(sql)
        assert ("QUALIFY" in guarded.sql) is bounded
        assert guarded.noise is not None and guarded.noise.rows_per_entity == bound


def test_a_dp_self_join_on_the_key_stays_within_the_noise_s_rows(sessions, folder: Path) -> None:
    """Neither side of a self-join on the key is bounded (no customer has more than 20 rows), and the noise is
    scaled to 20 × 20 rows: the most one customer is behind in the joined rows is within it."""
    joined = "padded p join padded q on p.customer_id = q.customer_id"
    with dp_session(folder, 20) as dana:
        guarded = dana.guard(f"select p.g, count(*) from {joined} group by p.g")
        assert "QUALIFY" not in guarded.sql and guarded.noise is not None
        assert contributions(sessions["ivan"], joined, ["p.customer_id", "q.customer_id"]) <= guarded.noise.rows_per_entity


@pytest.mark.parametrize("sql", [
    "select p.g, count(*) from padded p join padded q on p.g = q.g group by p.g",
    "select p.g, count(*) from padded p, padded q group by p.g",
    "select c.segment, count(*) from customers c, orders o group by 1",
    "select o.region, count(*) from orders o join customers c on o.region = c.segment group by 1",
    "select o.region, count(*) from orders o join accounts a on o.customer_id = a.account_id group by 1",
    "select o.region, count(*) from orders o join customers c on o.customer_id = c.customer_id "
    "join orders o2 on o2.region = o.region group by 1",
    "select p.g, count(*) from padded p positional join padded q group by p.g",
    "select o.region, count(*) from orders o join customers c using (customer_id) group by 1",  # write it ON
    "select p.g, count(*) from padded p join padded q on p.customer_id = p.customer_id group by p.g",
    "select p.g, count(*) from padded p join owned w on p.customer_id = w.customer_id group by p.g",  # not owned's key
])
def test_a_dp_join_that_does_not_tie_each_row_to_one_entity_is_refused(sessions, folder: Path, sql: str) -> None:
    """A join on anything but the entity keys pairs one customer's row with many others': the result's rows
    one customer is behind are far more than the m ** t the noise is scaled to."""
    with dp_session(folder, 20) as dana, pytest.raises(QueryRejected, match="join on the entity key"):
        dana.guard(sql)


def test_dp_joins_on_the_entity_key_are_answered(folder: Path) -> None:
    with dp_session(folder, 20) as dana:
        for sql in ("select c.segment, count(*) from orders o join customers c on o.customer_id = c.customer_id group by 1",
                    "select c.segment, count(*) from customers c join orders o on c.customer_id = o.customer_id "
                    "join accounts a on a.customer_id = o.customer_id and a.branch = o.region group by 1",
                    "select c.segment, count(*) from orders o left join customers c on c.customer_id = o.customer_id group by 1",
                    "select p.g, count(*) from padded p full join owned w on w.owner_id = p.customer_id group by 1",
                    "select p.g, count(*) from padded P join padded Q on q.CUSTOMER_ID = p.customer_id group by 1"):
            guarded = dana.guard(sql)
            assert guarded.noise is not None


def test_a_dp_join_to_a_table_the_rules_do_not_cover_is_refused(folder: Path) -> None:
    """stores is outside the role's `aggregate.tables`: it has no key, and its rows may repeat an order's."""
    policy = red_policy().replace("      dp: {", "      tables: [prod.orders, prod.customers]\n      dp: {")
    (folder / "dp-tables.yaml").write_text(policy)
    with saferoom.connect(folder / "dp-tables.yaml", user="dana") as dana:
        with pytest.raises(QueryRejected, match="join on the entity key"):
            dana.guard("select o.region, count(*) from orders o join stores s on o.region = s.city group by 1")
        assert dana.guard("select region, count(*) from orders group by 1").noise is not None


# --- what the shortcuts could tell: explain, refusals ----------------------------------------------------------

@pytest.mark.parametrize("sql", [
    "select g, count(*) from padded group by g",
    "select count(*) from padded",
    "select count(*) from owned",
    "select count(*) from padded where g = 'whale'",
    "select max(amount) from padded",
])
def test_explain_and_refusals_do_not_tell_most_or_values(sessions, sql: str) -> None:
    """padded: most 20, values 157, certified at 200 rows; owned: 5 owners. None of it in a decision."""
    decision = sessions["mo"].explain(sql)
    text = json.dumps(decision.to_dict()) + str(decision)
    for number in ("157", "200", "20 ", " 5 owners", "HAVING FALSE", "__saferoom"):
        assert number not in text, (number, text)


def test_a_role_without_aggregate_rules_never_groups_a_table_once(sessions) -> None:
    ivan = sessions["ivan"]
    assert rows(ivan, "select g, count(*) from padded group by g having count(*) > 100") == [("nine_full", 180), ("nulls", 240), ("ten_full", 200)]
    assert ivan._engine._keys == {}


@pytest.mark.parametrize("sql", [
    "select g + 1, count(*) from padded group by g + 1",
    "select count(*) from padded where g > 1 group by g + 1",
    "select count(*) from padded where amount > 'x'",
    "select count(*) from padded p semi join padded q on p.customer_id = q.customer_id",
])
def test_engine_errors_of_a_certified_query_do_not_echo_its_thresholds(sessions, sql: str) -> None:
    """The engine fails on the rewritten query (the certified CTE and its recount, with `>= 200` in them);
    what the user reads of the error names neither the hidden columns nor the threshold."""
    with pytest.raises(saferoom.EngineError) as failed:
        sessions["mo"].query(sql)
    assert "__saferoom" not in failed.value.message and "200" not in failed.value.message, failed.value.message


# --- a cached fact against a file that changes --------------------------------------------------------------

WRITE = """
import duckdb, sys
con = duckdb.connect(sys.argv[1])
con.execute("INSERT INTO padded SELECT 'hot', 1 + i % 5, 1.0 FROM range(1000) t(i)")
"""

REPLACE = """
import duckdb, os, sys
path, new = sys.argv[1], sys.argv[1] + ".new"
with duckdb.connect(new) as con:
    con.execute("CREATE TABLE padded AS SELECT 'hot' AS g, 1 + i % 5 AS customer_id, 1.0 AS amount FROM range(1000) t(i) "
                "UNION ALL SELECT 'cold', i, 1.0 FROM range(100, 200) t(i)")
os.replace(new, path)
"""


def test_a_cached_fact_cannot_go_stale_while_the_session_holds_the_file(tmp_path: Path) -> None:
    """The session proves padded's rows, then a second process tries to add 1000 rows of five customers
    (refused: the file is locked) and replaces the file by a new one. The open session keeps reading the file
    it attached, whose rows the fact describes; a new session reads the new file, with its own fact. Neither
    shows the five customers' 1000 rows."""
    folder = red_folder(tmp_path)
    database = folder / "prod.duckdb"
    sql = "select g, count(*) from padded group by g"
    with saferoom.connect(folder / "saferoom.yaml", user="mo") as mo:
        before = rows(mo, sql)
        writer = subprocess.run([sys.executable, "-c", WRITE, str(database)], check=False, capture_output=True, text=True)
        assert writer.returncode != 0 and "lock" in writer.stderr.lower()
        replacer = subprocess.run([sys.executable, "-c", REPLACE, str(database)], check=False, capture_output=True, text=True)
        assert replacer.returncode == 0, replacer.stderr
        assert rows(mo, sql) == before
        assert mo._engine.key_rows(("prod", "main", "padded"), "customer_id").most == 20
    with saferoom.connect(folder / "saferoom.yaml", user="mo") as fresh:
        assert rows(fresh, sql) == [("cold", 100)]
        assert fresh._engine.key_rows(("prod", "main", "padded"), "customer_id").most == 200
    assert os.path.exists(database)


# --- equivalence on random data ---------------------------------------------------------------------------

RANDOM = """SELECT setseed(0.{seed}); CREATE TABLE padded AS
  SELECT CASE WHEN random() < 0.05 THEN NULL ELSE (random() * random() * {spread})::BIGINT END AS customer_id,
    (random() * 30)::INT AS g, (random() * 100)::INT::DOUBLE AS amount FROM range({size}) t(i)"""

SHAPES = [
    ("select g, count(*) as n from padded group by g", None),
    ("select g % 4 as q, sum(amount), count(customer_id) from padded group by 1", None),
    ("select g, count(*) from padded where amount < 50 group by g", "amount < 50"),
    ("select count(*) from padded where g < 3", "g < 3"),
    ("select count(*) from padded where g = 7", "g = 7"),
    ("select count(*), sum(amount) from padded", None),
    ("select count(distinct customer_id) from padded", None),
    ("select amount > 90 as high, count(*) from padded group by 1", None),
    ("select g % 3 = 0 and amount > 50 as c, count(*) from padded group by 1", None),
    ("select g > 25 or amount < 10 as c, sum(amount) from padded group by 1", None),
    ("select g, amount > 50 as high, count(*) from padded group by 1, 2", None),
    ("select nullif(g % 5, 0) as n, avg(amount) from padded group by 1", None),
    ("select nullif(g % 5, 0) = 1 and amount > 50 as c, count(*) from padded group by 1", None),  # a NULL group
    ("select count(*) from padded where amount > 50 and g > 10", "amount > 50 and g > 10"),
]


@pytest.mark.parametrize("seed", range(1, 7))
def test_guarded_answers_equal_the_exact_distinct_count_on_random_data(tmp_path: Path, seed: int) -> None:
    """Skewed random keys (a few customers with many rows, some NULL), several sizes and spreads: every query
    shape of the aggregate role keeps exactly the groups of ``count(DISTINCT customer_id) >= 10``."""
    folder = red_folder(tmp_path)
    size, spread = (400, 40) if seed % 2 else (3000, 400)
    with duckdb.connect(str(folder / "prod.duckdb")) as con:
        con.execute("DROP VIEW padded_x25; DROP VIEW padded_x5; DROP TABLE padded")
        con.execute(RANDOM.format(seed=seed, spread=spread, size=size) + "; DROP TABLE tokened; "
                    "CREATE TABLE tokened AS SELECT * FROM padded")
    with saferoom.connect(folder / "saferoom.yaml", user="mo") as mo, \
            saferoom.connect(folder / "saferoom.yaml", user="tess") as tess, \
            saferoom.connect(folder / "saferoom.yaml", user="ivan") as ivan:
        for sql, where in SHAPES:
            expected = exact(ivan, sql, "customer_id", "padded", where)
            assert rows(mo, sql) == expected, sql
            assert rows(tess, sql.replace("padded", "tokened")) == expected, sql  # tokens: hashed buckets


# --- an entity table whose key is not unique ---------------------------------------------------------------

def test_an_entity_table_the_file_shows_repeating_keys_is_counted_distinct_and_bounded(tmp_path: Path) -> None:
    """The entity is pointed at padded, where each customer has up to 20 rows (the docs ask for the primary
    key). Counting its keys without DISTINCT would show nine customers' 180 rows as a group; the file proves
    the keys repeat, so the groups are the exact ones, and a DP role bounds that table like any other."""
    policy = red_policy().replace("entity: prod.customers.customer_id", "entity: prod.padded.customer_id")
    folder = red_folder(tmp_path, policy.replace("bounds: {amount: [0, 100]}}", "bounds: {amount: [0, 100]}, max_contributions: 2}"))
    sql = "select g, count(*) from padded group by g"
    with saferoom.connect(folder / "saferoom.yaml", user="mo") as mo, saferoom.connect(folder / "saferoom.yaml", user="ivan") as ivan:
        assert rows(mo, sql) == exact(ivan, sql, "customer_id", "padded")
        where = "g in ('nine_full', 'whale')"
        assert rows(mo, f"select count(*) from padded where {where}") == exact(ivan, f"select count(*) from padded where {where}", "customer_id", "padded", where)
        assert rows(mo, "select count(*) from padded where g = 'nine_full'") == []
    with saferoom.connect(folder / "saferoom.yaml", user="dana") as dana:
        guarded = dana.guard(sql)
        assert "QUALIFY" in guarded.sql and guarded.noise is not None and guarded.noise.rows_per_entity == 2
        joined = dana.guard("select c.segment, count(*) from padded p join customers c on c.customer_id = p.customer_id group by 1")
        assert joined.noise is not None and joined.noise.rows_per_entity == 4  # 2 rows of each table, both bounded


# --- the one-time GROUP BY under the role's limits ------------------------------------------------------------

def test_a_table_too_large_to_group_under_the_memory_limit_is_counted_exactly(tmp_path: Path) -> None:
    """1.5M customers under a 16MB memory_limit and a 1MB spill: the one GROUP BY that would prove the table's
    rows runs out of memory. The queries that need far less (a count, three groups) are still answered, with
    the exact groups, and the engine is not asked again on each query."""
    policy = red_policy().replace("  marketing:\n", "  marketing:\n    memory_limit: 16MB\n    temp_limit: 1MB\n", 1)
    policy = policy.replace("  prod.padded: {", "  prod.huge: {customer_id: key, g: public}\n  prod.padded: {")
    folder = red_folder(tmp_path, policy)
    with duckdb.connect(str(folder / "prod.duckdb")) as con:
        con.execute("CREATE TABLE huge AS SELECT i AS customer_id, (i % 3)::INT AS g FROM range(1500000) t(i)")
    with saferoom.connect(folder / "saferoom.yaml", user="mo") as mo:
        asked: list[tuple[tuple[str, str, str], str]] = []
        engine_key_rows = mo._guard._key_rows
        assert engine_key_rows is not None

        def counted(table: tuple[str, str, str], column: str) -> KeyRows | None:
            asked.append((table, column))
            return engine_key_rows(table, column)
        mo._guard._key_rows = counted
        for _ in range(2):
            assert rows(mo, "select g, count(*) from huge group by g") == [(0, 500000), (1, 500000), (2, 500000)]
            assert rows(mo, "select count(*) from huge") == [(1500000,)]
        assert asked.count((("prod", "main", "huge"), "customer_id")) == 1


@pytest.mark.parametrize("sql", [
    "select g, count(*) from padded group by g",
    "select g, sum(amount) from padded where amount > 0 group by g",
    "select count(*) from padded where g = 'whale'",
    "select count(*) from padded",
])
def test_dp_groups_left_unbounded_are_the_exact_ones(sessions, folder: Path, sql: str) -> None:
    """With max_contributions 20 no window bounds padded (no customer has more): the groups a DP answer shows
    (its values are noised) are exactly those of ``count(DISTINCT customer_id) >= 10``."""
    pytest.importorskip("opendp")
    where = sql.split(" where ")[1].split(" group by")[0] if " where " in sql else None
    expected = {r[0] for r in exact(sessions["ivan"], sql, "customer_id", "padded", where)}
    with dp_session(folder, 20) as dana:
        assert "QUALIFY" not in dana.guard(sql).sql
        shown = {tuple(r.values())[0] for r in dana.query(sql).to_pylist()}
    assert shown == expected if " group by " in sql else len(shown) == len(expected)


@pytest.mark.parametrize("column", ["CustID", "custid", "CUSTID", "G", "g"])
def test_key_rows_of_a_column_named_in_any_case(sessions, column: str) -> None:
    """mixed names its columns `CustID` and `G`: the guard's question about either, in any case (as a query
    writes it, quoted or not), has the same answer, never a KeyError."""
    found = sessions["mo"]._guard.key_rows("prod.mixed", column)
    assert found is not None and (found.most, found.values) == ((10, 9) if column.lower() == "custid" else (45, 2))
