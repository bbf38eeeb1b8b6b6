"""Hash each distinct value once: token maps joined back, instead of one HMAC per row.

HMAC-SHA256 costs hundreds of nanoseconds a value inside DuckDB, which has no
native HMAC. A key column repeats each value many times (10M orders, 500k
customers), so a build computes its tokens over the distinct values and
joins them back. The tokens are the same; only the work is less.
"""

from __future__ import annotations

from sqlglot import exp

from saferoom.engines.duckdb import DUCKDB
from saferoom.guard.views import INNER_ALIAS
from saferoom.keyed import TOKEN_FUNCTION

EXACT_TEXT = ("FLOAT", "DOUBLE", "REAL")  # -0.0 = 0.0 but their text differs: join on the text


def token_calls(select: exp.Select, function: str = TOKEN_FUNCTION) -> dict[str, list[exp.Anonymous]]:
    """Token calls of the view, by the raw column they tokenize."""
    calls: dict[str, list[exp.Anonymous]] = {}
    for node in select.find_all(exp.Anonymous):
        arg = node.expressions[0] if node.expressions else None
        if node.name.lower() == function and isinstance(arg, exp.Column) and arg.table == INNER_ALIAS:
            calls.setdefault(arg.name, []).append(node)
    return calls


def distinct_tokens(select: exp.Select, columns: dict[str, int], types: dict[str, str], function: str = TOKEN_FUNCTION,
                    broadcast_below: int | None = None) -> exp.Select:
    """Rewrite a policy view so each column in ``columns`` (with its estimated distinct values) is tokenized
    once per distinct value. On a cluster, maps smaller than ``broadcast_below`` values are broadcast to
    every executor, so the big side is joined where it lies instead of being shuffled."""
    select = select.copy()
    source, where = select.args["from_"].this, select.args.get("where")
    broadcast = []
    for i, (column, calls) in enumerate(sorted(token_calls(select, function).items())):
        if column not in columns:
            continue
        alias = f"__saferoom_tok_{i}"
        if broadcast_below is not None and columns[column] < broadcast_below:
            broadcast.append(exp.to_table(alias))
        key = _key(column, types.get(column, ""))
        values = exp.select(exp.alias_(key, "v")).distinct().from_(source.copy())
        if where is not None:
            values = values.where(where.this.copy())
        mapping = exp.select("v", exp.alias_(exp.Anonymous(this=function, expressions=[exp.column("v")]), "t"))
        mapping = mapping.from_(values.subquery("d"))
        on = exp.EQ(this=_key(column, types.get(column, "")), expression=exp.column("v", table=alias))
        select = select.join(mapping.subquery(alias), on=on, join_type="left", copy=False)
        for call in calls:
            call.replace(exp.column("t", table=alias))
    if broadcast:
        select.set("hint", exp.Hint(expressions=[exp.JoinHint(this="BROADCAST", expressions=broadcast)]))
    return select


def _key(column: str, kind: str) -> exp.Expr:
    value = exp.column(column, table=INNER_ALIAS, quoted=True)
    return exp.cast(value, DUCKDB.text_type) if kind.upper().startswith(EXACT_TEXT) else value
