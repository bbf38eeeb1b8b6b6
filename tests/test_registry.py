"""The engine registry: every `engine:` the policy accepts is registered, and nothing else branches on one."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

import saferoom
from saferoom.engines import registry
from saferoom.errors import UsageError
from saferoom.policy import model

PACKAGE = Path(saferoom.__file__).parent
SOURCE_MODELS = get_args(get_args(model.Source)[0])


def engine_of(source_model: type[model.Strict]) -> str:
    (name,) = get_args(source_model.model_fields["engine"].annotation)
    return str(name)


def test_every_kind_of_source_is_registered_with_the_dialect_its_filters_are_read_in() -> None:
    """The policy parses a row filter in the dialect its source model declares; the engine runs the registry's."""
    assert {engine_of(m) for m in SOURCE_MODELS} == set(registry.ENGINES)
    for source_model in SOURCE_MODELS:
        assert source_model.dialect == registry.engine(engine_of(source_model)).dialect, source_model.__name__


def test_every_build_target_is_registered_with_a_writer() -> None:
    for name in get_args(model.Target.model_fields["engine"].annotation):
        assert registry.engine(name).writer is not None, name


def test_an_unknown_engine_is_a_usage_error_naming_the_known_ones() -> None:
    with pytest.raises(UsageError, match="no engine is named `oracle`; saferoom has duckdb, parquet, postgres, spark"):
        registry.engine("oracle")


def test_duckdb_files_and_parquet_folders_share_one_session_engine() -> None:
    assert registry.engine("parquet").spec is registry.engine("duckdb").spec
    assert registry.engine("parquet").open is registry.engine("duckdb").open


@pytest.mark.parametrize("path", sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")))
def test_no_engine_name_branches_outside_the_registry(path: str) -> None:
    """Code asks the registry what an engine is; it never compares names or probes a side for a method."""
    if path == "engines/registry.py":
        return
    text = (PACKAGE / path).read_text()
    assert not re.findall(r"\.engine\s*[!=]=|\.engine\s+(?:not\s+)?in\b|backend\s*==|hasattr\(", text), path


def test_optional_drivers_are_imported_only_when_their_engine_opens() -> None:
    code = ("import sys, saferoom, saferoom.engines, saferoom.session, saferoom.split\n"
            "print(' '.join(m for m in ('pyspark', 'adbc_driver_postgresql', 'psycopg') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""
