"""`saferoom compile`'s choices, at the library level: what it compiles for, where --apply connects and as whom."""

from __future__ import annotations

from pathlib import Path

import pytest

import saferoom
from saferoom import compile as compiler
from saferoom.errors import UsageError
from saferoom.secrets import Secret

SOURCE_URL = "postgresql://reader@db.internal:5432/prod"
ADMIN_URL = "postgresql://admin@db.internal:5432/prod"


@pytest.fixture
def pg_policy(room, tmp_path: Path) -> saferoom.Policy:
    """The room's policy over a PostgreSQL source; nothing here connects to it."""
    (tmp_path / "reader.password").write_text("reader-secret\n")
    text = room.policy.read_text().split("builds:")[0].replace("file:token.key", f"file:{room.folder / 'token.key'}")
    text = text.replace("    engine: duckdb\n    path: prod.duckdb",
                        f"    engine: postgres\n    url: {SOURCE_URL}\n    password: file:{tmp_path / 'reader.password'}")
    (tmp_path / "saferoom.yaml").write_text(text)
    return saferoom.load_policy(tmp_path / "saferoom.yaml")


@pytest.mark.parametrize(("admin_url", "admin_password", "expected"), [
    (None, None, (SOURCE_URL, "reader-secret")),          # as the source, with its own password
    (None, "given", (SOURCE_URL, "given")),
    (ADMIN_URL, None, (ADMIN_URL, None)),                 # the source's password is not sent to another account
    (ADMIN_URL, "given", (ADMIN_URL, "given")),
])
def test_admin_target(pg_policy: saferoom.Policy, admin_url: str | None, admin_password: str | None,
                      expected: tuple[str, str | None]) -> None:
    url, password = compiler.admin_target(pg_policy, admin_url, Secret(admin_password) if admin_password else None)
    assert (url, password.reveal() if password else None) == expected


def test_apply_and_drop_are_for_postgres_only(pg_policy: saferoom.Policy, room) -> None:
    with pytest.raises(UsageError, match="run the printed SQL"):
        compiler.admin_target(pg_policy, ADMIN_URL, None, engine="spark")
    with pytest.raises(UsageError, match="no postgres source"):
        compiler.admin_target(saferoom.load_policy(room.policy), ADMIN_URL, None)


def test_an_unknown_engine_is_a_usage_error_before_anything_opens(pg_policy: saferoom.Policy) -> None:
    with pytest.raises(UsageError, match="postgres and spark"):
        compiler.script(pg_policy, "oracle")
