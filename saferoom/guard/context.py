"""What every rule of the guard is given: who asks, under which policy, on which engine.

A :class:`Context` is made afresh for each query. It is frozen; the one thing
rules add to it is :class:`Touched`, the record of which policy tables the
query reads and which names it uses, kept for the audit log and the decision.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from sqlglot import exp
from sqlglot.errors import OptimizeError
from sqlglot.optimizer.scope import Scope, build_scope

from saferoom.engines.base import EngineSpec, KeyRows
from saferoom.guard.resolver import Resolver
from saferoom.policy import ColumnRule, Policy

if TYPE_CHECKING:
    from saferoom.guard.aggregate_dp import NoisePlan

E = TypeVar("E", bound=exp.Expr)
ViewFor = Callable[[str, frozenset[str] | None], exp.Expr]
# integer types of at most 64 bits, as the engine names them: a key of one of these can be bucketed by its
# low bits with no hash (saferoom.guard.aggregate_certified)
INTEGERS = frozenset({"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT"})
ItselfFor = Callable[[str], "exp.Table | None"]
KeyRowsFor = Callable[[str, str], "KeyRows | None"]  # of a policy table and a column (see Guard.key_rows)


def _unknown(table: str, column: str) -> KeyRows | None:
    return None


def _never(table: str) -> exp.Table | None:
    return None


@dataclass(frozen=True)
class Hidden:
    """A source column a role cannot see: denied by ``rule``, or unclassified (``rule`` is None)."""

    table: str
    column: str
    rule: ColumnRule | None


@dataclass(frozen=True)
class Columns:
    """The columns a source shows a role, and those it hides, by lower-cased name."""

    visible: frozenset[str]
    hidden: Mapping[str, Hidden]
    tokenized: frozenset[str] = frozenset()  # visible columns that hold tokens for the role, lower-cased
    integers: frozenset[str] = frozenset()  # visible columns the role sees whole and of a 64-bit integer type


@dataclass
class Touched:
    """What a query reaches, filled in by the rules as they go."""

    tables: list[str] = field(default_factory=list)  # policy tables, in the order the query names them
    names: frozenset[str] | None = None  # names that can reach a view's column; None: all of them
    whole: set[str] = field(default_factory=set)  # policy tables a `*` (or PIVOT, or `t(a, b)`) reads every column of
    scopes: dict[int, Scope | None] = field(default_factory=dict)  # the tree's scopes, worked out once (see scope_of)
    noise: NoisePlan | None = None  # an aggregate-only role with differential privacy: what the session noises
    nodes: tuple[int, list[exp.Expr]] | None = None  # the tree's nodes as check_nodes met them (see nodes_of)


def nodes_of(expression: exp.Expr, context: Context, kind: type[E] | tuple[type[E], ...]) -> list[E]:
    """The nodes of ``kind`` in the query, as sqlglot's breadth-first walk meets them. The rules that run before
    any rule adds a node read them from the list check_nodes made on its own walk; each walk of a long query
    costs as much as a third of parsing it. A rule that adds nodes calls :func:`changed`; then, or for another
    tree, the tree is walked."""
    return [node for node in all_nodes(expression, context) if isinstance(node, kind)]


def all_nodes(expression: exp.Expr, context: Context) -> Iterable[exp.Expr]:
    """Every node of the query, from check_nodes' list while it holds (see :func:`nodes_of`), else walked."""
    known = context.touched.nodes
    return known[1] if known is not None and known[0] == id(expression) else expression.walk()


def changed(context: Context) -> None:
    """The tree has nodes check_nodes did not meet: the rules after walk it afresh."""
    context.touched.nodes = None


def scope_of(expression: exp.Expr, context: Context) -> Scope | None:
    """The query's root scope, built once for the rules that read it (neither changes the tree); None when
    sqlglot cannot scope it (one alias used twice, say), which those rules leave to the engine."""
    key = id(expression)
    if key not in context.touched.scopes:
        try:
            context.touched.scopes[key] = build_scope(expression)
        except OptimizeError:
            context.touched.scopes[key] = None
    return context.touched.scopes[key]


@dataclass(frozen=True)
class Context:
    policy: Policy
    user: str
    role: str
    spec: EngineSpec
    resolver: Resolver
    columns: Callable[[str], Columns]  # of a policy table
    view: ViewFor  # the policy view of a table, cut to the names given
    touched: Touched = field(default_factory=Touched)
    text: str = ""  # the query as written, to quote the user's own words back in refusals
    itself: ItselfFor = _never  # the table itself, when its view would be exactly the table (see Guard.itself)
    key_rows: KeyRowsFor = _unknown  # how a table's rows share a key's values, where proven (see Guard.key_rows)


EXAMPLE_POLICY = ("{version: 1, sources: {prod: {engine: duckdb, path: prod.duckdb}}, tags: {pci: {}, pii: {}}, "
                  "tables: {prod.cards: {card_id: public, pan: pci, holder: pii}}, users: {al: {roles: [analyst]}, "
                  "ivy: {roles: [investigator]}}, roles: {analyst: {columns: {pci: deny, pii: tokenize}}, investigator: {columns: {pii: allow}}}, "
                  "secrets: {token_key: \"env:SAFEROOM_EXAMPLE_TOKEN_KEY\"}}")


def example() -> Context:
    """The context the rules' examples run in: analyst `al`, who is denied `prod.cards.pan` and gets `holder` tokenized."""
    from saferoom.engines.duckdb import DUCKDB  # here, not at the top: the guard imports this module
    from saferoom.guard import Guard
    from saferoom.policy import parse_policy

    os.environ.setdefault("SAFEROOM_EXAMPLE_TOKEN_KEY", "a key only the docstrings' examples use")

    return Guard(parse_policy(EXAMPLE_POLICY), "al", "analyst", DUCKDB, {("prod", "main", "cards"): {"card_id": "BIGINT", "pan": "VARCHAR", "holder": "VARCHAR"}}).context()
