"""A rule of the guard: each policy table becomes its policy view, cut to the names the query uses.

The view is the enforcement: a query only ever reads a table through it, so
what a role may not see is not there to be read. Views are cut to the columns
a query names so the engine plans less; cutting only ever removes columns, so
a name missed here is a binder error, never a leak. A table whose columns the
query renames by position (``t(a, b)``) is not cut: positions must not move.

>>> import sqlglot
>>> from saferoom.guard.context import example
>>> context = example()
>>> from saferoom.guard.resolve_tables import resolve_tables
>>> substitute_views(resolve_tables(sqlglot.parse_one("select card_id from cards"), context), context).sql("duckdb")
'SELECT card_id FROM (SELECT "__saferoom_t"."card_id" AS "card_id" FROM "prod"."main"."cards" AS __saferoom_t) AS cards'
"""

from __future__ import annotations

from sqlglot import exp

from saferoom.guard.context import Context
from saferoom.guard.resolve_tables import POLICY_TABLE


def substitute_views(expression: exp.Expr, context: Context) -> exp.Expr:
    names, tables, whole, named = _scan(expression)
    context.touched.names = names
    bare = _only_columns(named, context)
    for table in tables:
        alias = table.args.get("alias") or exp.TableAlias(this=_named(table))
        # `t(a, b)` names the columns by position: a view cut to the names used would shift them onto other
        # columns (a silent wrong answer), so such a table keeps every column the role sees, in order
        kept = alias.args.get("columns") or names is None or id(table) in whole
        if kept:
            context.touched.whole.add(table.meta[POLICY_TABLE])  # the audit records every column as reached
        itself = context.itself(table.meta[POLICY_TABLE]) if bare else None
        if itself is not None:  # the view would be the table: read it bare, under the query's own alias
            _rename(table, itself, alias)
            continue
        # TABLESAMPLE samples the view's rows: the filtered, masked ones
        view = context.view(table.meta[POLICY_TABLE], None if kept else names)
        table.replace(exp.Subquery(this=view, alias=alias, sample=table.args.get("sample")))
    return expression


def _rename(table: exp.Table, itself: exp.Table, alias: exp.TableAlias) -> None:
    for part in ("this", "db", "catalog"):
        table.set(part, itself.args.get(part))
    table.set("alias", alias)


def _only_columns(named: tuple[set[str], set[str], set[str]], context: Context) -> bool:
    """Whether every name the query uses as a column is a column the role sees of a policy table it reads (and
    no pseudo-column such as `rowid`, which a table answers to and its view does not). Only then can a table
    be read bare: no other name can bind to something of the table its view would not show."""
    columns, qualifiers, relations = named
    visible = frozenset().union(*(context.columns(t).visible for t in context.touched.tables))
    allowed = visible - context.spec.pseudo_columns
    return columns <= allowed and qualifiers <= allowed | relations


def _named(table: exp.Table) -> exp.Identifier:
    """The table's own name as the alias of its view (a new leaf: a deep copy of the old one, meta and all,
    cost more than the rest of the substitution)."""
    return exp.Identifier(this=table.name, quoted=table.this.args.get("quoted"))


Named = tuple[set[str], set[str], set[str]]


def _scan(tree: exp.Expr) -> tuple[frozenset[str] | None, list[exp.Table], set[int], Named]:
    """The policy tables; every name the query could use to reach a view column (None: it may need them all);
    and the tables a `*` expands, which keep every column (by id). A `*` needs only the tables of its own
    SELECT: one anywhere else (`EXISTS (SELECT * …)`, a CTE read by name) no longer keeps every table whole.
    Last, the names used as columns (with USING's), the qualifiers of columns, and the names of relations."""
    names: set[str] = set()
    aliases: set[str] = set()
    single: set[str] = set()
    tables: list[exp.Table] = []
    whole: set[int] = set()
    named: Named = (set(), set(), set())
    everything = False
    for node in tree.walk():
        if isinstance(node, exp.Identifier):
            names.add(node.name.lower())
            _identifier(node, named)
        elif isinstance(node, (exp.Star, exp.Columns)) and not isinstance(node.parent, exp.Count):
            whole |= _expanded(node)
        elif isinstance(node, exp.Table):
            aliases.add(node.alias_or_name.lower())
            if POLICY_TABLE in node.meta:
                tables.append(node)
                if isinstance(node.parent, exp.Pivot):
                    whole.add(id(node))  # PIVOT groups by, and UNPIVOT keeps, every column it does not name
        elif isinstance(node, exp.Var):
            named[1].add(node.name.lower())  # a bare word (`year` in EXTRACT) the engine might bind: held as strictly
        if isinstance(node, exp.Column) and not node.args.get("table"):
            single.add(node.name.lower())
        elif isinstance(node, exp.Join) and str(node.args.get("method") or "").upper() == "NATURAL":
            everything = True
    everything = everything or bool(single & aliases)  # a table used as a value needs its whole row
    return (None if everything else frozenset(names)), tables, whole, named


def _identifier(node: exp.Identifier, named: Named) -> None:
    """Files a name by its role: a column's own name, one of its qualifiers, a USING column, or a relation's
    name or alias (a table's, a subquery's, a CTE's); any other identifier (a select alias) binds no column."""
    parent, key = node.parent, node.arg_key
    if isinstance(parent, exp.Column):
        named[0 if key == "this" else 1].add(node.name.lower())
    elif isinstance(parent, exp.Join):
        named[0].add(node.name.lower())
    elif isinstance(parent, (exp.Table, exp.TableAlias)):
        named[2].add(node.name.lower())


def _expanded(star: exp.Expr) -> set[int]:
    """The tables of the SELECT a `*` (or `t.*`, or COLUMNS()) stands in; none inside EXISTS, whose select list
    is never read."""
    select = star.find_ancestor(exp.Select)
    if select is None or isinstance(select.parent, exp.Exists):
        return set()
    qualifier = star.parent.table.lower() if isinstance(star.parent, exp.Column) and star.parent.table else None
    sources = [select.args.get("from_"), *select.args.get("joins", [])]
    found = (t for s in sources if s is not None for t in [s.this] if isinstance(t, exp.Table))
    return {id(t) for t in found if qualifier is None or t.alias_or_name.lower() == qualifier}
