"""The compiled HMAC kernel: RFC 2104 HMAC-SHA256, equal to Python's hmac and to the SQL macros."""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterator

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saferoom import keyed
from saferoom.secrets import Secret, hmac_block
from saferoom.split.sources import keyed_functions

if not keyed.available():
    if os.environ.get("SAFEROOM_REQUIRE_KERNEL"):  # CI: a machine with a compiler must build the kernel
        raise RuntimeError("saferoom._hmac was not built; `pip install -e .` needs gcc and the Python headers")
    pytest.skip("saferoom was installed without its C kernel", allow_module_level=True)

# lengths either side of the SHA-256 padding and block edges (55/56 bytes, 64, 119/120)
EDGES = [0, 1, 31, 32, 54, 55, 56, 57, 63, 64, 65, 119, 120, 121, 127, 128, 1000]


def digest(key: str, value: str) -> bytes:
    return hmac.new(key.encode(), value.encode(), hashlib.sha256).digest()


def expected(key: str, values: list[str | None], width: int) -> list[object]:
    out: list[object] = []
    for value in values:
        if value is None:
            out.append(None)
        elif width == keyed.TOKEN_BYTES:
            out.append(digest(key, value)[:16])
        else:
            out.append(int.from_bytes(digest(key, value)[:8], "big"))
    return out


def computed(key: str, array: pa.Array, width: int) -> list[object]:
    got = keyed.hmac_column(hmac_block(Secret(key)), array, width).to_pylist()
    return [g.bytes if hasattr(g, "bytes") else g for g in got]


@pytest.fixture(params=["cpu", "portable"])
def compress_path(request: pytest.FixtureRequest) -> Iterator[str]:
    """Both SHA-256 paths: the CPU's SHA instructions (where present) and the portable C."""
    from saferoom import _hmac

    _hmac.set_accelerated(request.param == "cpu")
    yield request.param
    _hmac.set_accelerated(True)


@pytest.mark.parametrize("key_length", [0, 1, 63, 64, 65, 200])
@pytest.mark.parametrize("width", [keyed.TOKEN_BYTES, keyed.FINGERPRINT_BYTES])
def test_block_edges_match_python_hmac(key_length: int, width: int, compress_path: str) -> None:
    key = "k" * key_length
    values = ["é" * (n // 2) + "x" * (n % 2) for n in EDGES] + ["x" * n for n in EDGES] + [None]
    assert computed(key, pa.array(values), width) == expected(key, values, width)
    if compress_path == "portable":
        assert not keyed.accelerated()


@settings(max_examples=150, deadline=None)
@given(key=st.text(max_size=90), values=st.lists(st.one_of(st.none(), st.text(max_size=150)), max_size=40),
       cut=st.integers(0, 5), large=st.booleans())
def test_any_text_matches_python_hmac(key: str, values: list[str | None], cut: int, large: bool) -> None:
    array = pa.array(values, type=pa.large_string() if large else pa.string()).slice(min(cut, len(values)))
    assert computed(key, array, keyed.TOKEN_BYTES) == expected(key, array.to_pylist(), keyed.TOKEN_BYTES)


def test_empty_and_all_null_columns() -> None:
    assert computed("key", pa.array([], type=pa.string()), 16) == []
    assert computed("key", pa.chunked_array([], type=pa.string()), 8) == []
    assert computed("key", pa.array([None, None], type=pa.string()), 16) == [None, None]
    assert computed("key", pa.array(["", None]), 16) == expected("key", ["", None], 16)


def test_chunked_and_string_view_inputs() -> None:
    chunked = pa.chunked_array([["a", "bb"], [None, "ccc"]])
    assert computed("key", chunked, 16) == expected("key", ["a", "bb", None, "ccc"], 16)
    view = pa.array(["a", None, "x" * 100], type=pa.string_view())
    assert computed("key", view, 8) == expected("key", ["a", None, "x" * 100], 8)


def test_offsets_outside_the_data_are_refused() -> None:
    from saferoom import _hmac

    offsets = np.array([0, 5, 1_000_000], dtype=np.int32)
    with pytest.raises(ValueError, match="outside"):
        _hmac.column(b"\0" * 64, offsets, 4, b"hello", 2, np.empty(32, np.uint8), 16)
    with pytest.raises(ValueError, match="do not match"):
        _hmac.column(b"\0" * 64, offsets, 4, b"hello", 2, np.empty(8, np.uint8), 16)  # output too small
    with pytest.raises(ValueError, match="do not match"):
        _hmac.column(b"short key", offsets, 4, b"hello", 2, np.empty(32, np.uint8), 16)
    decreasing = np.array([5, 0], dtype=np.int32)
    with pytest.raises(ValueError, match="outside"):
        _hmac.column(b"\0" * 64, decreasing, 4, b"hello", 1, np.empty(16, np.uint8), 16)


def test_native_functions_equal_the_sql_macros(monkeypatch: pytest.MonkeyPatch) -> None:
    """A build with the kernel and one without (SQL macros) give every value the same token and fingerprint."""
    key = Secret("bench-key-" * 4)
    queries = [
        """select __saferoom_token(v) t, __saferoom_fingerprint(v) f from (
        select range::varchar || repeat('é', (range % 70)::int) v from range(5000)
        union all select ' MiXeD Case ' union all select null union all select 42::varchar
        union all select 3.25::decimal(10, 2)::varchar union all select date '2024-02-29'::varchar)
        order by v nulls first""",
        "select __saferoom_token(42), __saferoom_token(date '2024-02-29'), __saferoom_fingerprint(' ÉLAN ')",
    ]
    native = duckdb.connect()
    keyed_functions(native, key)
    with_kernel = [native.sql(q).fetchall() for q in queries]
    monkeypatch.setattr(keyed, "_hmac", None)  # as installed without a C compiler
    sql = duckdb.connect()
    keyed_functions(sql, key)
    assert not sql.sql("select 1 from duckdb_functions() where function_name like '%hmac_token%'").fetchall()
    assert [sql.sql(q).fetchall() for q in queries] == with_kernel
