"""Every format the airlock reads, turned into batches of cells (see ``cells.py``).

Tables are streamed (``tables.py``); a text, a notebook or a JSON document is one batch, a text over
32 MiB a few 1 MiB pieces at a time. A file that cannot be read is an error to report, never a file
silently skipped.
"""

from __future__ import annotations

import json
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import polars as pl

from saferoom.check import tables
from saferoom.check.cells import Batch, cells_frame

CHUNK = 1 << 20  # very long lines are read in overlapping chunks, never whole
CHUNKS_PER_BATCH = 8
OVERLAP = 256
WHOLE_TEXT = 8 << 20  # a larger text is read in blocks of lines (or of bytes, if a line is over CHUNK)
REPEATED_LINES = 200  # each block of a large text starts with the last lines of the block before
TABLES = {".csv", ".tsv", ".parquet", ".jsonl", ".ndjson", ".xlsx", ".xlsm", ".xls"}


class Unreadable(Exception):
    """A file saferoom cannot read; the message says why."""


def read(path: Path, label: str) -> Iterator[Batch]:
    """The file in batches; a file that turns out unreadable half way raises Unreadable when that batch is read."""
    _regular(path)
    suffix = path.suffix.lower()
    try:
        if suffix in TABLES:
            yield from tables.batches(path, label, suffix)
        elif suffix == ".json":
            yield _json(path, label)
        elif suffix == ".ipynb":
            yield Batch(_notebook(path, label), text=True)
        else:
            yield from _text(path, label)
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
    import duckdb
    from sqlglot import exp

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
    return tables.unique_names([" ".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in columns])


def _regular(path: Path) -> None:
    """Only regular files are opened: reading a pipe would wait forever, a device could be endless."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise Unreadable(exc.strerror or str(exc)) from None
    if not stat.S_ISREG(mode):
        raise Unreadable("not a regular file (pipes, sockets and devices are never read)")


def _json(path: Path, label: str) -> Batch:
    """A JSON document is parsed whole (its structure needs all of it): a list of records is a table."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, list) and data and all(isinstance(r, dict) for r in data):
        frame = pl.DataFrame(data, infer_schema_length=None).select(pl.all().cast(pl.String, strict=False))
        return Batch(table=frame)
    return Batch(_leaves(data, label))


def _leaves(data: object, label: str) -> pl.DataFrame:
    """Every scalar of a JSON document, with its path as the column."""
    paths: list[str | None] = []
    texts: list[str] = []

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
    return cells_frame(label, [0] * len(texts), paths, texts)


def _text(path: Path, label: str) -> Iterator[Batch]:
    with path.open("rb") as f:
        head = f.read(8192)
    if b"\0" in head:
        raise Unreadable("a binary file; saferoom reads text, tables and notebooks")
    if path.stat().st_size > WHOLE_TEXT:
        yield from _chunks(path, label) if _longest_line(path) > CHUNK else _line_batches(path, label)
        return
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = _lines(text)
    if max((len(line) for line in lines), default=0) > CHUNK:
        yield from _chunks(path, label)
        return
    yield Batch(cells_frame(label, list(range(1, len(lines) + 1)), [None] * len(lines), lines), text=True)


def _longest_line(path: Path) -> int:
    """The longest line's length in bytes, read a block at a time; it stops once a line is longer than CHUNK."""
    longest, since = 0, 0  # since: bytes after the last line end
    with path.open("rb") as f:
        while longest <= CHUNK and (block := f.read(CHUNK)):
            ends = np.flatnonzero(np.frombuffer(block, np.uint8) == 10)
            if len(ends):
                lengths = np.diff(ends, prepend=-1) - 1
                longest = max(longest, int(lengths[0]) + since, int(lengths.max()))
                since = len(block) - int(ends[-1]) - 1
            else:
                since += len(block)
            longest = max(longest, since)
    return longest


def _line_batches(path: Path, label: str) -> Iterator[Batch]:
    """A large text in blocks of whole lines, each repeating the last lines of the one before, so a key block or
    a command spanning lines is matched whole; a finding both blocks hold is reported once (``check``)."""
    first, carry = 1, list[str]()
    for block in tables.line_blocks(path):
        lines = carry + _lines(block.decode("utf-8", errors="replace"))
        start = first - len(carry)
        rows = list(range(start, start + len(lines)))
        carry = lines[-REPEATED_LINES:]
        yield Batch(cells_frame(label, rows, [None] * len(lines), lines), text=True, repeats=(first, start + len(lines) - len(carry)))
        first = start + len(lines)


def _lines(text: str) -> list[str]:
    """Lines as editors number them: split at \\n only (str.splitlines also splits at form feeds,
    \\x1c-\\x1e and U+2028, and every line number after one would drift)."""
    lines = text.split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def _chunks(path: Path, label: str) -> Iterator[Batch]:
    """Large files in overlapping 1 MiB pieces, a few at a time, so memory stays bounded and no match is cut in two."""
    starts: list[int] = []
    texts: list[str] = []
    for start, text in _pieces(path):
        starts.append(start)
        texts.append(text)
        if len(starts) == CHUNKS_PER_BATCH:
            yield _chunk_batch(label, starts, texts)
            starts, texts = [], []
    if starts:
        yield _chunk_batch(label, starts, texts)


def _pieces(path: Path) -> Iterator[tuple[int, str]]:
    with path.open("rb") as f:
        offset = 0
        while True:
            f.seek(max(0, offset - OVERLAP))
            block = f.read(CHUNK + OVERLAP)
            if not block:
                return
            if b"\0" in block[:8192] and offset == 0:
                raise Unreadable("a binary file; saferoom reads text, tables and notebooks")
            yield offset, block.decode("utf-8", errors="replace")
            offset += CHUNK
            if len(block) < CHUNK:
                return


def _chunk_batch(label: str, starts: list[int], texts: list[str]) -> Batch:
    frame = pl.DataFrame({"row": starts, "column": ["bytes"] * len(starts), "text": texts},
                         schema={"row": pl.UInt64, "column": pl.String, "text": pl.String})
    cells = frame.with_columns(pl.col("row").cast(pl.UInt32, strict=False), pl.lit(label).alias("file"),
                               pl.lit(None, pl.UInt32).alias("cell_line"))
    return Batch(cells, text=True)


def _notebook(path: Path, label: str) -> pl.DataFrame:
    try:
        notebook = json.loads(path.read_text(encoding="utf-8"))
        cells = notebook["cells"]
    except (ValueError, KeyError, TypeError):
        raise Unreadable("not a valid notebook (its JSON does not parse or has no cells)") from None
    rows: list[int] = []
    columns: list[str | None] = []
    texts: list[str] = []
    lines: list[int] = []
    for number, cell in enumerate(cells, 1):
        for part, text in _notebook_texts(cell):
            for line, content in enumerate(_lines(text), 1):
                rows.append(number)
                columns.append(part)
                texts.append(content)
                lines.append(line)
    return cells_frame(label, rows, columns, texts, lines)


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


__all__ = ["Unreadable", "as_text", "read"]
