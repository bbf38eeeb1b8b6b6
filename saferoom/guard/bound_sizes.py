"""A rule of the guard: no single value may grow past the engine's ``max_value_bytes``.

A few functions make a value whose size is set by an argument, not by the data:
``repeat('x', 2000000000)`` asks for 2 GB in one call, which an embedded engine
allocates outside its memory limit and cannot interrupt half-way. Their size
arguments are wrapped so that the engine raises a clear error before it
allocates; format strings must be literals with modest widths.

>>> import sqlglot
>>> from saferoom.guard.context import example
>>> context = example()
>>> bound_sizes(sqlglot.parse_one("SELECT repeat(s, n) FROM t", read="duckdb"), context).sql("duckdb")[:63]
'SELECT REPEAT(s, CASE WHEN n > 1048576 / GREATEST(LENGTH(s), 1)'
"""

from __future__ import annotations

import re

from sqlglot import exp

from saferoom.errors import QueryRejected
from saferoom.guard.context import Context, changed, nodes_of

# printf's `*` and fmt's nested `{}` take a width from an argument; seven digits is a width of a megabyte or more
_WIDE_FORMAT = re.compile(r"%[-+ #0]*\*|\{[^}]*\{|\d{7,}")
_FORMATS = frozenset({"PRINTF", "FORMAT"})


def bound_sizes(expression: exp.Expr, context: Context) -> exp.Expr:
    """Wrap size arguments of repeat/lpad/rpad; check format strings (engines without a cap are left alone)."""
    cap = context.spec.max_value_bytes
    if cap is None:
        return expression
    for node in nodes_of(expression, context, (exp.Repeat, exp.Pad, exp.Format, exp.Anonymous)):
        if isinstance(node, exp.Repeat):
            changed(context)
            _wrap(node, "times", exp.func("greatest", exp.Length(this=node.this.copy()), exp.Literal.number(1)), cap)
        elif isinstance(node, exp.Pad):
            changed(context)
            _wrap(node, "expression", exp.Literal.number(4), cap)  # a character is at most four bytes
        elif isinstance(node, exp.Format) or node.name.upper() in _FORMATS:
            _check_format(node, cap)
    return expression


def _wrap(node: exp.Func, arg: str, unit: exp.Expr, cap: int) -> None:
    """``count`` becomes ``CASE WHEN count > cap / unit THEN error(…) ELSE count END`` (a division cannot overflow)."""
    count = node.args[arg]
    too_big = exp.GT(this=count.copy(), expression=exp.Div(this=exp.Literal.number(cap), expression=unit))
    refusal = exp.Anonymous(this="error", expressions=[exp.Literal.string(
        f"{node.sql_name().lower()}() would make a value over {cap:,} bytes, the largest a query may make")])
    node.set(arg, exp.Case(ifs=[exp.If(this=too_big, true=refusal)], default=count))


def _check_format(node: exp.Func, cap: int) -> None:
    pattern = node.this if isinstance(node, exp.Format) else (node.expressions or [None])[0]
    name = node.sql_name().lower() if isinstance(node, exp.Format) else node.name.lower()
    if not isinstance(pattern, exp.Literal) or not pattern.is_string:
        raise QueryRejected(f"{name}() needs its format as a literal string, so saferoom can check what it makes")
    if _WIDE_FORMAT.search(pattern.this):
        raise QueryRejected(f"{name}(): widths taken from arguments, or of seven digits or more, are not allowed "
                            f"(a value may be at most {cap:,} bytes)")
