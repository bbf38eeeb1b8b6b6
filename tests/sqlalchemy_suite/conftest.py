"""Starts a real gateway for SQLAlchemy's dialect suite and points the suite's plugin at it.

The gateway serves a DuckDB file made before it starts (saferoom writes nothing, so the suite cannot make its
tables through the dialect); the suite then connects as an analyst through ``saferoom+http://``. Test classes
that create tables of their own (``define_tables``) or write rows are skipped, each with its reason.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.dialects import registry

registry.register("saferoom", "saferoom.dialect", "SaferoomDialect")
registry.register("saferoom.http", "saferoom.dialect", "SaferoomDialect")
pytest.register_assert_rewrite("sqlalchemy.testing.assertions")

from sqlalchemy.testing.plugin import pytestplugin  # noqa: E402
from sqlalchemy.testing.plugin.pytestplugin import *  # noqa: E402,F403

from tests.gateway_helpers import Server, table_gateway  # noqa: E402

_started: list[tuple[Server, tempfile.TemporaryDirectory[str]]] = []
NEEDS_TABLES = ("needs tables of its own, made through the dialect by CREATE TABLE and filled by INSERT: "
                "saferoom is read-only")


def pytest_configure(config: pytest.Config) -> None:
    """A gateway over one table, started before the suite's plugin reads the database URL."""
    folder = tempfile.TemporaryDirectory(prefix="saferoom-sqlalchemy-suite-")
    server = table_gateway(Path(folder.name), "suite", "numbers",
                           "create table numbers as select range::integer as id, 'n' || range as label from range(10)",
                           ["analyst"])
    _started.append((server, folder))
    # the token from the environment, not the URL: the suite makes engines from URLs printed with the password hidden
    os.environ["SAFEROOM_TOKEN"] = server.token("analyst")
    config.option.dburi = [f"saferoom+http://127.0.0.1:{server.port}"]
    pytestplugin.pytest_configure(config)


def pytest_unconfigure(config: pytest.Config) -> None:
    pytestplugin.pytest_unconfigure(config)
    for server, folder in _started:
        server.stop()
        folder.cleanup()


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[Any]) -> None:
    pytestplugin.pytest_collection_modifyitems(session, config, items)
    for item in items:
        if _makes_tables(getattr(item, "cls", None)):
            item.add_marker(pytest.mark.skip(reason=NEEDS_TABLES))
        reason = next((why for (cls, name), why in ENGINE_SEMANTICS.items()
                       if getattr(item, "cls", None) is not None and item.cls.__name__.startswith(cls) and item.name.startswith(name)), None)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A test that fails because the guard refused its CREATE TABLE (a table made inline, not in define_tables)
    is reported as skipped for that reason; any other failure stays a failure."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.excinfo is not None and _refused_ddl(call.excinfo.value):
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: {MAKES_A_TABLE}")


MAKES_A_TABLE = "makes, fills or drops a table through the dialect: saferoom is read-only, and the guard refused it"
DECIMALS_AS_DOUBLES = "DuckDB divides decimals as doubles (5.52 / 2.4 is the double 2.3, not Decimal('2.3'))"
# tests of the engine's arithmetic, not of the dialect: (class name, test name's start) -> reason
ENGINE_SEMANTICS = {
    ("TrueDivTest", "test_truediv_numeric"): DECIMALS_AS_DOUBLES,
    ("TrueDivTest", "test_truediv_divisor[numeric_38_digit_divisor"): DECIMALS_AS_DOUBLES + ", 10**37 / 10**37 as 3.0000000000000004",
}
WRITE_REFUSED = re.compile(r"[A-Z]+ statements are not allowed; saferoom runs read-only queries")


def _refused_ddl(error: BaseException | None) -> bool:
    from saferoom.errors import QueryRejected

    while error is not None:
        if isinstance(error, QueryRejected) and WRITE_REFUSED.match(str(error)):
            return True
        error = error.__cause__ or getattr(error, "orig", None)
    return False


def _makes_tables(cls: type | None) -> bool:
    from sqlalchemy.testing import fixtures

    if cls is None or not issubclass(cls, fixtures.TablesTest):
        return False
    return cls.define_tables is not fixtures.TablesTest.define_tables  # type: ignore[comparison-overlap]
