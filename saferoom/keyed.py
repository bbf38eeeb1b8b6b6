"""HMAC-SHA256 over whole Arrow columns: tokens and fingerprints at native speed.

Every engine computes the same keyed hash (RFC 2104 HMAC-SHA256 of the
value's text): DuckDB and PostgreSQL in SQL, Spark in its SQL, and here a
small C kernel (``saferoom._hmac``) that hashes a column's buffers without
the GIL, using the CPU's SHA instructions where present. DuckDB calls it as a
vectorised function (builds, sessions, the gateway, check) and Spark's Python
workers through an Arrow UDF; without the compiled kernel the SQL functions
serve instead, with the same tokens.

The DuckDB functions ``__saferoom_token`` and ``__saferoom_fingerprint`` are
made here, and the fingerprint key (derived one way from the token key), so
the engine, the split and `saferoom check` share one definition of each.
"""

from __future__ import annotations

import hashlib
import hmac

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlglot
from duckdb.func import FunctionNullHandling, PythonUDFType
from sqlglot import exp

from saferoom.secrets import Secret, hmac_block, hmac_pads

try:
    from saferoom import _hmac
except ImportError:  # installed without a C compiler
    _hmac = None

TOKEN_BYTES, FINGERPRINT_BYTES = 16, 8
# The keyed functions as a DuckDB connection names them (the sessions' engine, a build, `saferoom check`)
TOKEN_FUNCTION = "__saferoom_token"
FINGERPRINT_FUNCTION = "__saferoom_fingerprint"
FINGERPRINT_TEXT_FUNCTION = "__saferoom_fingerprint_text"


def fingerprint_key(token_key: Secret) -> Secret:
    """A key derived one way from the token key: holding it does not let anyone compute tokens."""
    return Secret(hmac.new(token_key.reveal().encode(), b"saferoom fingerprint key v1", hashlib.sha256).hexdigest())


def available() -> bool:
    return _hmac is not None


def accelerated() -> bool:
    """True when the kernel runs on the CPU's SHA instructions."""
    return _hmac is not None and _hmac.accelerated()


def hmac_column(block: bytes, values: pa.Array | pa.ChunkedArray, width: int) -> pa.Array:
    """First ``width`` bytes of each value's HMAC: UUIDs (16) or big-endian uint64 (8); nulls stay null."""
    if _hmac is None:
        raise RuntimeError("saferoom was installed without its compiled HMAC kernel")
    array = _one_chunk(values)
    kind = pa.uuid() if width == TOKEN_BYTES else pa.uint64()
    if len(array) == 0:
        return pa.array([], type=kind)
    if not pa.types.is_string(array.type) and not pa.types.is_large_string(array.type):
        array = array.cast(pa.large_string())
    validity, offsets, data = array.buffers()
    offset_size = 8 if pa.types.is_large_string(array.type) else 4
    start = array.offset * offset_size
    out = np.empty(len(array) * width, dtype=np.uint8)
    offsets_view = memoryview(offsets)[start : start + (len(array) + 1) * offset_size]
    _hmac.column(block, offsets_view, offset_size, data if data is not None else b"", len(array), out, width)
    buffers = [_validity(array, validity), pa.py_buffer(out)]
    return pa.Array.from_buffers(kind, len(array), buffers, null_count=array.null_count)


def _one_chunk(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    return values


def _validity(array: pa.Array, validity: pa.Buffer | None) -> pa.Buffer | None:
    if validity is None or array.null_count == 0:
        return None
    if array.offset % 8 == 0:
        return validity.slice(array.offset // 8)
    return pc.is_valid(array).buffers()[1]


_HEX = np.frombuffer(b"".join(f"{b:02x}".encode() for b in range(256)), dtype=np.uint8).reshape(256, 2)
_DASHES = (8, 13, 18, 23)  # where a UUID's text has its dashes


def token_text(block: bytes, values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Tokens as UUID text (``8-4-4-4-12`` lower-case hex), for engines without a UUID type (Spark)."""
    tokens = hmac_column(block, values, TOKEN_BYTES)
    raw = np.frombuffer(tokens.storage.buffers()[1], dtype=np.uint8, count=16 * len(tokens)).reshape(-1, 16)
    hexed = _HEX[raw].reshape(-1, 32)
    text = np.full((len(tokens), 36), ord("-"), dtype=np.uint8)
    keep = np.array([i for i in range(36) if i not in _DASHES])
    text[:, keep] = hexed
    offsets = np.arange(0, 36 * (len(tokens) + 1), 36, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), len(tokens), [tokens.buffers()[0], pa.py_buffer(offsets), pa.py_buffer(text)],
                                 null_count=tokens.null_count)


def register(conn: duckdb.DuckDBPyConnection, name: str, key: Secret, width: int) -> None:
    """``name(VARCHAR)`` in ``conn``: the kernel over each vector DuckDB hands it."""
    block = hmac_block(key)
    kind = "UUID" if width == TOKEN_BYTES else "UBIGINT"
    conn.create_function(name, lambda values: hmac_column(block, values, width), ["VARCHAR"], kind,
                         type=PythonUDFType.ARROW, null_handling=FunctionNullHandling.SPECIAL, side_effects=False)


def token_function(conn: duckdb.DuckDBPyConnection, key: Secret) -> None:
    """``__saferoom_token(v)``: the compiled kernel where installed, else the SQL macro (same tokens)."""
    if not available():
        conn.execute(token_macro(key))
        return
    register(conn, "__saferoom_hmac_token", key, TOKEN_BYTES)
    conn.execute(f"CREATE MACRO memory.main.{TOKEN_FUNCTION}(v) AS __saferoom_hmac_token(CAST(v AS VARCHAR))")


def fingerprint_function(conn: duckdb.DuckDBPyConnection, key: Secret) -> None:
    """``__saferoom_fingerprint(v)``, and ``…_text(t)`` for text already trimmed and lower-cased."""
    if available():
        register(conn, FINGERPRINT_TEXT_FUNCTION, key, FINGERPRINT_BYTES)
    else:
        conn.execute(fingerprint_macro(key))
    conn.execute(f"CREATE MACRO memory.main.{FINGERPRINT_FUNCTION}(v) AS {FINGERPRINT_TEXT_FUNCTION}({_FINGERPRINT_TEXT})")


_FINGERPRINT_TEXT = "lower(trim(CAST(v AS VARCHAR)))"


def fingerprint_macro(key: Secret) -> str:
    """64-bit keyed hash of text as SQL (the fallback for the compiled kernel)."""
    hmac_sql = token_macro(key, name="__saferoom_fp_hmac", as_token=False)
    return (
        hmac_sql + f"; CREATE MACRO memory.main.{FINGERPRINT_TEXT_FUNCTION}(v) AS "
        "CAST('0x' || left(memory.main.__saferoom_fp_hmac(v), 16) AS UBIGINT)"
    )


def token_macro(key: Secret, name: str = TOKEN_FUNCTION, *, as_token: bool = True) -> str:
    """HMAC-SHA256 as a DuckDB macro; the key lives only inside the engine.

    HMAC(K, m) = H((K ^ opad) || H((K ^ ipad) || m)) with keys longer than the
    block hashed first, exactly as RFC 2104 and Python's ``hmac`` compute it.
    A token is its first 128 bits as a UUID: fixed width, so it stores, joins
    and groups like a number, and prints as text (truncation as in RFC 4868).
    """
    inner, outer = (pad.hex() for pad in hmac_pads(key))
    body = sqlglot.parse_one(
        "sha256(unhex(__o) || unhex(sha256(unhex(__i) || encode(CAST(v AS VARCHAR)))))", read="duckdb"
    ).transform(lambda n: _key_literal(n, inner, outer))
    if as_token:
        body = exp.cast(exp.func("left", body, exp.Literal.number(32)), "UUID")
    return f"CREATE MACRO memory.main.{name}(v) AS {body.sql('duckdb')}"


def _key_literal(node: exp.Expr, inner: str, outer: str) -> exp.Expr:
    if isinstance(node, exp.Column) and node.name in ("__i", "__o"):
        return exp.Literal.string(inner if node.name == "__i" else outer)
    return node
