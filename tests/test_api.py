"""The public API is curated; this fails when it drifts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import saferoom
from tests.gateway_helpers import SERVE

EXPECTED = {
    "AccessDenied", "Action", "AuditError", "AuthError", "BuildError", "ColumnInfo", "Decision", "LimitExceeded", "NotFound", "PackagesError", "PackagesRefused", "RemoteSession", "EngineError", "OutputColumn", "Policy",
    "PolicyError", "QueryCancelled", "QueryRejected", "Refusal", "Result", "RequestRefused", "RoomError", "TooLarge", "SaferoomError", "Session", "SessionProtocol", "StateConflict", "TableInfo", "UsageError",
    "__version__", "connect", "load_policy",
}


def test_public_api_does_not_drift() -> None:
    assert set(saferoom.__all__) == EXPECTED
    for name in saferoom.__all__:
        assert hasattr(saferoom, name), name


def test_errors_share_one_root_and_each_is_exported() -> None:
    from saferoom.errors import ERRORS

    for name, cls in ERRORS.items():
        assert getattr(saferoom, name) is cls and issubclass(cls, saferoom.SaferoomError), name


def test_connect_needs_a_user(room, monkeypatch) -> None:
    monkeypatch.delenv("SAFEROOM_USER", raising=False)
    try:
        saferoom.connect(room.policy)
    except saferoom.UsageError as exc:
        assert "SAFEROOM_USER" in str(exc)
    else:
        raise AssertionError("connect without a user must fail")


def test_connect_with_nothing_set_up_says_how_to_log_in(tmp_path: Path, monkeypatch) -> None:
    for name in ("SAFEROOM_URL", "SAFEROOM_SOCKET", "SAFEROOM_TOKEN", "SAFEROOM_POLICY", "SAFEROOM_USER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))  # no saved login
    monkeypatch.chdir(tmp_path)  # no saferoom.yaml here
    with pytest.raises(saferoom.UsageError, match="saferoom login") as caught:
        saferoom.connect()
    assert "connect('saferoom.yaml', user='alice')" in str(caught.value)


def test_the_cli_asks_for_a_user_in_its_own_words(room, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFEROOM_")}
    done = subprocess.run([sys.executable, "-c", SERVE, "query", "-p", str(room.policy), "select 1"],
                          capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 2 and "-u alice" in done.stderr and "user=" not in done.stderr


def test_connect_reads_the_environment(room, monkeypatch) -> None:
    monkeypatch.setenv("SAFEROOM_POLICY", str(room.policy))
    monkeypatch.setenv("SAFEROOM_USER", "ivan")
    with saferoom.connect() as session:
        assert (session.user, session.role) == ("ivan", "investigator")


def test_explain_names_actions_and_threats(alice: saferoom.Session) -> None:
    explanation = alice.explain("select name, segment, count(*) as n from customers group by all")
    by_name = {c.name: c for c in explanation.columns}
    assert [s.action for s in by_name["name"].sources] == ["tokenize"]
    assert by_name["name"].sources[0].threats == ("reidentification",)
    assert [s.action for s in by_name["segment"].sources] == ["allow"]
    assert by_name["n"].sources == ()
    refused = alice.explain("select pan from cards")
    assert not refused.allowed and refused.refusal is not None and "card-theft" in refused.refusal.message
    assert (refused.refusal.type, refused.refusal.column, refused.refusal.allowed_roles) == ("QueryRejected", "prod.cards.pan", ("investigator",))


@pytest.mark.parametrize("sql, hint", [
    ("select ammount from prod.orders", "Did you mean `amount`?"),
    ("select o.ammount, o.order_id from orders o", "Did you mean `amount`?"),
    ("select internal_scor from customers", "unknown column `internal_scor`. Run"),  # unclassified: no hint at it
    ("select internal_score from customers", "unknown column `internal_score`. Run"),  # as if it did not exist
    ("select pam from cards", "unknown column `pam`. Run"),  # denied: never offered
])
def test_an_unknown_column_gets_the_closest_one_the_role_may_see(alice: saferoom.Session, sql: str, hint: str) -> None:
    with pytest.raises(saferoom.QueryRejected) as caught:
        alice.query(sql)
    assert hint in str(caught.value) and "order_id" not in str(caught.value) and caught.value.column is None


def test_tables_show_the_rule_for_every_listed_column(alice: saferoom.Session) -> None:
    catalog = {t.name: t for t in alice.tables()}
    assert set(catalog) == {"prod.customers", "prod.cards", "prod.orders"}
    pan = {c.name: c for c in catalog["prod.cards"].columns}["pan"]
    assert (pan.action, pan.tag, pan.threats) == ("deny", "pci", ("card-theft",))
    assert "internal_score" not in {c.name for c in catalog["prod.customers"].columns}
    assert catalog["prod.orders"].row_filter == "region = {user.region}"


@pytest.mark.parametrize("engine, module", [("spark", "pyspark"), ("postgres", "adbc_driver_postgresql")])
def test_a_missing_optional_engine_is_a_usage_error_naming_the_extra(engine: str, module: str) -> None:
    """Run where the driver cannot be imported (as after a plain `pip install saferoom`)."""
    import subprocess
    import sys

    code = (f"import sys; sys.modules[{module!r}] = None\n"
            "from saferoom.engines import require_driver\n"
            "from saferoom.errors import UsageError\n"
            f"try:\n    require_driver({engine!r})\nexcept UsageError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert f"pip install 'saferoom[{engine}]'" in done.stdout, done.stdout + done.stderr
