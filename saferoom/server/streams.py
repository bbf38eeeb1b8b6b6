"""Result bodies: Arrow IPC (default), JSON, vectors or CSV, produced batch by batch.

An Arrow body is a standard IPC stream followed, after its end-of-stream
marker, by one JSON line: ``{"rows": n, "truncated": bool, "notices": [...], "error": ...}``.
Arrow readers stop at the marker; saferoom's client reads the line, so a cut
or a failure mid-stream still reaches the caller.
"""

from __future__ import annotations

import io
import json
import math
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv

from saferoom.decision import Decision
from saferoom.errors import SaferoomError
from saferoom.result import Result

ARROW = "application/vnd.apache.arrow.stream"
VECTORS = "application/vnd.saferoom.vectors"
MEDIA = {"arrow": ARROW, "json": "application/json", "vectors": VECTORS, "csv": "text/csv; charset=utf-8",
         "page": "application/json"}


class _Sink(io.RawIOBase):
    """Collects what the IPC writer emits so it can be sent as it comes."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._chunks.append(chunk)
        self._position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._position

    def take(self) -> bytes:
        chunk, self._chunks = b"".join(self._chunks), []
        return chunk


class Outcome:
    """What a stream sent, for the audit record written when it ends."""

    def __init__(self) -> None:
        self.rows = 0
        self.bytes = 0
        self.error: SaferoomError | None = None
        self.cut = False  # stopped short by the body itself (a kept result's size cap), not by the role's limit

    def count(self, chunk: Any) -> Any:
        self.bytes += chunk.nbytes if isinstance(chunk, memoryview) else len(chunk)
        return chunk


EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"
SMALL = 1 << 18  # small results leave in one chunk; large ones stream batch by batch


def arrow_body(result: Result, outcome: Outcome) -> Iterator[bytes]:
    if any(pa.types.is_dictionary(f.type) for f in result.schema):
        yield from _arrow_with_dictionaries(result, outcome)
        return
    pending: list[Any] = [result.schema.serialize()]
    size = pending[0].size
    try:
        for batch in result.stream():
            message = result.ipc_message(batch) or batch.serialize()  # one IPC message: the worker's, when unchanged
            outcome.rows += batch.num_rows
            if size + message.size < SMALL:
                pending.append(message)
                size += message.size
                continue
            if pending:
                yield outcome.count(b"".join(pending))
            yield outcome.count(memoryview(message))  # large: sent as is, no copy
            pending, size = [], 0
    except SaferoomError as exc:
        outcome.error = exc
    pending += [EOS, trailer(result, outcome)]
    yield outcome.count(b"".join(pending))


def _arrow_with_dictionaries(result: Result, outcome: Outcome) -> Iterator[bytes]:
    """Dictionary-encoded columns need the IPC writer's dictionary messages."""
    sink = _Sink()
    writer = pa.ipc.new_stream(sink, result.schema)
    try:
        for batch in result.stream():
            writer.write_batch(batch)
            outcome.rows += batch.num_rows
            yield outcome.count(sink.take())
    except SaferoomError as exc:
        outcome.error = exc
    writer.close()
    yield outcome.count(sink.take() + trailer(result, outcome))


def json_body(result: Result, outcome: Outcome, decision: Decision | None = None) -> Iterator[bytes]:
    """``{"decision", "columns", "rows", "status"}``: the query's decision record, the column names, the rows
    (each a list) and the trailer's status."""
    head = json.dumps(decision.to_dict() if decision else None).encode()
    yield outcome.count(b'{"decision": ' + head + b', "columns": ' + json.dumps(result.schema.names).encode() + b', "rows": [')
    first = True
    try:
        for batch in result.stream():
            if not batch.num_rows:
                continue
            # one chunk a batch (a chunk a row cost more to send than to encode), values converted a column at a time
            rows = json_rows(batch)[1:-1]
            yield outcome.count((b"" if first else b",") + rows.encode())
            first = False
            outcome.rows += batch.num_rows
    except SaferoomError as exc:
        outcome.error = exc
    yield outcome.count(b'], "status": ' + trailer(result, outcome).rstrip() + b"}")


def json_rows(batch: pa.RecordBatch | pa.Table) -> str:
    """The rows as a JSON array of arrays, values converted a column at a time. NaN and infinities, which JSON
    cannot hold, are sent as the strings "nan", "inf" and "-inf"."""
    columns = [_json_values(c) for c in batch.columns]
    return json.dumps(list(map(list, zip(*columns, strict=True))), default=str, allow_nan=False)


def _json_values(column: pa.Array | pa.ChunkedArray) -> list[Any]:
    values: list[Any] = column.to_pylist()
    if pa.types.is_floating(column.type) and not pc.all(pc.is_finite(column)).as_py():
        return [v if v is None or math.isfinite(v) else str(v) for v in values]  # only such columns pay for this
    return values


def vectors_body(result: Result, outcome: Outcome, decision: Decision | None = None) -> Iterator[bytes]:
    """Frames a client without Arrow (R) reads into vectors with plain binary reads: a tag byte, the payload's
    length (uint32, little-endian), the payload. ``H``: JSON ``{"decision", "columns", "types", "kinds"}``;
    ``B``: a batch, its row count (int32) then each column: a flags byte (1: it holds nulls, and a validity byte
    a row follows; 2: text that is not all ASCII), then its values by kind: ``i`` int32, ``d`` float64, ``l`` one
    byte a row, ``s`` UTF-8 strings each ended by a NUL. Dates are days and timestamps seconds since 1970-01-01 (UTC). ``S``: the status line."""
    kinds = [_vector_kind(f.type) for f in result.schema]
    head = {"decision": decision.to_dict() if decision else None, "columns": result.schema.names,
            "types": [str(f.type) for f in result.schema], "kinds": kinds}
    yield from map(outcome.count, _frame(b"H", [json.dumps(head).encode()]))
    try:
        for batch in result.stream():
            if not batch.num_rows:
                continue
            parts: list[bytes | memoryview] = [struct.pack("<i", batch.num_rows)]
            for column, kind in zip(batch.columns, kinds, strict=True):
                parts += _vector(column, kind)
            yield from map(outcome.count, _frame(b"B", parts))  # the columns' buffers as they are: no copy
            outcome.rows += batch.num_rows
    except SaferoomError as exc:
        outcome.error = exc
    yield from map(outcome.count, _frame(b"S", [trailer(result, outcome).rstrip()]))


def _frame(tag: bytes, parts: list[bytes | memoryview]) -> list[bytes | memoryview]:
    """The frame's pieces, each as bytes (a server counts a chunk with len()); no empty one (it would end the body)."""
    pieces = [memoryview(p).cast("B") for p in parts]
    return [tag + struct.pack("<I", sum(map(len, pieces))), *(p for p in pieces if len(p))]


def _vector_kind(kind: pa.DataType) -> str:
    if pa.types.is_dictionary(kind):
        return _vector_kind(kind.value_type)
    if kind in (pa.int8(), pa.int16(), pa.int32(), pa.uint8(), pa.uint16()):
        return "i"
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind) \
            or pa.types.is_date(kind) or pa.types.is_timestamp(kind):
        return "d"
    return "l" if pa.types.is_boolean(kind) else "s"


SECONDS = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def _vector(column: pa.Array, kind: str) -> list[bytes | memoryview]:
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    validity = [np.asarray(column.is_valid(), dtype=np.uint8).data] if column.null_count else []
    if pa.types.is_date(column.type):
        column = column.cast(pa.date32()).cast(pa.int32())
    elif pa.types.is_timestamp(column.type):
        column = pc.divide(column.cast(pa.int64()).cast(pa.float64(), safe=False), float(SECONDS[column.type.unit]))
    flags = bytes([1 if validity else 0])
    if kind == "i":
        return [flags, *validity, np.asarray(column.cast(pa.int32()).fill_null(0), dtype="<i4").data]
    if kind == "d":  # BIGINT: exact to 2**53
        doubles = _decimals(column) if pa.types.is_decimal128(column.type) else \
            np.asarray(column.cast(pa.float64(), safe=False).fill_null(0.0), dtype="<f8")
        return [flags, *validity, doubles.data]
    if kind == "l":
        return [flags, *validity, np.asarray(column.fill_null(False), dtype=np.uint8).data]
    text = _strings(column)
    ascii_only = not len(text) or int(text.max()) < 0x80
    return [bytes([flags[0] | (0 if ascii_only else 2)]), *validity, text.data]


def _decimals(column: pa.Array) -> np.ndarray:
    """Decimals as their nearest doubles: the unscaled integer divided by 10**scale (Arrow's cast can be a bit
    off: 118.32 became 118.32000000000001). Past 64 bits, Arrow's cast."""
    words = np.frombuffer(column.buffers()[1], dtype="<i8")[2 * column.offset:2 * (column.offset + len(column))]
    low, high = words[0::2], words[1::2]
    if column.type.scale < 0 or not np.array_equal(high, low >> 63):
        return np.asarray(column.cast(pa.float64(), safe=False).fill_null(0.0), dtype="<f8")
    doubles: np.ndarray = (low / 10.0 ** column.type.scale).astype("<f8")
    return doubles


def _strings(column: pa.Array) -> np.ndarray:
    """Each value as UTF-8 with a NUL after it (a NUL inside a value, which R cannot hold, becomes U+FFFD)."""
    text = column.cast(pa.large_string()) if pa.types.is_large_string(column.type) or pa.types.is_string(column.type) \
        else pa.array([None if v is None else str(v) for v in column.to_pylist()], pa.large_string())
    if not _values(text).all():  # a NUL inside a value: rare
        text = pc.replace_substring(text, "\0", "\ufffd")
    ended = pc.binary_join_element_wise(text.fill_null(""), pa.scalar("", pa.large_string()), pa.scalar("\0", pa.large_string()))
    return _values(ended)


def _values(text: pa.Array) -> np.ndarray:
    """The bytes of a large_string array's values, in place."""
    offsets = np.frombuffer(text.buffers()[1], dtype=np.int64)[text.offset:text.offset + len(text) + 1]
    return np.frombuffer(text.buffers()[2] or b"", dtype=np.uint8)[offsets[0]:offsets[-1]]


def csv_body(result: Result, outcome: Outcome) -> Iterator[bytes]:
    header = True
    try:
        for batch in result.stream():
            buffer = io.BytesIO()
            pyarrow.csv.write_csv(pa.Table.from_batches([batch]), buffer, pyarrow.csv.WriteOptions(include_header=header))
            header = False
            outcome.rows += batch.num_rows
            yield outcome.count(buffer.getvalue())
    except SaferoomError as exc:
        outcome.error = exc


BODIES = {"arrow": arrow_body, "json": json_body, "vectors": vectors_body, "csv": csv_body}


def trailer(result: Result, outcome: Outcome) -> bytes:
    """The status line after the rows: how many, whether cut, the notices, and an error that ended the stream."""
    status: dict[str, Any] = {"rows": outcome.rows, "truncated": result.truncated if outcome.error is None else False,
                              "notices": list(result.notices_so_far)}
    if outcome.error is not None:
        status["error"] = error_body(outcome.error)["error"]
    return json.dumps(status).encode() + b"\n"


def error_body(exc: SaferoomError) -> dict[str, Any]:
    return {"error": {"type": type(exc).__name__, "message": str(exc), **exc.fields()}}
