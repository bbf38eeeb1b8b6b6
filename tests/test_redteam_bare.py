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


@pytest.mark.parametrize("sql", [a for a in ATTACKS if "rowid" in a])
def test_a_query_naming_a_pseudo_column_reads_every_table_through_its_view(session: saferoom.Session, sql: str) -> None:
    try:
        assert not BARE.search(session._guard.rewrite(sql).sql)
    except QueryRejected:
        pass  # refused as an unknown column, as before
