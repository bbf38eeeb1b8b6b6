"""Tables read bare: when a role's view of a table would be exactly the table (every column listed, in order,
unmasked, no row filter) and the engine proves its columns fixed, the guard reads the table itself. Every
attack here must end exactly as it does when every table is read through its view: refused alike, or the
same rows. Run against a table whose columns are all visible (`open_t`), one with a denied column
(`part_t`) and one with an unclassified column (`unl_t`)."""

from __future__ import annotations

import re

import duckdb
import pytest

import saferoom
from saferoom.errors import QueryRejected
from saferoom.guard import Guard

POLICY = """\
version: 1
sources: {x: {engine: duckdb, path: x.duckdb}}
tags: {internal: {}}
tables:
  x.open_t: {id: public, v: public, s: public}
  x.part_t: {id: public, v: public, secret: internal}
  x.unl_t: {id: public, v: public}
users: {ana: {roles: [reader]}}
roles: {reader: {columns: {internal: deny}}}
"""
SECRETS = ("s-one", "s-three", "n-one")
NAMES_ROWID = re.compile(r"(?<!')\browid\b(?!')", re.IGNORECASE)  # as a name, not inside a string
BARE = re.compile(r'"x"\."main"\."open_t" AS (?!__saferoom_t)')  # open_t read as itself, not inside its view

READ_BARE = [
    "select id, v from open_t",
    "select * from open_t",
    "select a.id from open_t a, open_t b where a.id = b.id and a.v <> b.v",
    "select id from open_t where id in (select id from part_t)",
    "select id, v as value from open_t order by value desc",  # a whole ORDER BY term naming a select alias
]

ATTACKS = [
    # pseudo-columns the table answers to and its view does not
    "select rowid from open_t",
    "select open_t.rowid from open_t",
    "select o.rowid from open_t as o",
    "select id from open_t order by rowid",
    "select max(rowid) from open_t",
    "select * from open_t where rowid = 0",
    "select (select rowid from open_t limit 1) from part_t",
    "select id from open_t join part_t using (rowid)",
    "with x as (select 1 as rowid) select rowid from open_t, x",
    "select 1 as rowid, id from open_t order by rowid",
    "select id as rowid from open_t order by rowid desc",
    "select id as rowid from open_t order by rowid + 0",
    "select id as rowid from open_t order by -rowid",
    "select id as w from open_t order by w, rowid",
    "select id as rowid from open_t union all select id from open_t order by rowid",
    "select id as w, row_number() over (order by w) from open_t",
    "select id as w from open_t where rowid = 0 order by w",
    "select (select id as rowid from part_t order by rowid limit 1) from open_t",
    "select rowid from part_t",
    # correlated subqueries: an unqualified name binds to the nearest source that has it
    "select id from open_t where exists (select 1 from part_t where part_t.id = open_t.id and secret = 's-one')",
    "select (select secret from open_t limit 1) from part_t",
    "select (select max(s) from part_t) from open_t",
    "select id, (select max(v) from part_t where part_t.id = o.id) from open_t as o",
    "select id from open_t where exists (select 1 from unl_t where note = 'n-one')",
    "select id from open_t as o where exists (select s from part_t where part_t.id = o.id)",
    # NATURAL and USING match columns by name
    "select * from open_t natural join part_t",
    "select * from part_t natural join open_t",
    "select * from open_t natural join unl_t",
    "select * from open_t join part_t using (id)",
    "select * from open_t join part_t using (id, v)",
    "select * from open_t join part_t using (secret)",
    "select * from open_t join unl_t using (note)",
    # positional aliases rename by position
    "select a, b, c from open_t as t(a, b, c)",
    "select b from open_t as t(a, b)",
    "select a, b, c from part_t as t(a, b, c)",
    "select c from unl_t as t(a, b, c)",
    # stars and whole rows
    "select * from part_t",
    "select open_t.* from open_t, part_t",
    "select * exclude (id) from open_t",
    "select columns('.*') from open_t",
    "select columns('.*') from part_t",
    "select open_t from open_t",
    "select part_t from part_t",
    "select * from unl_t",
    # a PIVOT written after the table, and sampling
    "select * from open_t pivot (sum(v) for s in ('a', 'b'))",
    "select * from part_t pivot (sum(v) for id in (1, 3))",
    "select count(*) from open_t using sample 100 percent (bernoulli, 7)",
    "select count(*) from open_t tablesample 100 percent",
    # hidden and unclassified columns named outright
    "select secret from part_t",
    "select note from unl_t",
    "select id from open_t where secret is null",
    "select secret from open_t, part_t",
    # positional column references (#n), qualified spellings of the table, table functions reading tables by
    # name, COLUMNS with lambdas and patterns, and ORDER BY alias binding
    "select #3 from open_t",
    "select #1 from open_t",
    "select #2 from open_t, part_t",
    "select #6 from open_t, part_t",
    "select id from open_t order by #1",
    "select id, s from open_t",
    "select x.main.open_t.id from x.main.open_t",
    "select main.open_t.id from x.main.open_t",
    "select main.o.id from x.main.open_t as o",
    "select x.main.o.id from x.main.open_t as o",
    "select id from open_t as rowid where rowid.id = 1",
    "select * from query_table('open_t')",
    "select * from query('select rowid from x.main.open_t')",
    "select columns(id -> id like '%') from open_t",
    "select columns(c -> c like '%') from open_t",
    "select * like 's%' from open_t",
    "select * similar to 's' from open_t",
    "select id, v as s from open_t order by s",
    "select id as v, v as id from open_t order by id",
    "select id, v as value from open_t order by value desc nulls first",
    "select id as w from open_t order by all",
    "select id as w, count(*) from open_t group by all order by w",
    "select distinct on (w) id as w, v from open_t order by w",
    # pseudo-columns spelled otherwise or hidden in other clauses; ORDER BY aliases in set operations,
    # subqueries, windows, aggregates; lateral joins; lambdas; stars with RENAME/REPLACE/EXCLUDE; CTEs
    # shadowing policy tables; PIVOT/UNPIVOT; joins of every kind; GROUP BY/ORDER BY ALL
    'select "RowID" from open_t',
    'select id from open_t order by "ROWID"',
    'select id as "RowId" from open_t order by rowid',
    'select id as w from open_t order by w, "RowID"',
    "select string_agg(s order by w) , id as w from open_t group by id",
    "select string_agg(s order by rowid) from open_t",
    "select id as w from open_t qualify row_number() over (order by w) = 1",
    "select id as w from open_t group by w order by w",
    "select id as w from open_t group by id having w > 1",
    "select (select id as w from open_t order by w limit 1)",
    "select id as w from open_t union select id from part_t order by w",
    "select id as w from open_t union select v from part_t order by w desc",
    "select * from (select id as w from open_t order by w) sub",
    "select id as w, (select max(v) from part_t order by w) from open_t",
    "select id as w from open_t order by (select w)",
    "select id as w from open_t order by (select rowid)",
    "select id as secret from open_t, part_t order by secret",
    "select open_t.id as secret from open_t join part_t on open_t.id = part_t.id order by secret",
    "select id as w from open_t, lateral (select w) l",
    "select id from open_t, lateral (select rowid as r) l",
    "select id from open_t, lateral (select open_t.rowid as r) l",
    "from open_t select rowid",
    "from open_t select id order by rowid",
    "from open_t",
    "select list_transform([1, 2], rowid -> rowid) from open_t",
    "select list_transform([1, 2], x -> x + rowid) from open_t",
    "select list_transform([1, 2], id -> id) from open_t",
    "select list_transform([1, 2], x -> id) from open_t",
    "select s.rowid from open_t",
    "select (open_t).rowid from open_t",
    "select struct_extract(open_t, 'id') from open_t",
    "select struct_pack(open_t.*) from open_t",
    "select struct_pack(*) from open_t",
    "select row(open_t.*) from open_t",
    "select to_json(o) from open_t as o",
    "select to_json(o.*) from open_t as o",
    "select * rename (id as rowid) from open_t",
    "select * replace (rowid as id) from open_t",
    "select * exclude (rowid) from open_t",
    "select open_t.* exclude (s) from open_t, part_t",
    "select columns(* exclude (s)) from open_t",
    "select columns(['id', 'v']) from open_t",
    "select columns(['rowid']) from open_t",
    "select columns('rowid') from open_t",
    "select *columns('id') from open_t",
    "select coalesce(*columns(*)) from open_t",
    "with open_t as (select secret as s, id, v from part_t) select s from open_t",
    "with recursive open_t(id, v, s) as (select 1, 1, 'z' union all select id + 1, v, s from open_t where id < 3) select * from open_t",
    "with part_t as (select * from open_t) select secret from part_t",
    "with part_t as (select * from open_t) select s from part_t",
    "with p as (select * from part_t) select rowid from p",
    "select id from open_t as t2 join open_t using (id)",
    "select id from open_t as t2 join open_t using (rowid)",
    "select * from open_t as t2 join open_t using (id)",
    "select id from open_t where id in (select rowid from open_t)",
    "select id from open_t where id in (select rowid + 1 from part_t)",
    "select * from open_t unpivot (val for col in (s))",
    "unpivot open_t on s into name k value val",
    "pivot open_t on s using sum(v)",
    "select * from open_t pivot (sum(v) for s in ('a'))",
    "select distinct on (rowid) id from open_t",
    "select id, rowid as r from open_t order by r",
    "select id from open_t window w as (order by rowid)",
    "select id, row_number() over (order by rowid) from open_t",
    "select id as rowid2 from open_t order by rowid2",
    "select id from open_t group by rowid",
    "select id from open_t group by all having max(rowid) > 0",
    "select count(*) filter (where rowid > 0) from open_t",
    "select id from open_t where exists (select rowid)",
    "select id from open_t as o where exists (select 1 from part_t where part_t.id = o.id and o.rowid = 0)",
    "select id from open_t o, open_t p where o.id = p.id order by o.id",
    "select id from open_t natural join open_t as o2",
    "select id from open_t positional join part_t",
    "select * from open_t positional join part_t",
    "select id, v from open_t asof join part_t using (id, v)",
    "select id from open_t semi join part_t using (id)",
    "select id from open_t anti join part_t using (id)",
    "select s, v from open_t order by all",
    "select s, v from open_t group by all",
    "select * from open_t order by all",
    "select id from open_t order by s collate nocase",
    "select id from open_t where s = $1",
    "select id from open_t where s = getvariable('x')",
    "select current_setting('threads') from open_t",
    "select id from open_t limit (select count(*) from part_t)",
    "select id from open_t offset (select min(v) from part_t)",
    "select s::struct(rowid int) from open_t",
    "select id from open_t qualify rowid = 0",
    "select id from open_t qualify row_number() over () = 1",
    "select sum(id) over w from open_t window w as (partition by v order by id)",
    # the JSON arrow sqlglot reads as a lambda, whose parameter DuckDB would bind as a column
    "select coalesce(rowid -> '$') from open_t",
    "select concat(rowid -> 1) from open_t",
    "select md5(rowid -> 1) from open_t",
    "select [rowid -> 0] from open_t",
    "select list_transform([5], lambda rowid: rowid) from open_t",
    "select list_transform([5], lambda x, rowid: rowid) from open_t",
    "select list_transform([5], lambda rowid: open_t.rowid) from open_t",
    "select sum(id) over rowid from open_t window rowid as (order by id)",
    "select struct_pack(rowid := id) from open_t",
    "select {'rowid': id} from open_t",
    "select interval (rowid) day from open_t",
    "select sum(id) over (order by id rows between rowid preceding and current row) from open_t",
    "select extract(rowid from current_date) from open_t",
    "select s collate rowid from open_t",
    # a lambda's parameter as a struct qualifier: DuckDB binds `o.rowid` to the table `o` before the parameter
    "select list_transform([5], lambda o: o.rowid) from open_t as o",
    "select list_transform([5], lambda open_t: open_t.rowid) from open_t",
    "select list_transform([5], o -> o.rowid) from open_t as o",
    "select list_transform([5], lambda o: o.secret) from part_t as o",
    "select list_transform([5], lambda o: o.s) from open_t as o",
    "select list_transform([5], lambda x, o: o.rowid) from open_t as o",
    "select id from open_t as o where list_bool_or(list_transform([5], lambda o: o.rowid = 0))",
    "select id from open_t as o order by list_transform([5], lambda o: o.rowid)",
    # `t.*` of an outer query's table (LATERAL, correlated): expanded over the whole table, so no view may be
    # cut
    "select l.* from open_t, lateral (select open_t.*) l",
    "select l.* from open_t, lateral (select open_t.* exclude (id)) l",
    "select id, l.* from open_t, lateral (select open_t.*) as l",
    "select (select struct_pack(open_t.*)) from open_t",
    "select (select concat(open_t.*)) from open_t",
    "select (select concat(*columns(open_t.*))) from open_t",
    "select id from open_t where exists (select open_t.*)",
    "select * from open_t, lateral (select * from (select open_t.*))",
    "select id, (select count(*) from (select open_t.*)) from open_t",
    "select (select [open_t.*]) from open_t",
    "select list_value(open_t.*) from open_t",
    "select (select list_value(open_t.*)) from open_t",
    "select id from open_t where (select count(open_t.*)) > 0",
    'select "ROWİD" from open_t',
    "select (select concat(*columns('.*'))) from open_t",
    "select l.* from open_t, lateral (select columns('.*')) l",
    "select l.* from open_t, lateral (select *) l",
    "select l.* from open_t, lateral (select columns(*)) l",
    "select l.* from open_t as o, lateral (select o.*) l",
    "select l.* from open_t, lateral (select columns(open_t.*)) l",
    "select q.* from (select id from open_t) q",
    "select l.* from open_t, part_t, lateral (select part_t.*) l",
    "select l.* from open_t, lateral (select o2.* from open_t o2 where o2.id = open_t.id) l",
    "with c as (select open_t.* from open_t) select * from c",
    "select l.* from open_t join lateral (select open_t.*) l on true",
    "select l.* from open_t, lateral (select open_t.* from part_t) l",
    "select l.* from open_t, lateral (select open_t.* rename (id as i)) l",
    "select l.* from open_t, lateral (select open_t.* replace (1 as id)) l",
    "select l.* from open_t, lateral (select open_t.* like '%') l",
    "select l.* from open_t, lateral (select columns(c -> c like '%')) l",
    # samples with seeds, statements that are not queries, time travel, spellings of the table's name, UNNEST of
    # a whole row, ORDER BY aliases that shadow columns
    "select id from open_t using sample 50 percent (bernoulli, 7)",
    "select id from open_t using sample 50 percent (system, 7)",
    "select id from open_t using sample 2 (reservoir, 42)",
    "select id from open_t tablesample bernoulli (50 percent) repeatable (3)",
    "select id from open_t tablesample reservoir (67 percent) repeatable (3)",
    "select id from open_t as o tablesample system (50) repeatable (1)",
    "summarize open_t",
    "describe open_t",
    "show open_t",
    "select * from open_t at (version => 1)",
    "select id from open_t where id = (select max(id) from open_t as open_t)",
    "select id from x.open_t",
    "select id from main.open_t",
    'select id from "X"."MAIN"."OPEN_T"',
    'select "ID", "V" from "OPEN_T"',
    'select id from open_t as "rowid"',
    'select "rowid".id from open_t as "rowid"',
    "select id, v as w from open_t order by w collate nocase",
    "select id as w from open_t order by w nulls last, id",
    "select unnest(open_t) from open_t",
    "select unnest([o]) from open_t as o",
    "select o.id from open_t as o qualify row_number() over (partition by o.v order by o.id) = 1",
    "select id, v as w from open_t order by w limit 1 offset 1",
    "select id as id from open_t order by id",
    "select v + 0 as id from open_t order by id",
    "select id as v, v from open_t order by v",
    "select id from open_t where id in (select id as w from part_t order by w)",
    "select max(id) as w from open_t group by v order by w",
    "select (select count(*) from part_t where part_t.v < o.v) as w from open_t as o order by w",
    # ORDER BY aliases inside aggregates and WITHIN GROUP, swapped and quoted aliases, qualified alias names
    "select string_agg(s, ',' order by w), max(id) as w from open_t",
    "select list(s order by w), max(id) as w from open_t",
    "select array_agg(s order by w) as w from open_t",
    "select quantile_cont(v, 0.5 order by w), max(id) as w from open_t",
    "select percentile_cont(0.5) within group (order by w), max(id) as w from open_t",
    "select first(s order by w desc), max(id) as w from open_t",
    "select id as s, s as id from open_t order by s, id",
    "select id as w, row_number() over (order by id) as r from open_t order by r",
    "select id as w from open_t order by w limit (select count(*) from part_t)",
    "select id as w from open_t order by w, (select max(v) from part_t where part_t.id = w)",
    "select id as w from open_t order by w desc, w asc",
    'select id as "W" from open_t order by w',
    'select id as w from open_t order by "W"',
    "select id as w from open_t order by open_t.w",
]


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("bare")
    with duckdb.connect(str(folder / "x.duckdb")) as con:
        con.execute("create table open_t (id int, v int, s varchar)")
        con.execute("insert into open_t values (1, 10, 'a'), (2, 20, 'b'), (3, 20, 'c')")
        con.execute("create table part_t (id int, v int, secret varchar)")
        con.execute("insert into part_t values (1, 5, 's-one'), (3, 7, 's-three')")
        con.execute("create table unl_t (id int, v int, note varchar)")
        con.execute("insert into unl_t values (1, 10, 'n-one')")
    (folder / "saferoom.yaml").write_text(POLICY)
    with saferoom.connect(folder / "saferoom.yaml", user="ana") as opened:
        yield opened


def through_views(session: saferoom.Session) -> Guard:
    """The same role's guard, told no table is fixed: it reads every table through its view, as before."""
    given = session._guard
    return Guard(given.policy, given.user, given.role, given.spec, session._engine.catalog())


def outcome(guard: Guard, session: saferoom.Session, sql: str) -> tuple[str, object]:
    try:
        rewritten = guard.rewrite(sql).sql
    except QueryRejected as exc:
        return "refused", str(exc)
    try:
        return "rows", sorted(map(repr, session._engine._conn.execute(rewritten).fetchall()))
    except duckdb.Error as exc:
        return "error", type(exc).__name__


def test_the_engine_proves_the_tables_fixed(session: saferoom.Session) -> None:
    assert session._engine.fixed_tables() == {("x", "main", t) for t in ("open_t", "part_t", "unl_t")}


@pytest.mark.parametrize("sql", READ_BARE)
def test_a_table_its_view_would_equal_is_read_bare(session: saferoom.Session, sql: str) -> None:
    rewritten = session._guard.rewrite(sql).sql
    assert BARE.search(rewritten)
    assert '"x"."main"."part_t" AS __saferoom_t' in rewritten or "part_t" not in sql  # a denied column: a view
    assert outcome(session._guard, session, sql) == outcome(through_views(session), session, sql)


@pytest.mark.parametrize("sql", ATTACKS)
def test_an_attack_ends_as_it_does_through_views(session: saferoom.Session, sql: str) -> None:
    bare, viewed = outcome(session._guard, session, sql), outcome(through_views(session), session, sql)
    assert bare == viewed
    assert not any(secret in repr(bare) for secret in SECRETS)


@pytest.mark.parametrize("sql", [a for a in ATTACKS if NAMES_ROWID.search(a)])
def test_a_query_naming_a_pseudo_column_reads_every_table_through_its_view(session: saferoom.Session, sql: str) -> None:
    try:
        assert not BARE.search(session._guard.rewrite(sql).sql)
    except QueryRejected:
        pass  # refused as an unknown column, as before
