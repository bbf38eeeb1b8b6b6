"""Generate the engine's SQL, emitting each policy view from its cached rendering.

A policy view is rendered once per role and table by sqlglot from the guard's
own tree. The query tree then holds a leaf carrying that rendering in the
view's place, which the generator emits verbatim (sqlglot's ``Var`` node is
emitted as-is). This is the cheapest form of "build the view once and copy
it": the user's text never reaches a rendered string, and copying a leaf
costs nothing, where deep-copying the view's tree dominated a guard pass.
"""

from __future__ import annotations

from functools import lru_cache

from sqlglot import exp
from sqlglot.dialects.dialect import Dialect


def rendered(sql: str) -> exp.Var:
    """A leaf that generates exactly ``sql``: SQL the guard rendered from its own tree."""
    return exp.Var(this=sql)


def render(tree: exp.Expr, dialect: str, *, copy: bool = True) -> str:
    """``copy=False`` for a tree no one reads afterwards: sqlglot's generator then spares a deep copy of it
    (its transforms may change the tree they are given)."""
    return tree.sql(dialect=dialect_of(dialect), comments=False, copy=copy)


@lru_cache(maxsize=16)
def dialect_of(name: str) -> Dialect:
    """One instance per dialect name: sqlglot otherwise looks the name up and builds a new one on every call."""
    return Dialect.get_or_raise(name)
