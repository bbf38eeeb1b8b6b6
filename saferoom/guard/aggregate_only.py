"""A rule of the guard: an aggregate-only role gets only groups that rest on enough distinct entities.

For a role with ``aggregate:`` (see :mod:`saferoom.policy.aggregate`), a query that reads a table the rules
cover must aggregate every row it returns (:mod:`saferoom.guard.aggregate_shape` says what that allows).
The query is then rewritten so the engine counts, for each group, the distinct entities (customers) behind
it, through each table's entity key, and drops a group under ``min_group``: the counts are conditions
of the query's HAVING, computed alongside the user's aggregates and never returned. Every table that
carries the entity must reach the minimum (a join of an order with some other customer's row counts on
both), so ten orders of one customer count as one entity.

A query with a WHERE must also leave at least ``min_group`` entities out (the query-set restriction):
otherwise the total minus its answer would be the answer for the few it leaves out.

On DuckDB, a query without ORDER BY, LIMIT or DISTINCT counts distinct entities only for the groups a
cheap certificate cannot settle (:mod:`saferoom.guard.aggregate_certified`): same groups, far less work.
Where the engine proves how a table's rows share the key (a read-only file: see ``Guard.key_rows``), a
query of that table alone is certified by its row counts, one that reads it whole needs no count at all,
and a DP bound no entity exceeds is left out. Other queries keep ``count(DISTINCT key)`` in the HAVING.

Suppressed groups are dropped, not folded into a remainder group (see docs/aggregate.md for why).

>>> import sqlglot
>>> context = example()
>>> from saferoom.guard.resolve_tables import resolve_tables
>>> tree = resolve_tables(sqlglot.parse_one("select region, count(*) from orders group by region"), context)
>>> rewritten = aggregate_only(tree, context)
>>> rewritten.args["with_"].expressions[0].this.args["having"].sql()
'HAVING COUNT("orders"."customer_id") >= 10'
>>> rewritten.args["where"].sql()[:66]
'WHERE BIT_COUNT(__saferoom_b0) >= 10 OR EXISTS(SELECT 1 FROM (SELE'
"""

from __future__ import annotations

from collections.abc import Callable

from sqlglot import exp

from saferoom.engines.base import KeyRows
from saferoom.errors import QueryRejected
from saferoom.guard.aggregate_certified import certifiable, certified, upper_bound
from saferoom.guard.aggregate_dominance import dominance_condition
from saferoom.guard.aggregate_dp import NoisePlan, bound_contributions, plan_noise
from saferoom.guard.aggregate_shape import check_shape, group_expressions, group_keys
from saferoom.guard.context import Context, changed
from saferoom.guard.resolve_tables import POLICY_TABLE
from saferoom.policy import Action
from saferoom.policy.aggregate import DP, Aggregate, entity_key


def aggregate_only(expression: exp.Expr, context: Context) -> exp.Expr:
    rules = context.policy.model.roles[context.role].aggregate
    if rules is None or not any(rules.covers(t) for t in context.touched.tables):
        return expression
    changed(context)  # the query gains conditions: the rules after walk it afresh
    _check(expression, context, rules)
    assert isinstance(expression, exp.Select)  # check_shape refused anything else
    owned = entity_columns(expression, context, rules)
    keys = [key for _, key in owned]
    bounded: list[tuple[exp.Table, str]] = []
    if rules.dp is not None:
        _refuse_unkeyed_joins(expression, owned, rules)
        limited = _limited(expression, context, rules)
        context.touched.noise = _with_noise(expression, rules.dp, len(limited))
        bounded = [(t, k) for t, k in limited if not _within(context, t, k, rules.dp.max_contributions)]
    facts = _key_rows(expression, owned, context)
    whole = _read_whole(expression, owned, context, facts)
    unique = _one_row_each(expression, context, rules)
    # a bounding window keeps rows of the engine's choice, which a recount would choose anew: one HAVING instead
    fast = whole is None and not unique and not bounded and bool(keys) and certifiable(expression, context.spec.dialect)
    _add_having(expression, [*_entity_conditions(keys, rules.min_group, whole, fast, unique),
                             *_other_conditions(expression, context, rules, keys, unique)])
    if rules.dp is not None:
        bound_contributions(bounded, rules.dp.max_contributions, _used_columns(expression, context))
    if not fast:
        return expression
    by_rows = _by_rows(expression, owned, context, facts, rules.min_group)
    return certified(expression, keys, rules.min_group, _integers(owned, context), by_rows)


def _check(expression: exp.Expr, context: Context, rules: Aggregate) -> None:
    """The query's shape (:mod:`saferoom.guard.aggregate_shape`), refused in the role's words."""
    try:
        check_shape(expression, identifiers(context, rules))
        _refuse_renamed_columns(expression)
    except QueryRejected as exc:
        raise QueryRejected(f"{exc.message}. Role `{context.role}` may only {rules.allowed_instead()}",
                            column=exc.column) from None


def _entity_conditions(keys: list[exp.Column], minimum: int, whole: int | None, fast: bool, unique: bool) -> list[exp.Expr]:
    """Each group's minimum: known for a table read whole, a cheap upper bound where the groups are then
    certified, else the exact count."""
    if whole is not None:
        return [] if whole >= minimum else [exp.false()]
    return [upper_bound(k, minimum) if fast else _at_least(_entities(k, unique), minimum) for k in keys]


def _other_conditions(select: exp.Select, context: Context, rules: Aggregate, keys: list[exp.Column],
                      unique: bool) -> list[exp.Expr]:
    """The query-set restriction of a WHERE, and the dominance rule."""
    conditions = [_at_least(_left_out(select, k, unique), rules.min_group) for k in keys] if select.args.get("where") else []
    if rules.dominance and context.spec.dialect != "duckdb":  # its condition is written in DuckDB's list functions
        raise QueryRejected(f"role `{context.role}` has a dominance rule, which saferoom checks on DuckDB sources "
                            f"only; ask the security team (this {context.spec.dialect} source cannot answer it)")
    dominated = dominance_condition(select, keys[0], rules.dominance) if rules.dominance and keys else None
    return conditions + ([dominated] if dominated is not None else [])


def _add_having(select: exp.Select, conditions: list[exp.Expr]) -> None:
    having = select.args.get("having")
    everything = [having.this, *conditions] if having is not None else conditions
    if everything:
        select.set("having", exp.Having(this=exp.and_(*everything, copy=False)))


def _refuse_renamed_columns(select: exp.Expr) -> None:
    """Columns renamed by position (``orders AS o(i, k, a, r)``) hide which one is the entity key, which the
    rewrite must name; refused with what to write instead (never an engine error)."""
    if not isinstance(select, exp.Select):
        return
    for table in _sources(select):
        alias = table.args.get("alias")
        if isinstance(alias, exp.TableAlias) and alias.columns:
            names = ", ".join(c.name for c in alias.columns)
            raise QueryRejected(f"columns renamed by position in `{alias.name}({names})` hide which one is the entity "
                                f"key that each group's count needs: rename them in the select list (`customer_id AS k`)")


def _refuse_unkeyed_joins(select: exp.Select, owned: list[tuple[str, exp.Column]], rules: Aggregate) -> None:
    """With DP, each joined table must equate its entity key with an earlier table's: every row of the join is
    then one entity's, at most ``max_contributions ** tables`` of them, which the noise is scaled to. A join on
    anything else (or none, or a table without a key) pairs one entity's row with many others' rows."""
    sources = _sources(select)
    if len(sources) == 1:
        return
    keyed = [(key.table.lower(), key.name.lower()) for _, key in owned]
    for i, join in enumerate(select.args.get("joins") or [], start=1):
        pairs = [_names(eq) for eq in _conjuncts(join.args.get("on"))]
        if len(keyed) != len(sources) or not any(keyed[i] in pair and pair & set(keyed[:i]) for pair in pairs):
            raise QueryRejected(f"with differential privacy each JOIN must be a join on the entity key of the tables it "
                                f"pairs (`ON a.{rules.entity_column} = b.{rules.entity_column}`, other conditions may "
                                f"follow with AND): any other join pairs one {rules.entity_column}'s rows with many "
                                f"others', past the rows one entity adds that the noise is scaled to")


def _conjuncts(condition: exp.Expr | None) -> list[exp.Expr]:
    if condition is None:
        return []
    condition = condition.unnest()
    return list(condition.flatten()) if isinstance(condition, exp.And) else [condition]


def _names(condition: exp.Expr) -> set[tuple[str, str]]:
    """The (qualifier, column) pairs a condition ``a.x = b.y`` equates, lower-cased (none for anything else)."""
    sides = (condition.this, condition.expression) if isinstance(condition, exp.EQ) else ()
    return {(s.table.lower(), s.name.lower()) for s in sides if isinstance(s, exp.Column)}


def _with_noise(select: exp.Select, dp: DP, limited: int) -> NoisePlan:
    """The noise, scaled to the rows one entity adds: ``max_contributions`` from each of the ``limited`` tables."""
    return plan_noise(select, dp, group_keys(select), rows_per_entity=dp.max_contributions ** limited)


def _limited(select: exp.Select, context: Context, rules: Aggregate) -> list[tuple[exp.Table, str]]:
    """The covered tables other than the entity's own (which holds one row per entity, unless the engine proves
    otherwise), with their keys."""
    found = []
    for table in _sources(select):
        name = table.meta[POLICY_TABLE]
        key = entity_key(rules, name, context.policy.columns(name))
        if rules.covers(name) and key is not None and (name != rules.entity_table or _repeats(context, name, key)):
            found.append((table, key))
    return found


def _used_columns(select: exp.Select, context: Context) -> Callable[[exp.Table], list[str]]:
    """For a table of the query, its visible columns whose names the query uses (under any qualifier: one
    too many costs a little, one too few would be an error)."""
    used = {c.name.lower() for c in select.find_all(exp.Column)}

    def kept(table: exp.Table) -> list[str]:
        visible = context.columns(table.meta[POLICY_TABLE]).visible
        return sorted(c for c in visible if c.lower() in used)
    return kept


def _sources(select: exp.Select) -> list[exp.Table]:
    return [select.args["from_"].this, *(j.this for j in select.args.get("joins") or [])]


EXAMPLE_POLICY = ("{version: 1, sources: {prod: {engine: duckdb, path: prod.duckdb}}, tags: {key: {}}, "
                  "tables: {prod.orders: {order_id: public, customer_id: key, region: public, amount: public}, "
                  "prod.customers: {customer_id: key, segment: public}}, "
                  "users: {mo: {roles: [marketing]}}, roles: {marketing: {columns: {key: allow}, "
                  "aggregate: {min_group: 10, entity: prod.customers.customer_id}}}}")


def example() -> Context:
    """The context of this rule's examples: `mo` of role `marketing`, aggregate-only over prod.orders and
    prod.customers."""
    from saferoom.engines.duckdb import DUCKDB  # here, not at the top: the guard imports this module
    from saferoom.guard import Guard
    from saferoom.policy import parse_policy

    types = {"order_id": "BIGINT", "customer_id": "BIGINT", "region": "VARCHAR", "amount": "DOUBLE"}
    return Guard(parse_policy(EXAMPLE_POLICY), "mo", "marketing", DUCKDB, {("prod", "main", "orders"): types}).context()


def identifiers(context: Context, rules: Aggregate) -> frozenset[str]:
    """Names of direct identifiers in the tables read: entity keys, and columns the role sees only as tokens."""
    names: set[str] = set()
    for table in context.touched.tables:
        listed = context.policy.columns(table)
        key = entity_key(rules, table, listed)
        names.update([key] if key else [])
        names.update(c for c in listed if context.policy.rule(context.role, table, c).action is Action.TOKENIZE)
    return frozenset(names)


def entity_columns(select: exp.Select, context: Context, rules: Aggregate) -> list[tuple[str, exp.Column]]:
    """Each covered table's entity key, as a column of the query (``alias.customer_id``), with its policy table."""
    columns = []
    for table in _sources(select):
        name = table.meta[POLICY_TABLE]
        if not rules.covers(name):
            continue
        key = entity_key(rules, name, context.policy.columns(name))
        if key is None:
            raise QueryRejected(f"table {name} has no column holding the {rules.entity} it is about, so its groups "
                                f"cannot be counted; ask the security team to declare it under the role's "
                                f"`aggregate.keys`")
        columns.append((name, exp.column(key, table=exp.to_identifier(table.alias_or_name, quoted=True), quoted=True)))
    return columns


def _integers(owned: list[tuple[str, exp.Column]], context: Context) -> frozenset[int]:
    """Positions, among the keys :func:`entity_columns` lists, of those the role sees whole and of an integer type."""
    return frozenset(i for i, (name, key) in enumerate(owned) if key.name.lower() in context.columns(name).integers)


def _key_rows(select: exp.Select, owned: list[tuple[str, exp.Column]], context: Context) -> list[KeyRows | None]:
    """For a query of one table, how its rows share the entity key, where proven (see Guard.key_rows): a
    group's non-NULL keys over the most rows one entity has are then enough entities. Not for a join, which
    may repeat a row."""
    if len(_sources(select)) != 1:
        return [None] * len(owned)
    return [context.key_rows(name, key.name) for name, key in owned]


def _by_rows(select: exp.Select, owned: list[tuple[str, exp.Column]], context: Context, facts: list[KeyRows | None],
             minimum: int) -> list[int | None]:
    """For each key, the most rows of one entity when its groups are to be certified by their rows: where that
    is proven and the groups are expected large (on average at least twice the rows that prove a minimum).
    Otherwise most groups would fall to the exact recount, which costs far more than the buckets: 9x against
    1.3x a plain group-by at 100,000 groups of 100 orders."""
    groups = _most_groups(select, owned[0][0], context) if len(owned) == 1 else None
    return [f.most if f is not None and groups is not None and f.rows >= 2 * minimum * max(f.most, 1) * groups
            else None for f in facts]


def _most_groups(select: exp.Select, table: str, context: Context) -> int | None:
    """At most how many groups a query of ``table`` makes: the product of its GROUP BY columns' distinct values
    (and a NULL each), as proven for the table; None when a key is not a plain column or nothing is proven."""
    count = 1
    for key in group_expressions(select):
        found = context.key_rows(table, key.name) if isinstance(key, exp.Column) else None
        if found is None:
            return None
        count *= found.values + 1
    return count


# what a query that reads its table whole may have (an allowlist: a sample, a WHERE, a join, a GROUP BY... each
# leaves some rows or entities out), and what its table may be: a name and an alias
WHOLE = frozenset({"expressions", "from_", "having"})
NAMED = frozenset({"this", "db", "catalog", "alias"})


def _read_whole(select: exp.Select, owned: list[tuple[str, exp.Column]], context: Context,
                facts: list[KeyRows | None]) -> int | None:
    """The entities of a query that reads one fixed table whole (no WHERE, no GROUP BY, no row filter of the
    role's): its one group rests on all of them, a number proven once (see Guard.key_rows)."""
    if len(facts) != 1 or facts[0] is None or context.policy.row_filter(context.role, owned[0][0]) is not None:
        return None
    source = select.args["from_"].this
    plain = {k for k, v in select.args.items() if v} <= WHOLE and {k for k, v in source.args.items() if v} <= NAMED
    return facts[0].values if plain and isinstance(source, exp.Table) else None


def _within(context: Context, table: exp.Table, key: str, most: int) -> bool:
    """Whether no entity has more than ``most`` rows in ``table`` (proven, see Guard.key_rows): bounding its
    rows would drop none, so the table is read as it is. The noise is still scaled to the bound."""
    found = context.key_rows(table.meta[POLICY_TABLE], key)
    return found is not None and found.most <= most


def _one_row_each(select: exp.Select, context: Context, rules: Aggregate) -> bool:
    """Whether the query reads the entity's own table alone, whose rows are one per entity (its key is the
    primary key: docs/aggregate.md), so that counting keys counts entities without a costly DISTINCT."""
    sources = _sources(select)
    return (len(sources) == 1 and sources[0].meta[POLICY_TABLE] == rules.entity_table
            and not _repeats(context, rules.entity_table, rules.entity_column))


def _repeats(context: Context, table: str, key: str) -> bool:
    """Whether the engine proves some entity has more rows than one in ``table`` (see Guard.key_rows): an entity
    table whose key is not its primary key, which is then counted and bounded as any other table."""
    found = context.key_rows(table, key)
    return found is not None and found.most > 1


def _entities(key: exp.Column, unique: bool) -> exp.Expr:
    return exp.Count(this=key.copy()) if unique else exp.Count(this=exp.Distinct(expressions=[key.copy()]))


def _at_least(count: exp.Expr, minimum: int) -> exp.Expr:
    return exp.GTE(this=count, expression=exp.Literal.number(minimum))


def _left_out(select: exp.Select, key: exp.Column, unique: bool) -> exp.Expr:
    """Entities the WHERE leaves out: all the query's sources hold, less those its rows hold."""
    every = _distinct_entities(select, key, unique, where=False)
    kept = _distinct_entities(select, key, unique, where=True)
    return exp.Sub(this=every, expression=kept)


def _distinct_entities(select: exp.Select, key: exp.Column, unique: bool, *, where: bool) -> exp.Expr:
    inner = exp.Select(expressions=[_entities(key, unique)]).from_(select.args["from_"].copy(), copy=False)
    for join in select.args.get("joins") or []:
        inner.append("joins", join.copy())
    if where:
        inner.set("where", select.args["where"].copy())
    return exp.Subquery(this=inner)
