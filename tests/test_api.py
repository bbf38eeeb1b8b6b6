"""The public API is curated; this fails when it drifts."""

from __future__ import annotations

import pytest

import saferoom

EXPECTED = {
    "AccessDenied", "Action", "AuditError", "AuthError", "BuildError", "ColumnInfo", "Decision", "LimitExceeded", "NotFound", "PackagesError", "PackagesRefused", "RemoteSession", "EngineError", "OutputColumn", "Policy",
    "PolicyError", "QueryCancelled", "QueryRejected", "Refusal", "Result", "TooLarge", "SaferoomError", "Session", "SessionProtocol", "TableInfo", "UsageError",
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
