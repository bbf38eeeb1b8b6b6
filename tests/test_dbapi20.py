"""The classic PEP 249 compliance suite (dbapi20, from dbapi-compliance), embedded and through a real gateway.

Every test of the suite that applies to a read-only driver runs unchanged. The suite builds its fixtures with
CREATE TABLE and INSERT, which saferoom refuses by design; the tests that need them are skipped below, each
with its reason, and what they check on rows is checked on real tables in tests/test_dbapi.py.
"""

from __future__ import annotations

import unittest

import dbapi20
import pytest

from saferoom import dbapi
from tests.gateway_helpers import serving

WRITES = "needs CREATE TABLE and INSERT, which a read-only driver refuses; tests/test_dbapi.py checks it on real tables"


@pytest.fixture(scope="module")
def server(room, tmp_path_factory):
    yield from serving(room, tmp_path_factory, "dbapi20")


class ReadOnlySuite(dbapi20.DatabaseAPI20Test):
    driver = dbapi
    connect_kw_args: dict[str, object] = {}

    def test_nextset(self) -> None:
        with self._connect() as con:
            assert not hasattr(con.cursor(), "nextset")  # one statement, one result: the optional method is absent

    def test_setoutputsize(self) -> None:
        with self._connect() as con:
            cur = con.cursor()
            cur.setoutputsize(10, 0)  # values arrive whole; the size is accepted and ignored
            assert cur.execute("select 'longer than ten characters' as s").fetchall() == [("longer than ten characters",)]

    def test_setinputsizes(self) -> None:
        with self._connect() as con:
            cur = con.cursor()
            cur.setinputsizes((25,))
            assert cur.execute("select :beer as name", {"beer": "Cooper's"}).fetchall() == [("Cooper's",)]

    def test_setoutputsize_basic(self) -> None:
        with self._connect() as con:
            cur = con.cursor()
            cur.setoutputsize(1000)
            cur.setoutputsize(2000, 0)
            assert cur.execute("select 1 as one").fetchall() == [(1,)]

    def test_executemany(self) -> None:
        with self._connect() as con:
            self.assertRaises(dbapi.NotSupportedError, con.cursor().executemany, "select :x as x", [{"x": 1}])


for _name in ("test_cursor_isolation", "test_description", "test_rowcount", "test_execute", "test_fetchone",
              "test_fetchmany", "test_fetchall", "test_mixedfetch", "test_None"):
    setattr(ReadOnlySuite, _name, unittest.skip(WRITES)(getattr(dbapi20.DatabaseAPI20Test, _name)))


class TestEmbedded(ReadOnlySuite):
    @pytest.fixture(autouse=True)
    def _room(self, room) -> None:
        self.connect_kw_args = {"policy": room.policy, "user": "alice"}


class TestGateway(ReadOnlySuite):
    @pytest.fixture(autouse=True)
    def _gateway(self, server) -> None:
        if not hasattr(server, "alice_token"):
            server.alice_token = server.token("alice")
        self.connect_kw_args = {"url": server.url, "token": server.alice_token}


del ReadOnlySuite  # only its two concrete forms are collected
