"""Every format the airlock reads, turned into one shape: cells of text with where they came from.

A cell is (file, row, column, text): a table's value, a line of text, a
notebook cell's source or output. Tables also come back whole, for the
disclosure checks. A file that cannot be read is an error to report, never a
file silently skipped.
"""

from __future__ import annotations

import json
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import duckdb
import polars as pl
from sqlglot import exp

CHUNK = 1 << 20  # very long lines are read in overlapping chunks, never whole
OVERLAP = 256
TABLES = {".csv", ".tsv", ".parquet", ".jsonl", ".ndjson", ".xlsx", ".xls"}


@dataclass
class Read:
    cells: list[pl.DataFrame] = field(default_factory=list)
    tables: list[tuple[str, pl.DataFrame]] = field(default_factory=list)
    text: bool = False  # cells are a text's lines or a notebook's parts, which secrets are matched across


class Unreadable(Exception):
    """A file saferoom cannot read; the message says why."""


def read(path: Path, label: str) -> Read:
    _regular(path)
    suffix = path.suffix.lower()
    try:
        if suffix in TABLES or suffix == ".json":
            return _table_file(path, label, suffix)
        if suffix == ".ipynb":
            return Read(cells=[_notebook(path, label)], text=True)
        return Read(cells=[_text(path, label)], text=True)
    except Unreadable:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise Unreadable(getattr(exc, "strerror", None) or str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - parsers raise their own errors on hostile input; each is "unreadable"
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise Unreadable(f"not a readable {suffix.lstrip('.') or 'text'} file: {first}") from None


def as_text(target: Any) -> pl.DataFrame:
    """Any DataFrame (polars or pandas) as text columns, nested values, bytes and mixed objects included.

    DuckDB casts every Arrow type (structs, lists, maps, binary) to text natively; a pandas object column
    Arrow cannot type (mixed ints and strings, dicts, bytes) is turned into text value by value first,
    since its values are Python objects anyway.
    """
    frame = target if isinstance(target, pl.DataFrame) else _from_pandas(target)
    if frame.width == 0:
        return pl.DataFrame()
    text = [exp.alias_(exp.cast(exp.column(c, quoted=True), "VARCHAR"), c, quoted=True) for c in frame.columns]
    with duckdb.connect() as con:
        con.register("frame", frame.to_arrow())
        texts: pl.DataFrame = con.sql(exp.select(*text).from_("frame").sql("duckdb")).pl()
        return texts


def _from_pandas(frame: Any) -> pl.DataFrame:
    columns = [_pandas_column(frame.iloc[:, i], name) for i, name in enumerate(_unique_names(frame.columns))]
    return pl.concat(columns, how="horizontal") if columns else pl.DataFrame()


def _pandas_column(column: Any, name: str) -> pl.DataFrame:
    column = column.rename(name)
    try:
        typed: pl.DataFrame = pl.from_pandas(column.to_frame())
    except Exception:  # noqa: BLE001 - any column Arrow cannot type is read as text instead
        text = column.map(lambda v: None if v is None else repr(v) if isinstance(v, bytes) else str(v))
        typed = pl.from_pandas(text.to_frame())
    return typed


def _unique_names(columns: Any) -> list[str]:
    names: list[str] = []
    for column in columns:
        name = " ".join(map(str, column)) if isinstance(column, tuple) else str(column)
        while name in names:
            name += "'"
        names.append(name)
    return names


def _regular(path: Path) -> None:
    """Only regular files are opened: reading a pipe would wait forever, a device could be endless."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise Unreadable(exc.strerror or str(exc)) from None
    if not stat.S_ISREG(mode):
        raise Unreadable("not a regular file (pipes, sockets and devices are never read)")


def frame_cells(frame: pl.DataFrame, label: str) -> pl.DataFrame:
    """Every value of a table that could hold something sensitive, as text, with its row (1-based).

    Text columns are read whole. Of integer columns only values long enough to be a card or an
    account number are kept; floats, dates and booleans cannot carry the patterns and are skipped.
    """
    parts = [p for name in frame.columns if (p := _column_cells(frame, name)) is not None]
    names = pl.DataFrame({"row": [0] * len(frame.columns), "column": [None] * len(frame.columns), "text": [str(c) for c in frame.columns]},
                         schema={"row": pl.UInt32, "column": pl.String, "text": pl.String})
    cells = pl.concat([names, *parts], how="vertical_relaxed") if parts else names
    return cells.drop_nulls("text").with_columns(pl.lit(label).alias("file"))


def _column_cells(frame: pl.DataFrame, name: str) -> pl.DataFrame | None:
    column = frame.get_column(name)
    indexed = pl.DataFrame({"value": column}).with_row_index("row", offset=1)
    if column.dtype.is_integer():
        indexed = indexed.filter(pl.col("value").abs() >= 10**12)
    elif column.dtype != pl.String and column.dtype != pl.Categorical:
        return None
    return indexed.select("row", pl.lit(str(name)).alias("column"), pl.col("value").cast(pl.String, strict=False).alias("text"))


def _table_file(path: Path, label: str, suffix: str) -> Read:
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, list) and data and all(isinstance(r, dict) for r in data):
            frame = pl.DataFrame(data, infer_schema_length=None).select(pl.all().cast(pl.String, strict=False))
            return Read([frame_cells(frame, label)], [(label, frame)])
        return Read(cells=[_leaves(data, label)])
    frames = _frames(path, suffix)
    return Read([frame_cells(f, f"{label}{sheet}") for sheet, f in frames], [(f"{label}{sheet}", f) for sheet, f in frames])


def _frames(path: Path, suffix: str) -> list[tuple[str, pl.DataFrame]]:
    if suffix in (".csv", ".tsv"):
        return [("", pl.read_csv(path, separator="\t" if suffix == ".tsv" else ",", infer_schema=False,
                                 truncate_ragged_lines=True, encoding="utf8-lossy"))]
    if suffix == ".parquet":
        return [("", pl.read_parquet(path))]
    if suffix in (".jsonl", ".ndjson"):
        return [("", pl.read_ndjson(path, infer_schema_length=None))]
    sheets = pl.read_excel(path, sheet_id=0)
    return [(f" [{name}]", frame) for name, frame in sheets.items()]


def _leaves(data: object, label: str) -> pl.DataFrame:
    """Every scalar of a JSON document, with its path as the column."""
    paths, texts = [], []

    def walk(node: object, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")
        elif node is not None:
            paths.append(where or "$")
            texts.append(str(node))

    walk(data, "$")
    return pl.DataFrame({"row": [0] * len(texts), "column": paths, "text": texts},
                        schema={"row": pl.UInt32, "column": pl.String, "text": pl.String}).with_columns(pl.lit(label).alias("file"))


def _text(path: Path, label: str) -> pl.DataFrame:
    with path.open("rb") as f:
        head = f.read(8192)
    if b"\0" in head:
        raise Unreadable("a binary file; saferoom reads text, tables and notebooks")
    if path.stat().st_size > 64 * CHUNK:
        return _chunks(path, label)
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = _lines(text)
    if max((len(line) for line in lines), default=0) > CHUNK:
        return _chunks(path, label)
    return pl.DataFrame({"row": list(range(1, len(lines) + 1)), "column": [None] * len(lines), "text": lines},
                        schema={"row": pl.UInt32, "column": pl.String, "text": pl.String}).with_columns(pl.lit(label).alias("file"))


def _lines(text: str) -> list[str]:
    """Lines as editors number them: split at \\n only (str.splitlines also splits at form feeds,
    \\x1c-\\x1e and U+2028, and every line number after one would drift)."""
    lines = text.split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def _chunks(path: Path, label: str) -> pl.DataFrame:
    """Large files in overlapping 1 MiB pieces, so memory stays bounded and no match is cut in two."""
    starts, texts = [], []
    with path.open("rb") as f:
        offset = 0
        while True:
            f.seek(max(0, offset - OVERLAP))
            block = f.read(CHUNK + OVERLAP)
            if not block:
                break
            if b"\0" in block[:8192] and offset == 0:
                raise Unreadable("a binary file; saferoom reads text, tables and notebooks")
            starts.append(offset)
            texts.append(block.decode("utf-8", errors="replace"))
            offset += CHUNK
            if len(block) < CHUNK:
                break
    return pl.DataFrame({"row": starts, "column": ["bytes"] * len(starts), "text": texts},
                        schema={"row": pl.UInt64, "column": pl.String, "text": pl.String}).with_columns(
        pl.col("row").cast(pl.UInt32, strict=False), pl.lit(label).alias("file"))


def _notebook(path: Path, label: str) -> pl.DataFrame:
    try:
        notebook = json.loads(path.read_text(encoding="utf-8"))
        cells = notebook["cells"]
    except (ValueError, KeyError, TypeError):
        raise Unreadable("not a valid notebook (its JSON does not parse or has no cells)") from None
    rows, columns, texts = [], [], []
    for number, cell in enumerate(cells, 1):
        for part, text in _notebook_texts(cell):
            for line in _lines(text):
                rows.append(number)
                columns.append(part)
                texts.append(line)
    return pl.DataFrame({"row": rows, "column": columns, "text": texts},
                        schema={"row": pl.UInt32, "column": pl.String, "text": pl.String}).with_columns(pl.lit(label).alias("file"))


def _notebook_texts(cell: dict[str, object]) -> Iterator[tuple[str, str]]:
    """Source, every output (text, HTML tables, errors) and images' alt text."""
    yield "source", _joined(cell.get("source", ""))
    for output in cast("list[object]", cell.get("outputs", []) or []):  # nbformat: a list of outputs
        data = output.get("data", {}) if isinstance(output, dict) else {}
        for mime, value in data.items():
            if mime.startswith("text/") or mime.endswith("json"):
                yield f"output {mime}", _joined(value)
        if isinstance(output, dict) and "text" in output:
            yield "output stream", _joined(output["text"])
        if isinstance(output, dict) and "traceback" in output:
            yield "output error", _joined(output["traceback"])
    for alt in re.findall(r"!\[([^\]]*)\]|alt=\"([^\"]*)\"", _joined(cell.get("source", ""))):
        yield "image alt text", " ".join(a for a in alt if a)


def _joined(value: object) -> str:
    if isinstance(value, list):
        return "".join(str(v) for v in value)
    return value if isinstance(value, str) else json.dumps(value)


__all__ = ["Read", "Unreadable", "frame_cells", "read"]
