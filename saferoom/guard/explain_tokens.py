"""A rule of the guard: a tokenized column compared with a value, or given to a function, is refused with
what a token is.

For a role that gets a column tokenized, each value is a stand-in: the same token for the same value, so
tokens group, count, join and compare with each other exactly as the values would. A token never equals
a value the user types, and a string function over one means nothing; the engine would say so in its own
words (a failed conversion to UUID, a binder error). The guard says it in the policy's: the column holds
tokens for this role, what still works, and which roles see the values.

Only references this rule can pin to a policy table are checked: a qualified one, or an unqualified name
that exactly one table of its own SELECT shows when no subquery there could show it too. Anything else is
left to the engine, whose error then still names no value.

>>> import sqlglot
>>> from saferoom.guard.context import example
>>> from saferoom.guard.resolve_tables import resolve_tables
>>> context = example()
>>> explain_tokens(resolve_tables(sqlglot.parse_one("select count(*) from cards where holder = 'Ada'"), context), context)
Traceback (most recent call last):
saferoom.errors.QueryRejected: column `holder` of prod.cards holds tokens for role `analyst` (tag `pii`): each value is a stand-in for the real one, so comparing it with a value cannot match. Tokens still group, count, join and compare with each other as the values would. Roles that see the values: investigator (allow).
>>> explain_tokens(resolve_tables(sqlglot.parse_one("select holder, count(*) from cards group by 1"), context), context).sql()
'SELECT holder, COUNT(*) FROM cards GROUP BY 1'
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from sqlglot import exp
from sqlglot.optimizer.scope import Scope

from saferoom.errors import QueryRejected
from saferoom.guard.context import Context, scope_of
from saferoom.guard.refuse_hidden_columns import roles_and_actions
from saferoom.guard.resolve_tables import POLICY_TABLE
from saferoom.policy import Action

# Functions that treat a value as opaque: a token in, the same answer as for the value (up to the token).
OPAQUE = (exp.Count, exp.ApproxDistinct, exp.Min, exp.Max, exp.AnyValue, exp.First, exp.Last, exp.ArrayAgg,
          exp.Coalesce, exp.Nullif, exp.Greatest, exp.Least, exp.Cast, exp.TryCast, exp.Lag, exp.Lead,
          exp.FirstValue, exp.LastValue, exp.NthValue, exp.ArgMax, exp.ArgMin, exp.Mode, exp.GroupConcat)
COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.NullSafeEQ, exp.NullSafeNEQ, exp.Like, exp.ILike)


def explain_tokens(expression: exp.Expr, context: Context) -> exp.Expr:
    tokenized = {t: context.columns(t).tokenized for t in context.touched.tables}
    if not any(tokenized.values()):
        return expression  # the common case: no column the query reads holds tokens for this role
    root = scope_of(expression, context)
    for scope in root.traverse() if root else ():
        for column, table in _token_columns(scope, tokenized):
            misuse = _misuse(column)
            if misuse:
                raise _refusal(context, table, column.name, misuse)
    return expression


def _token_columns(scope: Scope, tokenized: dict[str, frozenset[str]]) -> Iterator[tuple[exp.Column, str]]:
    """The columns of this scope that are a policy table's tokenized column, with that table."""
    sources = {name.lower(): source for name, (_, source) in scope.selected_sources.items()}
    tables = {name: s.meta[POLICY_TABLE] for name, s in sources.items() if isinstance(s, exp.Table) and POLICY_TABLE in s.meta}
    for column in scope.columns:
        table = _table_of(column, sources, tables, tokenized)
        if table is not None:
            yield column, table


def _table_of(column: exp.Column, sources: Mapping[str, object], tables: dict[str, str],
              tokenized: dict[str, frozenset[str]]) -> str | None:
    name = column.name.lower()
    if column.table:
        table = tables.get(column.table.lower())
        return table if table is not None and name in tokenized.get(table, ()) else None
    if len(tables) < len(sources):
        return None  # a subquery or CTE in FROM could show the name too
    holders = [t for t in tables.values() if name in tokenized.get(t, ())]
    return holders[0] if len(holders) == 1 else None


def _misuse(column: exp.Column) -> str | None:
    """What the query does with the token that cannot work: compare it with a value, or call a function on it."""
    node: exp.Expr = column
    while isinstance(node.parent, exp.Paren):
        node = node.parent
    parent = node.parent
    if isinstance(parent, COMPARISONS) and _is_value(parent.right if parent.left is node else parent.left):
        return "comparing it with a value cannot match"
    if isinstance(parent, exp.In) and parent.this is node and any(_is_value(e) for e in parent.expressions):
        return "comparing it with a value cannot match"
    if isinstance(parent, exp.Between) and parent.this is node:
        return "comparing it with a value cannot match"
    if isinstance(parent, exp.Func) and not isinstance(parent, OPAQUE):
        return f"{parent.sql_name().lower()}() over it means nothing"
    return None


def _is_value(node: exp.Expr | None) -> bool:
    while isinstance(node, exp.Paren | exp.Neg | exp.Cast):
        node = node.this
    return isinstance(node, exp.Literal)


def _refusal(context: Context, table: str, column: str, misuse: str) -> QueryRejected:
    rule = context.policy.rule(context.role, table, column)
    seeing = [(r, a) for r, a in context.policy.roles_seeing(table, rule.column) if a is not Action.TOKENIZE]
    who = roles_and_actions(seeing)
    return QueryRejected(
        f"column `{rule.column}` of {table} holds tokens for role `{context.role}` (tag `{rule.tag}`): each value is "
        f"a stand-in for the real one, so {misuse}. Tokens still group, count, join and compare with each other "
        f"as the values would. Roles that see the values: {who}.",
        column=f"{table}.{rule.column}", tag=rule.tag, threats=rule.threats, allowed_roles=[r for r, _ in seeing],
    )
