"""Tables read a batch at a time, so a file of any size is checked in bounded memory.

CSV and TSV by Arrow's streaming reader (every column as text, as written), Parquet a record batch at a
time with only the columns that can carry a finding, JSON Lines in blocks of whole lines, and Excel
workbooks sheet by sheet, row by row (openpyxl's read-only mode), each cell named as Excel names it.
A batch is at most about ``BATCH_BYTES`` of the file; the rows of a batch are numbered after those before it.
"""

from __future__ import annotations

import codecs
import functools
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from saferoom.check.cells import Batch, cells_frame

BATCH_BYTES = 2 << 20  # 8 MiB peaked ~40 MB higher on the benchmark's CSV and was not measurably faster
BLOCK_BYTES = 1 << 20  # Arrow's CSV block: larger blocks cost far more memory than their size
EXCEL_ROWS = 20_000
PARQUET_ROWS = 16_384
LONGEST_RECORD = 64 << 20
LOSSY = "saferoom-utf8-lossy"


def batches(path: Path, label: str, suffix: str) -> Iterator[Batch]:
    if suffix in (".csv", ".tsv"):
        yield from _csv(path, label, "\t" if suffix == ".tsv" else ",")
    elif suffix == ".parquet":
        yield from _parquet(path, label)
    elif suffix in (".jsonl", ".ndjson"):
        yield from _jsonl(path, label)
    elif suffix == ".xls":
        yield from _xls(path, label)
    else:
        yield from _excel(path, label)


def _table(frame: pl.DataFrame, offset: int) -> Batch:
    return Batch(table=frame, offset=offset)


def _csv(path: Path, label: str, separator: str) -> Iterator[Batch]:
    """Strict UTF-8 first (Arrow decodes nothing then); a file that is not is read again, lossily, from where it failed."""
    done = 0
    try:
        for batch in _csv_batches(path, label, separator, "utf8"):
            done = batch.offset + (batch.table.height if batch.table is not None else 0)
            yield batch
    except pa.ArrowInvalid as exc:
        if "UTF8" not in str(exc).upper():
            raise
        _register_lossy()
        for batch in _csv_batches(path, label, separator, LOSSY):
            if batch.offset >= done:
                yield batch
            elif batch.table is not None and batch.offset + batch.table.height > done:
                yield _table(batch.table.slice(done - batch.offset), done)


def _csv_batches(path: Path, label: str, separator: str, encoding: str) -> Iterator[Batch]:
    names = _csv_header(path, separator, encoding)
    ragged: list[str] = []

    def keep(row: Any) -> str:  # a row with too many or too few fields is still read, as text
        ragged.append(row.text)
        return "skip"

    reader = pacsv.open_csv(
        path, read_options=pacsv.ReadOptions(block_size=BLOCK_BYTES, use_threads=False, encoding=encoding,
                                             column_names=names, skip_rows=1),
        parse_options=pacsv.ParseOptions(delimiter=separator, newlines_in_values=True, invalid_row_handler=keep),
        convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()), strings_can_be_null=False))
    offset = 0
    for group in _grouped(reader):
        frame = pl.from_arrow(pa.Table.from_batches(group))
        assert isinstance(frame, pl.DataFrame)
        batch = _table(frame, offset)
        if ragged:
            batch.cells = cells_frame(label, [0] * len(ragged), ["(a row with the wrong number of fields)"] * len(ragged), ragged)
            ragged.clear()
        offset += frame.height
        yield batch


def _csv_header(path: Path, separator: str, encoding: str) -> list[str]:
    """The header row's names (Arrow reads one block to find them), each made unique: a repeated name is its own column."""
    reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=BLOCK_BYTES, use_threads=False, encoding=encoding),
                            parse_options=pacsv.ParseOptions(delimiter=separator, newlines_in_values=True,
                                                             invalid_row_handler=lambda _: "skip"))
    return unique_names(reader.schema.names)


def unique_names(names: list[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        unique = name
        while unique in out:
            unique += "'"
        out.append(unique)
    return out


def _grouped(reader: Any) -> Iterator[list[pa.RecordBatch]]:
    """Arrow's small blocks gathered up to ``BATCH_BYTES``: the detectors cost a little per batch."""
    group: list[pa.RecordBatch] = []
    size = 0
    for batch in reader:
        group.append(batch)
        size += batch.nbytes
        if size >= BATCH_BYTES:
            yield group
            group, size = [], 0
    if group:
        yield group


def _parquet(path: Path, label: str) -> Iterator[Batch]:
    """Record batches of only the columns a finding can be in: text and integers (nested columns as text)."""
    with pq.ParquetFile(path) as file:
        schema = file.schema_arrow
        wanted = [f.name for f in schema if not _numeric_only(f.type)] or schema.names[:1]
        offset = 0
        # small record batches gathered by their size in memory: a dictionary-encoded column is small on disk only
        for group in _grouped(file.iter_batches(batch_size=PARQUET_ROWS, columns=wanted, use_threads=False)):
            frame = pl.from_arrow(pa.Table.from_batches(group))
            assert isinstance(frame, pl.DataFrame)
            yield _table(_texts(frame), offset)
            offset += frame.height


def _numeric_only(kind: pa.DataType) -> bool:
    """Floats, dates, times and booleans carry no pattern; integers can (a card number stored as a number)."""
    return bool(pa.types.is_floating(kind) or pa.types.is_temporal(kind) or pa.types.is_boolean(kind))


def _texts(frame: pl.DataFrame) -> pl.DataFrame:
    """Nested columns as JSON and binary ones as text, so what they hold is read too."""
    return frame.with_columns(pl.col(c).cast(pl.String, strict=False) if dtype == pl.Binary
                              else pl.struct(c).struct.json_encode().alias(c)
                              for c, dtype in frame.schema.items() if dtype == pl.Binary or dtype.is_nested())


def _jsonl(path: Path, label: str) -> Iterator[Batch]:
    """Blocks of whole lines, each parsed on its own; every block infers its own columns."""
    offset = 0
    for block in line_blocks(path):
        frame = pl.read_ndjson(io.BytesIO(block), infer_schema_length=None)
        frame = frame.select(pl.all().cast(pl.String, strict=False)) if frame.width else frame
        yield _table(frame, offset)
        offset += frame.height


def line_blocks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        carry = b""
        while block := f.read(BATCH_BYTES):
            data = carry + block
            cut = data.rfind(b"\n") + 1
            if cut:
                yield data[:cut]
            carry = data[cut:]
            if len(carry) > LONGEST_RECORD:  # one record is never read past this: memory stays bounded
                raise ValueError(f"a line longer than {LONGEST_RECORD >> 20} MiB")
        if carry.strip():
            yield carry


def _excel(path: Path, label: str) -> Iterator[Batch]:
    """Each sheet row by row; the first row with a value names the columns, and findings name their cell: Sheet1!C7."""
    import openpyxl

    book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        for sheet in book.worksheets:
            yield from _sheet(sheet.title, sheet.iter_rows(values_only=True), label)
    finally:
        book.close()


def _sheet(title: str, rows: Iterator[tuple[Any, ...]], label: str) -> Iterator[Batch]:
    header_row, names = 0, []
    for number, values in enumerate(rows, 1):
        if any(v is not None for v in values):
            header_row, names = number, unique_names([_letter(i) if v is None else str(v) for i, v in enumerate(values)])
            break
    if not names:
        return
    relocate = functools.partial(_cell_reference, title, header_row, {n: _letter(i) for i, n in enumerate(names)})
    offset, block = 0, []
    for values in rows:
        block.append(["" if v is None else str(v) for v in values[:len(names)]])
        if len(block) == EXCEL_ROWS:
            yield _sheet_batch(block, names, offset, relocate, title)
            offset, block = offset + len(block), []
    if block or offset == 0:
        yield _sheet_batch(block, names, offset, relocate, title)


def _sheet_batch(block: list[list[str]], names: list[str], offset: int, relocate: Any, title: str) -> Batch:
    columns = list(zip(*[row + [""] * (len(names) - len(row)) for row in block], strict=True)) if block else [()] * len(names)
    frame = pl.DataFrame({n: pl.Series(n, col, dtype=pl.String) for n, col in zip(names, columns, strict=True)})
    frame = frame.with_columns(pl.all().replace("", None))
    return Batch(table=frame, offset=offset, relocate=relocate, part=title)


def _letter(index: int) -> str:
    """A column's letters as Excel writes them: 0 -> A, 25 -> Z, 26 -> AA."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(65 + rest) + letters
    return letters


_ROW_CELL = re.compile(r"row (\d+), column (.+)")


def _cell_reference(sheet: str, header_row: int, letters: dict[str, str], location: str) -> str:
    """``row 6, column note`` -> ``Sheet1!C7, column note``; a header name is at the header row."""
    found = _ROW_CELL.fullmatch(location)
    if found and found.group(2) in letters:
        return f"{sheet}!{letters[found.group(2)]}{header_row + int(found.group(1))}, column {found.group(2)}"
    return f"{sheet}!{location}"


def _xls(path: Path, label: str) -> Iterator[Batch]:
    """The old binary workbook (no streaming reader exists for it): a sheet at a time, by fastexcel."""
    import fastexcel

    reader = fastexcel.read_excel(str(path))
    for name in reader.sheet_names:
        frame = pl.from_arrow(reader.load_sheet(name, dtypes="string").to_arrow())
        assert isinstance(frame, pl.DataFrame)
        batch = _table(frame, 0)
        batch.relocate = functools.partial(_sheet_prefix, name)
        batch.part = name
        yield batch


def _sheet_prefix(sheet: str, location: str) -> str:
    return f"{sheet}!{location}"


@functools.cache
def _register_lossy() -> None:
    """A codec Arrow can transcode through: UTF-8 with each invalid byte replaced, as the other formats are read."""

    def search(name: str) -> codecs.CodecInfo | None:
        if name.replace("-", "_") != LOSSY.replace("-", "_"):
            return None
        utf8 = codecs.lookup("utf-8")
        return codecs.CodecInfo(utf8.encode, utf8.decode, incrementalencoder=utf8.incrementalencoder,
                                incrementaldecoder=functools.partial(utf8.incrementaldecoder, errors="replace"), name=LOSSY)

    codecs.register(search)
