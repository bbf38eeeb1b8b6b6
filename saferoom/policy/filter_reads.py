"""Row filters that read other tables: ``customer_id IN (SELECT customer_id FROM prod.customers WHERE …)``.

A filter's subqueries name policy tables as the policy writes them (``prod.customers``). When the policy
loads, each is resolved, its columns are checked against the table's listed ones, and every column of the
filter is pinned to the table it reads under a reserved alias: the filtered table is ``__saferoom_t``, the
tables the subqueries read ``__saferoom_f0``, ``__saferoom_f1``, … No query may write a name with that
prefix, so a query's own names (a CTE, an alias, a correlated column) can never bind inside a filter.
A table a filter reads is left as a :class:`exp.Table` named by its policy key; the guard replaces it by the
engine's name for the raw table (the filter runs with the policy's access, not the role's view).

>>> import sqlglot
>>> predicate = sqlglot.parse_one("customer_id IN (SELECT customer_id FROM prod.customers WHERE region = 'EU')")
>>> qualify_filter(predicate, "prod.orders", {"prod.orders": ["customer_id"], "prod.customers": ["customer_id", "region"]}, "duckdb").sql()
'__saferoom_t.customer_id IN (SELECT __saferoom_f0.customer_id AS customer_id FROM "prod.customers" AS __saferoom_f0 WHERE __saferoom_f0.region = \\'EU\\')'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlglot import exp
from sqlglot.errors import OptimizeError
from sqlglot.optimizer.qualify import qualify

from saferoom.policy.problems import expected

FILTERED = "__saferoom_t"  # the alias of the filtered table, inside its policy view
READ = "__saferoom_f"  # the prefix of the aliases of the tables a filter reads
_STAND_IN = "__saferoom_k"  # a table's name while sqlglot qualifies the filter
_MARKER = "__saferoom_attr__"  # a placeholder's column (see filters.py); kept aside while columns are qualified


def reads(predicate: exp.Expr) -> bool:
    """Whether a filter reads other tables (has a subquery)."""
    return predicate.find(exp.Query) is not None


def read_tables(predicate: exp.Expr) -> tuple[str, ...]:
    """The policy tables a qualified filter reads, in order, each once."""
    return tuple(dict.fromkeys(t.name for t in predicate.find_all(exp.Table)))


def resolve(table: exp.Table, listed: Sequence[str]) -> str:
    """The policy key a filter's table names, written as the policy writes it; ``ValueError`` otherwise."""
    if not isinstance(table.this, exp.Identifier):
        raise ValueError("a row filter's subqueries read policy tables by name, not table functions")
    written = ".".join(p.name for p in table.parts)
    found = [key for key in listed if key.lower() == written.lower()]
    if not found:
        raise ValueError(f"reads table `{written}`, which is not under `tables:` (write it as the policy does, "
                         f"source.table); {expected(written, list(listed))}")
    return found[0]


def qualify_filter(predicate: exp.Expr, own: str, columns: Mapping[str, Sequence[str]], dialect: str) -> exp.Expr:
    """Pin every column of a filter that reads other tables to its table's reserved alias; ``ValueError`` for a
    table or column the policy does not list, a WITH, or two tables of the filter under one name."""
    if predicate.find(exp.With) is not None:
        raise ValueError("a row filter's subqueries may not use WITH; write each subquery where it is used")
    tree = exp.select("1").from_(_stand_in(own, 0, None), copy=False).where(_hide_markers(predicate.copy()), copy=False)
    keys = [own]
    for table in list(tree.args["where"].find_all(exp.Table)):
        keys.append(resolve(table, list(columns)))
        table.replace(_stand_in(keys[-1], len(keys) - 1, table))
    aliases = _aliases(tree, keys)
    schema: dict[str, object] = {f"{_STAND_IN}{i}": {c.lower(): "TEXT" for c in columns[key]} for i, key in enumerate(keys)}
    try:
        qualified = qualify(tree, schema=schema, dialect=dialect, validate_qualify_columns=True, quote_identifiers=False,
                            expand_stars=True)
    except OptimizeError as exc:
        raise ValueError(f"{_unresolved(exc)}; a filter may use only the listed columns of the tables it names") from None
    return _show_markers(_rename(qualified.args["where"].this, aliases, keys))


def _stand_in(key: str, index: int, written: exp.Table | None) -> exp.Table:
    """A one-part name sqlglot can qualify against, under the name the filter's columns use for the table."""
    name = written.alias_or_name if written is not None else key.split(".")[-1]
    return exp.Table(this=exp.to_identifier(f"{_STAND_IN}{index}"), alias=exp.TableAlias(this=exp.to_identifier(name)))


def _aliases(tree: exp.Expr, keys: list[str]) -> dict[str, int]:
    """Each table's name in the filter, lower-cased, and its index; a name used twice would make renaming ambiguous."""
    aliases: dict[str, int] = {}
    for table in tree.find_all(exp.Table):
        name, index = table.alias.lower(), int(table.name[len(_STAND_IN):])
        if name in aliases:
            raise ValueError(f"two tables of the filter are both named `{name}` (a subquery reading the filtered "
                             f"table names it as the filter does); give each its own alias, e.g. `FROM {keys[index]} AS m`")
        aliases[name] = index
    return aliases


def _rename(predicate: exp.Expr, aliases: dict[str, int], keys: list[str]) -> exp.Expr:
    def alias(index: int) -> exp.Identifier:
        return exp.to_identifier(FILTERED if index == 0 else f"{READ}{index - 1}")

    for column in predicate.find_all(exp.Column):
        column.set("table", alias(aliases[column.table.lower()]))
    for table in predicate.find_all(exp.Table):
        index = int(table.name[len(_STAND_IN):])
        table.set("this", exp.to_identifier(keys[index], quoted=True))
        table.set("alias", exp.TableAlias(this=alias(index)))
    return predicate


def _hide_markers(predicate: exp.Expr) -> exp.Expr:
    """Placeholders become parameters while sqlglot qualifies columns, which it leaves alone."""
    def hide(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Column) and node.name.startswith(_MARKER):
            return exp.Placeholder(this=node.name)
        return node

    return predicate.transform(hide)


def _show_markers(predicate: exp.Expr) -> exp.Expr:
    def show(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Placeholder) and str(node.name).startswith(_MARKER):
            return exp.column(node.name)
        return node

    return predicate.transform(show)


def _unresolved(exc: OptimizeError) -> str:
    said = str(exc).splitlines()[0]
    return said.replace("Column ", "column ").replace(_STAND_IN, "table ")


def cycle(reads_of: Mapping[str, Sequence[str]]) -> list[str] | None:
    """A loop among filters (a table's filter reads a table whose filter reads … the first), or None.

    >>> cycle({"prod.orders": ["prod.customers"], "prod.customers": ["prod.orders"]})
    ['prod.orders', 'prod.customers', 'prod.orders']
    >>> cycle({"prod.orders": ["prod.customers"], "prod.customers": ["prod.customers"]}) is None
    True
    """
    done: set[str] = set()
    for start in reads_of:
        found = _walk(start, [], reads_of, done)
        if found:
            return found
    return None


def _walk(table: str, path: list[str], reads_of: Mapping[str, Sequence[str]], done: set[str]) -> list[str] | None:
    if table in path:
        return [*path[path.index(table):], table]
    if table in done:
        return None
    for read in reads_of.get(table, ()):
        if read != table:  # a filter reading its own raw table is not a loop: it never meets its own filter
            found = _walk(read, [*path, table], reads_of, done)
            if found:
                return found
    done.add(table)
    return None
