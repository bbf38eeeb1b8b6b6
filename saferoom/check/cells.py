"""Cells: the one shape every format is read into, and the batches a file is read in.

A cell is (file, row, column, text, cell_line): a table's value, a line of text, a notebook cell's source
or output line. A batch holds the cells of a whole text or notebook, or of up to a few MiB of a table's
rows, with those rows as a table for the disclosure checks, so memory holds one batch at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

CELLS = {"row": pl.UInt32, "column": pl.String, "text": pl.String}
PLACE = ("file", "row", "column", "cell_line")  # where a cell is: its file, row, column and line in a notebook cell


@dataclass
class Batch:
    """Cells of one file read at a time: a whole text or notebook, or up to a few MiB of a table's rows."""

    cells: pl.DataFrame | None = None  # a text's lines, a notebook's parts, or what of a table is not a table's cell
    table: pl.DataFrame | None = None  # a table's rows: made cells of, and read by the disclosure checks
    offset: int = 0  # rows of the table read before this batch
    text: bool = False  # cells are a text's lines or a notebook's parts, which secrets are matched across
    relocate: Callable[[str], str] | None = None  # a location as this format names it (an Excel cell: Sheet1!C7)
    part: str = ""  # the table of the file the rows belong to: a workbook's sheet
    repeats: tuple[int, int] | None = None  # a large text's block: its first line not in the block before, and the first the next repeats


def cells_frame(label: str, rows: list[int], columns: list[str | None], texts: list[str],
                cell_lines: list[int] | None = None) -> pl.DataFrame:
    """Cells as every reader makes them; ``cell_lines`` is the line within a notebook cell."""
    frame = pl.DataFrame({"row": rows, "column": columns, "text": texts}, schema=CELLS)
    return frame.with_columns(pl.lit(label).alias("file"), pl.Series("cell_line", cell_lines, dtype=pl.UInt32)
                              if cell_lines is not None else pl.lit(None, pl.UInt32).alias("cell_line"))


def frame_cells(frame: pl.DataFrame, label: str, offset: int = 0, keep: str | None = None) -> pl.DataFrame:
    """Every value of a table that could hold something sensitive, as text, with its row (1-based, after ``offset``).

    Text columns are read whole. Of integer columns only values long enough to be a card or an
    account number are kept; floats, dates and booleans cannot carry the patterns and are skipped.
    The column names are cells too (row 0), read with the first batch. With ``keep`` (a regex), only the
    values it matches become cells: one pass over each column, so the rest is never copied.
    """
    texts = frame.select(_as_text(name, dtype) for name, dtype in frame.schema.items() if _as_text(name, dtype) is not None)
    # every column's pass at once: polars runs the expressions in parallel
    masks = texts.select(pl.col(c).str.contains(keep).fill_null(False) if keep is not None else pl.col(c).is_not_null()
                         for c in texts.columns)
    parts = [_column_cells(texts.get_column(name), masks.get_column(name), offset) for name in texts.columns]
    names = frame.columns if offset == 0 else []
    header = pl.DataFrame({"row": [0] * len(names), "column": [None] * len(names), "text": [str(c) for c in names]}, schema=CELLS)
    cells = pl.concat([header, *parts], how="vertical_relaxed") if parts else header
    return cells.drop_nulls("text").with_columns(pl.lit(label).alias("file"), pl.lit(None, pl.UInt32).alias("cell_line"))


def _as_text(name: str, dtype: pl.DataType) -> pl.Expr | None:
    """A column as the text the detectors read, or None for a type that cannot carry a finding."""
    if dtype.is_integer():  # only numbers long enough to be a card or an account number
        return pl.when(pl.col(name).abs() >= 10**12).then(pl.col(name).cast(pl.String)).alias(name)
    if dtype == pl.Categorical:
        return pl.col(name).cast(pl.String)
    return pl.col(name) if dtype == pl.String else None


def _column_cells(column: pl.Series, wanted: pl.Series, offset: int) -> pl.DataFrame:
    rows = wanted.arg_true()
    return pl.DataFrame({"row": (rows + offset + 1).cast(pl.UInt32), "column": pl.repeat(column.name, len(rows), eager=True),
                         "text": column.gather(rows)})
