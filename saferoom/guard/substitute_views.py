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

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlglot import exp

from saferoom.guard.context import Context, all_nodes
from saferoom.guard.resolve_tables import POLICY_TABLE


def substitute_views(expression: exp.Expr, context: Context) -> exp.Expr:
    names, tables, whole, named = _scan(all_nodes(expression, context))
    context.touched.names = names
    bare = _only_columns(named, context)
    for table in tables:
        alias = table.args.get("alias") or exp.TableAlias(this=_named(table))
        # `t(a, b)` names the columns by position: a view cut to the names used would shift them onto other
        # columns (a silent wrong answer), so such a table keeps every column the role sees, in order
        kept = alias.args.get("columns") or names is None or id(table) in whole
        if kept:
            context.touched.whole.add(table.meta[POLICY_TABLE])  # the audit records every column as reached
        itself = context.itself(table.meta[POLICY_TABLE]) if bare and _plain(table) else None
        if itself is not None:  # the view would be the table: read it bare, under the query's own alias
            _rename(table, itself, alias)
            continue
        # TABLESAMPLE samples the view's rows: the filtered, masked ones
        view = context.view(table.meta[POLICY_TABLE], None if kept else names)
        table.replace(exp.Subquery(this=view, alias=alias, sample=table.args.get("sample")))
    return expression


# a table reference with nothing attached but a name, an alias and a sample: its view replaces exactly these
# (a `PIVOT` written after the table, say, is left to the view's path)
_PLAIN = frozenset({"this", "db", "catalog", "alias", "sample"})


def _plain(table: exp.Table) -> bool:
    return all(key in _PLAIN for key, value in table.args.items() if value)


def _rename(table: exp.Table, itself: exp.Table, alias: exp.TableAlias) -> None:
    for part in ("this", "db", "catalog"):
        table.set(part, itself.args.get(part))
    table.set("alias", alias)


def _only_columns(named: Named, context: Context) -> bool:
    """Whether every name the query uses as a column is a column the role sees of a policy table it reads (and
    no pseudo-column such as `rowid`, which a table answers to and its view does not). Only then can a table
    be read bare: no other name can bind to something of the table its view would not show. A whole ORDER BY
    term naming a select alias binds to the alias; it passes too. No name at all may be spelled like a
    pseudo-column, whatever sqlglot takes it for (a lambda's parameter, an alias, a relation): DuckDB's binder,
    not sqlglot's tree, decides what it reaches."""
    visible = frozenset().union(*(context.columns(t).visible for t in context.touched.tables))
    pseudo = context.spec.pseudo_columns
    allowed = visible - pseudo
    return (named.columns <= allowed and named.qualifiers <= allowed | named.relations
            and not (named.relations | named.ordered | named.others) & pseudo)


def _named(table: exp.Table) -> exp.Identifier:
    """The table's own name as the alias of its view (a new leaf: a deep copy of the old one, meta and all,
    cost more than the rest of the substitution)."""
    return exp.Identifier(this=table.name, quoted=table.this.args.get("quoted"))


@dataclass
class Named:
    """The names a query uses, by what they name (see :meth:`_Scan.identifier`)."""

    columns: set[str] = field(default_factory=set)  # a column's own name, or a USING column
    qualifiers: set[str] = field(default_factory=set)  # a column's table (or schema) qualifier, and bare words
    relations: set[str] = field(default_factory=set)  # a table's, subquery's or CTE's name or alias
    ordered: set[str] = field(default_factory=set)  # a whole ORDER BY term naming a select alias of its SELECT
    others: set[str] = field(default_factory=set)  # a select alias, a lambda's parameter, a window's name


def _scan(nodes: Iterable[exp.Expr]) -> tuple[frozenset[str] | None, list[exp.Table], set[int], Named]:
    """The policy tables; every name the query could use to reach a view column (None: it may need them all);
    and the tables a `*` expands, which keep every column (by id). A `*` needs only the tables of its own
    SELECT: one anywhere else (`EXISTS (SELECT * …)`, a CTE read by name) no longer keeps every table whole.
    Last, the names used as columns (with USING's), the qualifiers of columns, and the names of relations.

    One pass over every node of the query, dispatched on the node's exact class (sqlglot's classes used here
    have no subclasses but Column's Pseudocolumn, listed): this pass is a large part of a guard pass."""
    names: set[str] = set()
    scan = _Scan()
    for node in nodes:
        kind = type(node)
        if kind is exp.Identifier:
            name = node.this.lower()
            names.add(name)
            scan.identifier(node, name)
        elif kind in _VISIT:
            _VISIT[kind](scan, node)
    everything = scan.everything or bool(scan.single & scan.aliases)  # a table used as a value needs its whole row
    return (None if everything else frozenset(names)), scan.tables, scan.whole, scan.named


class _Scan:
    """What one walk of :func:`_scan` gathers."""

    def __init__(self) -> None:
        self.aliases: set[str] = set()
        self.single: set[str] = set()
        self.tables: list[exp.Table] = []
        self.whole: set[int] = set()
        self.named = Named()
        self.everything = False

    def identifier(self, node: exp.Expr, name: str) -> None:
        """Files a name by its role: a column's own name, one of its qualifiers, a USING column, or a
        relation's name or alias (a table's, a subquery's, a CTE's); any other (a select alias, a lambda's
        parameter, a window's name) binds no column, and is filed apart."""
        parent = type(node.parent)
        if parent is exp.Column or parent is exp.Pseudocolumn:
            if node.arg_key != "this":
                self.named.qualifiers.add(name)
            elif _orders_by_alias(node.parent, name):
                self.named.ordered.add(name)
            else:
                self.named.columns.add(name)
        elif parent is exp.Join:
            self.named.columns.add(name)
        elif parent is exp.Table or parent is exp.TableAlias:
            self.named.relations.add(name)
        else:
            self.named.others.add(name)

    def star(self, node: exp.Expr) -> None:
        if not isinstance(node.parent, exp.Count):
            expanded = _expanded(node)
            if expanded is None:  # `t.*` of an outer query's table (LATERAL, correlated): keep every column
                self.everything = True
            else:
                self.whole |= expanded

    def table(self, node: exp.Table) -> None:
        self.aliases.add(node.alias_or_name.lower())
        if POLICY_TABLE in node.meta:
            self.tables.append(node)
            if isinstance(node.parent, exp.Pivot):
                self.whole.add(id(node))  # PIVOT groups by, and UNPIVOT keeps, every column it does not name

    def var(self, node: exp.Var) -> None:
        self.named.qualifiers.add(node.name.lower())  # a bare word (`year` in EXTRACT) the engine might bind: held as strictly

    def column(self, node: exp.Column) -> None:
        if not node.args.get("table"):
            self.single.add(node.name.lower())

    def join(self, node: exp.Join) -> None:
        if str(node.args.get("method") or "").upper() == "NATURAL":
            self.everything = True


def _orders_by_alias(column: exp.Expr | None, name: str) -> bool:
    """Whether ``column`` is a whole ORDER BY term naming a select alias of its own SELECT (`ORDER BY value`
    after `… AS value`): DuckDB binds such a term to the alias before any column of a table, so it reaches
    nothing of one (inside an expression, `ORDER BY value + 0`, a table's column comes first: not this)."""
    if column is None:
        return False
    ordered = column.parent
    if column.args.get("table") or type(ordered) is not exp.Ordered or column.arg_key != "this":
        return False
    select = ordered.parent.parent if type(ordered.parent) is exp.Order else None
    return type(select) is exp.Select and any(p.alias.lower() == name for p in select.expressions)


_VISIT: dict[type[exp.Expr], Callable[[_Scan, Any], None]] = {exp.Star: _Scan.star, exp.Columns: _Scan.star, exp.Table: _Scan.table, exp.Var: _Scan.var,
          exp.Column: _Scan.column, exp.Pseudocolumn: _Scan.column, exp.Join: _Scan.join}


def _expanded(star: exp.Expr) -> set[int] | None:
    """The tables of the SELECT a `*` (or `t.*`, or COLUMNS()) stands in; none inside EXISTS, whose select list
    is never read. None for a `t.*` naming no source of its own SELECT: DuckDB expands it over a table of an
    outer query (`FROM t, LATERAL (SELECT t.*)`), which this pass cannot tell apart, so no view may be cut."""
    select = star.find_ancestor(exp.Select)
    if select is None or isinstance(select.parent, exp.Exists):
        return set()
    qualifier = star.parent.table.lower() if isinstance(star.parent, exp.Column) and star.parent.table else None
    joined = [select.args.get("from_"), *select.args.get("joins", [])]
    sources = [s.this for s in joined if s is not None]
    if qualifier is not None and all(s.alias_or_name.lower() != qualifier for s in sources):
        return None
    return {id(t) for t in sources if isinstance(t, exp.Table) and (qualifier is None or t.alias_or_name.lower() == qualifier)}
