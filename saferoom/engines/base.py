"""What the guard needs to know about an engine, declared as data.

Each engine module exports an :class:`EngineSpec`; the guard never branches on
an engine's name. Allowlists hold sqlglot expression class names (what a query
parses to) plus the names of functions sqlglot passes through as ``Anonymous``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import pyarrow as pa

# Query structure every engine accepts: selects, joins, set operations, CTEs,
# windows, operators, literals. Functions are per engine; statements other
# than queries are never here, so they are refused everywhere.
STRUCTURE = frozenset(
    ["Select", "Union", "Intersect", "Except", "Values", "Subquery", "With", "CTE", "From", "Join", "Lateral", "Where", "Group", "Having", "Qualify", "Order", "Ordered", "Limit", "Offset", "Distinct", "Window", "WindowSpec", "GroupingSets", "Cube", "Rollup", "Table", "TableAlias", "Alias", "Column", "Identifier", "Star", "Literal", "Null", "Boolean", "Var", "Paren", "Tuple", "Interval", "DataType", "DataTypeParam", "Filter", "WithinGroup", "IgnoreNulls", "RespectNulls", "Add", "Sub", "Mul", "Div", "IntDiv", "Mod", "Neg", "Not", "And", "Or", "EQ", "NEQ", "GT", "GTE", "LT", "LTE", "NullSafeEQ", "NullSafeNEQ", "Is", "In", "Between", "Like", "ILike", "SimilarTo", "Escape", "Exists", "Any", "All", "Case", "If", "Cast", "TryCast", "DPipe", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot", "BitwiseLeftShift", "BitwiseRightShift", "Bracket", "Array", "Struct", "PropertyEQ", "Lambda", "Slice"]
)


@dataclass(frozen=True)
class Templates:
    """Masking expressions as SQL over a marker column ``__v`` (the column's value)."""

    mask: str
    tokenize: str
    generalize_date: str
    generalize_number: str
    generalize_text: str


@dataclass(frozen=True)
class EngineSpec:
    name: str
    dialect: str
    default_schema: str
    functions: frozenset[str]
    anonymous_functions: frozenset[str]
    templates: Templates
    text_type: str = "VARCHAR"
    date_types: tuple[str, ...] = ("DATE", "TIMESTAMP")
    number_types: tuple[str, ...] = ()
    text_types: tuple[str, ...] = ()
    catalog_in_names: bool = True  # DuckDB names attached databases; PostgreSQL only its own
    physical: str | None = None  # a template for the engine's own name of a table, e.g. "__saferoom_{source}_{name}"
    allowed_nodes: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_nodes", STRUCTURE | self.functions)

    def type_class(self, type_name: str) -> str:
        upper = type_name.upper()
        if upper.startswith(self.date_types):
            return "date"
        if upper.startswith(self.number_types):
            return "number"
        if upper.startswith(self.text_types):
            return "text"
        return "other"


ColumnTypes = dict[str, str]
Catalog = dict[tuple[str, str, str], ColumnTypes]


class Engine(Protocol):
    """A connection that runs the guard's SQL and streams Arrow back."""

    spec: EngineSpec

    def catalog(self) -> Catalog: ...

    def stream(self, sql: str, batch_size: int = 65536, timeout: float | None = None) -> pa.RecordBatchReader: ...

    def column_types(self, sql: str) -> list[tuple[str, str]]: ...

    def close(self) -> None: ...
