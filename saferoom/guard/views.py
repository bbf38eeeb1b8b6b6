"""Policy views: the only form in which a query ever sees a table.

A policy view is ``(SELECT <masked columns> FROM <table> WHERE <row filter>)``.
When a row filter exists, every column is also wrapped in ``CASE WHEN
<filter> THEN ... END``: the engine's optimizer may evaluate a user's
predicate before the view's WHERE (filter pushdown and reordering are legal
for it), and the CASE guarantees such an early evaluation sees only NULLs for
a row the filter removes, never its values.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal, localcontext
from functools import lru_cache

import sqlglot
from sqlglot import exp

from saferoom.engines.base import ColumnTypes, EngineSpec
from saferoom.guard.check_nodes import check_filter
from saferoom.policy import Action, ColumnRule, Policy, TableRef
from saferoom.policy.filter_reads import FILTERED, read_tables
from saferoom.policy.filters import bind_filter, placeholders
from saferoom.policy.model import Attribute

INNER_ALIAS = FILTERED
VERDICT = "__saferoom_ok"  # the inner query's column holding a filter's verdict on its row
REDACTED = "REDACTED"


def visible_columns(policy: Policy, role: str, table: str, types: ColumnTypes) -> list[tuple[ColumnRule, str]]:
    """Listed columns that exist in the source, in source order, minus denied ones."""
    listed = policy.columns(table)
    rules = [(policy.rule(role, table, name), kind) for name, kind in types.items() if name in listed]
    return [(rule, kind) for rule, kind in rules if rule.action is not Action.DENY]


def build_view(
    policy: Policy,
    role: str,
    attributes: dict[str, Attribute],
    table: TableRef,
    types: ColumnTypes,
    spec: EngineSpec,
    keep: frozenset[str] | None = None,
    user_filters: bool = True,
    binder: Callable[[exp.Expr], exp.Expr] | None = None,
) -> exp.Select:
    """The policy view of one table; ``keep`` cuts it to the columns a query names.

    A build has no user: with ``user_filters=False`` a filter that needs a user
    attribute is left out (the analytics database's own policy carries it).
    """
    bound, reads = _bound_filter(policy, role, attributes, table, spec, user_filters, binder)
    shown = [(rule, kind) for rule, kind in visible_columns(policy, role, table.key, types) if keep is None or rule.column in keep]
    if bound is not None and reads and not isinstance(bound, exp.Boolean):  # FALSE: a user without the attribute
        return _verdict_view(table, shown, bound, spec)
    return _view(_projections(shown, bound, spec), _physical(table, spec), bound)


def _bound_filter(policy: Policy, role: str, attributes: dict[str, Attribute], table: TableRef, spec: EngineSpec,
                  user_filters: bool, binder: Callable[[exp.Expr], exp.Expr] | None) -> tuple[exp.Expr | None, bool]:
    """The role's filter on the table with the user's attributes bound, and whether it reads other tables."""
    predicate = policy.row_filter(role, table.key)
    if predicate is None:
        return None, False
    check_filter(policy, role, table.key, spec)
    if not user_filters and placeholders(predicate):
        return None, False
    reads = bool(read_tables(predicate))
    predicate = _raw_reads(policy, predicate, spec)  # before binding: a binder may add tables of its own
    return _qualify(binder(predicate) if binder else bind_filter(predicate, attributes)), reads


def _projections(shown: list[tuple[ColumnRule, str]], guard: exp.Expr | None, spec: EngineSpec) -> list[exp.Expr]:
    projections = [exp.alias_(_guarded(masked(rule, kind, spec), guard), exp.to_identifier(rule.column, quoted=True))
                   for rule, kind in shown]
    # every kept column is denied: still a valid, empty-handed view
    return projections or [exp.alias_(exp.Null(), exp.to_identifier(INNER_ALIAS + "_none", quoted=True))]


def _view(projections: list[exp.Expr], source: exp.Expr, where: exp.Expr | None) -> exp.Select:
    select = exp.Select(expressions=projections).from_(source, copy=False)
    return select.where(where, copy=False) if where is not None else select


def _verdict_view(table: TableRef, shown: list[tuple[ColumnRule, str]], bound: exp.Expr,
                  spec: EngineSpec) -> exp.Select:
    """``SELECT CASE WHEN ok THEN <masked> END … FROM (SELECT <raw columns>, <filter> AS ok FROM raw) WHERE ok``."""
    raw = [exp.alias_(exp.column(rule.column, table=INNER_ALIAS, quoted=True), exp.to_identifier(rule.column, quoted=True))
           for rule, _ in shown]
    inner = exp.Select(expressions=[*raw, exp.alias_(bound, exp.to_identifier(VERDICT))]).from_(_physical(table, spec), copy=False)
    verdict = exp.column(VERDICT, table=INNER_ALIAS)
    source = exp.Subquery(this=inner, alias=exp.TableAlias(this=exp.to_identifier(INNER_ALIAS)))
    return _view(_projections(shown, verdict, spec), source, verdict.copy())


def _raw_reads(policy: Policy, predicate: exp.Expr, spec: EngineSpec) -> exp.Expr:
    """The tables a filter reads (named by their policy key), by the engine's name for the raw table, under the
    filter's own aliases."""
    for table in list(predicate.find_all(exp.Table)):
        physical = _physical(policy.tables[table.name], spec)
        physical.set("alias", table.args["alias"].copy())
        table.replace(physical)
    return predicate


def _physical(table: TableRef, spec: EngineSpec) -> exp.Table:
    """The engine's own name for a policy table, aliased so only the view can see it."""
    physical = physical_table(table, spec)
    physical.set("alias", exp.TableAlias(this=exp.to_identifier(INNER_ALIAS)))
    return physical


def physical_table(table: TableRef, spec: EngineSpec) -> exp.Table:
    """The engine's own name for a policy table."""
    if spec.physical:
        name = spec.physical.format(source=table.source, schema=table.schema or "", name=table.name).lower()
        return exp.Table(this=exp.to_identifier(name, quoted=True))
    return exp.Table(
        this=exp.to_identifier(table.name, quoted=True),
        db=exp.to_identifier(table.schema or spec.default_schema, quoted=True),
        catalog=exp.to_identifier(table.source, quoted=True) if spec.catalog_in_names else None,
    )


def masked(rule: ColumnRule, kind: str, spec: EngineSpec) -> exp.Expr:
    """The expression a role sees for one column."""
    column = exp.column(rule.column, table=INNER_ALIAS, quoted=True)
    action, options = rule.action, rule.spec
    if action is Action.ALLOW:
        return column
    if action is Action.NULL:
        return _typed_null(kind, spec)
    if action is Action.REDACT:
        return exp.Literal.string(options.text or REDACTED)
    if action is Action.MASK:
        return _template(spec, spec.templates.mask, exp.cast(column, spec.text_type))
    if action is Action.TOKENIZE:
        return _template(spec, spec.templates.tokenize, column)
    if action is Action.GENERALIZE:
        return _generalized(column, kind, rule, spec)
    raise AssertionError(f"no expression for action {action}")  # deny never reaches here


def _generalized(column: exp.Expr, kind: str, rule: ColumnRule, spec: EngineSpec) -> exp.Expr:
    options, type_class = rule.spec, spec.type_class(kind)
    if type_class == "date":
        unit = exp.Literal.string(options.date_unit or "month")
        return _cast(_template(spec, spec.templates.generalize_date, column, unit), kind, spec)
    if type_class == "number":
        width = exp.Literal.number(_number(options.bucket or 10))
        exact = _exact_bucket(column, kind, width, spec)
        if exact is not None:
            return exact
        return _cast(_template(spec, spec.templates.generalize_number, column, width), kind, spec)
    if type_class == "text":
        length = exp.Literal.number(options.prefix if options.prefix is not None else 3)
        return _template(spec, spec.templates.generalize_text, column, length)
    return _typed_null(kind, spec)  # nothing coarser than the value exists for this type


# Signed integer types, the type their buckets are worked out in, and their smallest value: the bucket below
# the smallest values is clamped to it (its floor is not a value of the type).
_SIGNED = {"TINYINT": -(2**7), "SMALLINT": -(2**15), "INTEGER": -(2**31), "BIGINT": -(2**63)}
_UNSIGNED = ("UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT")


def _exact_bucket(column: exp.Expr, kind: str, width: exp.Expr, spec: EngineSpec) -> exp.Expr | None:
    """The bottom of the value's bucket in exact integer or decimal arithmetic (floor through a DOUBLE puts
    BIGINTs off the grid and fails near their maximum); None for floats and engines without the template."""
    upper = kind.upper()
    decimal = re.fullmatch(r"DECIMAL\((\d+),\s*(\d+)\)", upper)
    if not spec.templates.generalize_exact or not (upper in _SIGNED or upper in _UNSIGNED or decimal or "HUGEINT" in upper):
        return None
    wide, smallest = _widened(upper, decimal)
    value = exp.Cast(this=column.copy(), to=exp.DataType.build(wide, dialect=spec.dialect)) if wide else column
    bucket = _template(spec, spec.templates.generalize_exact.replace("__w", "__v"), value, width)
    if smallest is not None:
        bucket = exp.Greatest(this=bucket, expressions=[exp.Literal.number(smallest)])
    return _cast(bucket, kind, spec)


def _widened(upper: str, decimal: re.Match[str] | None) -> tuple[str | None, object]:
    """A type wide enough for the bucket arithmetic, and the smallest value to clamp to (None: no clamp needed,
    or none possible: HUGEINT and 37-38 digit decimals are worked out in their own type)."""
    if upper in _SIGNED:
        return "HUGEINT", _SIGNED[upper]
    if upper in _UNSIGNED:
        return "HUGEINT", None
    if decimal is not None and int(decimal.group(1)) <= 36:
        digits, scale = int(decimal.group(1)), int(decimal.group(2))
        with localcontext(prec=80):  # exact: the default 28 digits would round a 36-digit bound
            return f"DECIMAL(38, {scale})", format(-(Decimal(10) ** (digits - scale) - Decimal(10) ** -scale), "f")
    return None, None


def _number(bucket: float) -> int | float:
    return int(bucket) if float(bucket).is_integer() else bucket


def _guarded(expression: exp.Expr, predicate: exp.Expr | None) -> exp.Expr:
    if predicate is None:
        return expression
    return exp.Case(ifs=[exp.If(this=predicate.copy(), true=expression)])


def _qualify(predicate: exp.Expr) -> exp.Expr:
    """Pin the filter's columns to the raw table, so none can bind to an outer query."""
    for column in predicate.find_all(exp.Column):
        if not column.table:
            column.set("table", exp.to_identifier(INNER_ALIAS))
    return predicate


def _typed_null(kind: str, spec: EngineSpec) -> exp.Expr:
    return _cast(exp.Null(), kind, spec)


def _cast(expression: exp.Expr, kind: str, spec: EngineSpec) -> exp.Expr:
    try:
        return exp.Cast(this=expression, to=exp.DataType.build(kind, dialect=spec.dialect))
    except (sqlglot.errors.SqlglotError, ValueError):
        return expression


def _template(spec: EngineSpec, sql: str, value: exp.Expr, param: exp.Expr | None = None) -> exp.Expr:
    def fill(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Column) and node.name == "__v":
            return value.copy()
        if param is not None and isinstance(node, (exp.Column, exp.Var, exp.Literal)) and node.name.lower() == "__p":
            return param.copy()
        return node

    return _parsed(sql, spec.dialect).copy().transform(fill)


@lru_cache(maxsize=64)
def _parsed(sql: str, dialect: str) -> exp.Expr:
    return sqlglot.parse_one(sql, read=dialect)
