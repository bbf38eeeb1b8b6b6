"""The gateway's `vectors` body (what the R package reads), decoded here and held against the Arrow body."""

from __future__ import annotations

import datetime as dt
import json
import struct

import httpx
import numpy as np
import pytest

from tests.gateway_helpers import serving

DTYPES = {"i": "<i4", "d": "<f8", "l": "u1"}


@pytest.fixture(scope="module")
def server(room, tmp_path_factory):
    yield from serving(room, tmp_path_factory, "vectors-gateway")


@pytest.fixture(scope="module")
def token(server) -> str:
    return server.token("ivan")


def decode(body: bytes) -> tuple[dict, dict[str, list], dict]:
    """The frames: the header, the columns (None for a null) and the status."""
    head, status, columns, at = {}, {}, {}, 0
    while at < len(body):
        tag, size = body[at:at + 1], struct.unpack_from("<I", body, at + 1)[0]
        payload, at = body[at + 5:at + 5 + size], at + 5 + size
        if tag == b"H":
            head = json.loads(payload)
            columns = {name: [] for name in head["columns"]}
        elif tag == b"S":
            status = json.loads(payload)
        else:
            assert tag == b"B"
            batch(payload, head, columns)
    return head, columns, status


def batch(payload: bytes, head: dict, columns: dict[str, list]) -> None:
    rows, at = struct.unpack_from("<i", payload)[0], 4
    for name, kind in zip(head["columns"], head["kinds"], strict=True):
        flags, at = payload[at], at + 1
        valid = [True] * rows
        if flags & 1:
            valid, at = [b == 1 for b in payload[at:at + rows]], at + rows
        if kind == "s":
            values = []
            for _ in range(rows):
                end = payload.index(b"\0", at)
                values.append(payload[at:end].decode())
                at = end + 1
            assert bool(flags & 2) == any(not v.isascii() for v in values)
        else:
            width = np.dtype(DTYPES[kind]).itemsize
            values, at = np.frombuffer(payload[at:at + rows * width], DTYPES[kind]).tolist(), at + rows * width
        columns[name] += [v if ok else None for v, ok in zip(values, valid, strict=True)]
    assert at == len(payload)


def query(server, token: str, sql: str) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/query", json={"sql": sql, "format": "vectors"},
                      headers={"Authorization": f"Bearer {token}"}, timeout=60)


def test_each_type_arrives_as_its_vector(server, token) -> None:
    answer = query(server, token, """
        select * from (values
          (1::INTEGER, 9007199254740993::BIGINT, 12.34::DECIMAL(10,2), DATE '2024-02-29',
           TIMESTAMPTZ '2024-02-29 12:00:00.5+00', true, 'Zoë' || chr(0) || 'x', 'nan'::DOUBLE),
          (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)) t(i, big, m, day, ts, ok, s, f)""")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/vnd.saferoom.vectors"
    head, columns, status = decode(answer.content)
    assert head["kinds"] == ["i", "d", "d", "d", "d", "l", "s", "d"]
    assert head["types"][3] == "date32[day]" and head["types"][4].startswith("timestamp[us")
    assert head["decision"]["decision"] == "allowed"
    assert columns["i"] == [1, None]
    assert columns["big"] == [9007199254740992.0, None]  # the nearest double
    assert columns["m"] == [12.34, None]
    assert columns["day"] == [(dt.date(2024, 2, 29) - dt.date(1970, 1, 1)).days, None]
    assert columns["ts"] == [dt.datetime(2024, 2, 29, 12, 0, 0, 500000, tzinfo=dt.UTC).timestamp(), None]
    assert columns["ok"] == [1, None]
    assert columns["s"] == ["Zoë\ufffdx", None]  # R cannot hold a NUL in a string
    assert columns["f"][0] != columns["f"][0] and columns["f"][1] is None  # NaN, then a null
    assert status == {"rows": 2, "truncated": False, "notices": []}


def test_a_large_result_matches_the_arrow_body(server, token) -> None:
    sql = "select order_id, customer_id, amount, region, created_at from prod.orders order by order_id"
    _, columns, status = decode(query(server, token, sql).content)
    arrow = httpx.post(f"{server.url}/v1/query", json={"sql": sql}, headers={"Authorization": f"Bearer {token}"}, timeout=60)
    import pyarrow as pa

    table = pa.ipc.open_stream(arrow.content).read_all()
    assert status["rows"] == table.num_rows == len(columns["order_id"]) > 10_000
    assert columns["order_id"] == [float(v) for v in table["order_id"].to_pylist()]
    assert columns["customer_id"] == table["customer_id"].to_pylist()
    assert columns["amount"] == [float(v) for v in table["amount"].to_pylist()]
    assert columns["region"] == table["region"].to_pylist()


def test_a_refusal_is_the_json_error(server) -> None:
    answer = query(server, server.token("alice"), "select pan from prod.cards")
    assert answer.status_code == 403
    assert answer.json()["error"]["type"] == "QueryRejected"
    assert answer.json()["error"]["column"] == "prod.cards.pan"
