"""How a decision and a result read: a short table for print, escaped HTML for notebooks."""

from __future__ import annotations

import pyarrow as pa

import saferoom
from saferoom.decision import ColumnInfo, Decision, OutputColumn, Refusal, TableInfo
from saferoom.result import Result

SCRIPT = "<script>alert(1)</script>"


def test_print_of_a_decision_is_a_short_table(alice: saferoom.Session) -> None:
    text = str(alice.explain("select name as who, region, count(*) as n from prod.orders "
                             "join prod.customers using (customer_id) group by 1, 2"))
    lines = text.splitlines()
    assert lines[0] == "allowed for alice as role analyst"
    assert lines[1].split() == ["column", "from", "action", "reason"]
    assert lines[2].split()[:3] == ["who", "name", "tokenize"] and "tag pii (reidentification)" in lines[2]
    assert lines[4].split() == ["n", "computed"]
    assert "rows of prod.orders are filtered: region = {user.region}" in lines
    assert len(text) < 600 and "ColumnInfo(" not in text


def test_print_of_a_refusal_is_one_line(alice: saferoom.Session) -> None:
    text = str(alice.explain("select pan from prod.cards"))
    assert text.startswith("refused for alice as role analyst: ") and "card-theft" in text and "\n" not in text


def hostile_decision() -> Decision:
    source = ColumnInfo(SCRIPT, "VARCHAR", "allow", SCRIPT, (), f"reason {SCRIPT}")
    return Decision("u<b>", "r&d", "select 1", "allowed", None, (TableInfo("t", (source,), f"x = '{SCRIPT}'"),),
                    (OutputColumn(SCRIPT, "VARCHAR", (source,)),), notes=(SCRIPT,))


def test_html_of_a_decision_escapes_everything() -> None:
    page = hostile_decision()._repr_html_()
    assert "<script>" not in page and "<b>" not in page
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 5 and "r&amp;d" in page


def test_html_of_a_refusal_escapes_its_message() -> None:
    refused = Decision("u", "r", "q", "refused", Refusal("QueryRejected", SCRIPT))
    assert "<script>" not in refused._repr_html_() and "&lt;script&gt;" in refused._repr_html_()


def test_html_of_a_result_escapes_names_values_and_notices() -> None:
    table = pa.table({SCRIPT: [SCRIPT, None, "ok"]})
    result = Result(table.to_reader(), max_rows=2, notices=(f"rows of t are filtered: {SCRIPT}",), role="r")
    page = result._repr_html_()
    assert "<script>" not in page and page.count("&lt;script&gt;") == 3
    assert "<td>null</td>" in page and "2 rows" in page and "cut at max_rows=2" in page


def test_html_of_a_long_result_shows_its_first_rows(ivan: saferoom.Session) -> None:
    page = ivan.query("select order_id from prod.orders order by 1 limit 50")._repr_html_()
    assert page.count("<tr>") == 21 and "50 rows, the first 20 shown" in page
