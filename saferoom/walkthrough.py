"""The `saferoom demo` walkthrough: what an analyst and an investigator each see."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

import saferoom
from saferoom.demo import DemoSize, serve_build, write_demo
from saferoom.policy import load_policy
from saferoom.split import build

STEPS = [
    ("alice", "An analyst sees customers with identifiers tokenized and quasi-identifiers coarsened.",
     "select customer_id, name, email, birth_date, zip, segment from customers order by segment, birth_date limit 5"),
    ("alice", "Tokens are deterministic, so joins and COUNT(DISTINCT) still work. Her row filter keeps her to EU orders.",
     ("select region, c.segment, count(distinct o.customer_id) as customers, sum(amount) as revenue\n"
      "from orders o join customers c using (customer_id) group by all order by revenue desc")),
    ("ivan", "An investigator sees names and birth dates, and card numbers masked to the last four digits.",
     "select c.name, c.birth_date, k.pan from customers c join cards k using (customer_id) order by k.card_id limit 5"),
    ("alice", "The analyst asks for card numbers. The guard refuses and says why, and who may see them.",
     "select customer_id, pan from cards"),
]


def run(folder: Path, customers: int, out: Console) -> None:
    started = time.perf_counter()
    with out.status("Generating a synthetic fintech database (customers, cards, orders)..."):
        policy = write_demo(folder, DemoSize(customers=customers))
    out.print(f"Wrote {folder / 'prod.duckdb'} and the policy {policy} in {time.perf_counter() - started:.1f}s.\n")
    sessions = {user: saferoom.connect(policy, user=user) for user in ("alice", "ivan")}
    try:
        for user, story, sql in STEPS:
            _step(sessions[user], story, sql, out)
        _catalog(sessions["alice"], out)
    finally:
        for session in sessions.values():
            session.close()
    _split(policy, out)
    out.print("Try it yourself:")
    out.print(f"  saferoom query --policy {policy} --user alice \"select segment, count(*) from prod.customers group by 1\"")
    out.print(f"  saferoom explain --policy {policy} --user alice \"select name, zip from analytics.customers\"")


def _step(session: saferoom.SessionProtocol, story: str, sql: str, out: Console) -> None:
    if story:
        out.rule(f"{session.user} (role {session.role})")
        out.print(story)
    out.print("\n".join(f"  {line}" for line in escape(sql).splitlines()), style="cyan")
    try:
        table = session.query(sql).to_arrow()
    except saferoom.QueryRejected as exc:
        out.print(f"[red]Refused:[/] {escape(str(exc))}\n")
        return
    view = Table(*table.column_names)
    for row in table.to_pylist():
        view.add_row(*(_short(v) for v in row.values()))
    out.print(view)


SPLIT_QUESTION = ("select c.segment, count(distinct o.customer_id) as buyers, sum(o.amount) as revenue\n"
                  "from {0}orders o join {0}customers c using (customer_id) group by 1 order by 1")


def _split(policy: Path, out: Console) -> None:
    out.rule("The split: saferoom build analytics")
    out.print("A closed analytics database: identifiers tokenized, quasi-identifiers coarsened to year and first zip "
              "digit, card numbers gone, groups smaller than 5 suppressed. Then one line in the policy serves it.")
    manifest = build(load_policy(policy), "analytics")
    for table in manifest.tables:
        k = table.k_anonymity
        note = f", {k['rows_suppressed']} suppressed for k={k['k']}" if k else ""
        out.print(f"  {table.table} → analytics.{table.name}: {table.rows_out} of {table.rows_in} rows{note}")
    out.print(f"  fingerprints of {manifest.fingerprints['values']} removed values in {manifest.fingerprints['file']}\n")
    serve_build(policy)
    with saferoom.connect(policy, user="alice") as session:
        for prefix, where in (("prod.", "production, through the guard"), ("analytics.", "the analytics database")):
            out.print(f"The same question asked of {where}:")
            _step(session, "", SPLIT_QUESTION.format(prefix), out)


def _catalog(session: saferoom.SessionProtocol, out: Console) -> None:
    out.rule("What alice may query (saferoom tables)")
    view = Table("table", "column", "alice gets", "why")
    for info in session.tables():
        for column in info.columns:
            view.add_row(info.name, column.name, column.action, column.reason)
    out.print(view)


def _short(value: object) -> str:
    text = "" if value is None else str(value)
    return text[:16] + "…" if len(text) > 20 else text
