"""A realistic, seeded synthetic fintech database and the policy that guards it.

Everything is generated column-wise with NumPy and Arrow (no Python loop per
row): valid-Luhn card numbers, SSNs from the issued ranges, plausible names
and emails. The same seed gives the same database, byte for byte in content.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

FIRST = ["James", "Mary", "Robert", "Patricia", "John", "Jennifer", "Michael", "Linda", "David", "Elizabeth", "William", "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas", "Sarah", "Carlos", "Maria", "Wei", "Aisha", "Lars", "Sofia", "Yuki", "Omar", "Ingrid", "Mateo", "Priya", "Noah"]
LAST = ["Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez", "Hernandez", "Lopez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore", "Jackson", "Martin", "Lee", "Chen", "Kowalski", "Nguyen", "Okafor", "Schmidt", "Rossi", "Tanaka", "Haddad", "Larsen", "Silva"]
DOMAINS = ["gmail.com", "yahoo.com", "outlook.com", "proton.me", "icloud.com", "fastmail.com"]
SEGMENTS = ["retail", "premium", "business"]
REGIONS = ["EU", "US", "APAC"]


@dataclass(frozen=True)
class DemoSize:
    customers: int = 20_000
    cards_per_customer: float = 1.25
    orders_per_customer: float = 5.0


def customers(n: int, rng: np.random.Generator) -> pa.Table:
    first = pa.array(np.array(FIRST)[rng.integers(0, len(FIRST), n)])
    last = pa.array(np.array(LAST)[rng.integers(0, len(LAST), n)])
    ids = np.arange(1, n + 1, dtype=np.int64)
    local = pc.binary_join_element_wise(pc.utf8_lower(first), pc.utf8_lower(last), _text(ids), ".")
    email = pc.binary_join_element_wise(local, pa.array(np.array(DOMAINS)[rng.integers(0, len(DOMAINS), n)]), "@")
    days = rng.integers(0, (2005 - 1940) * 365, n)
    birth = (np.datetime64("1940-01-01") + days.astype("timedelta64[D]")).astype("datetime64[D]")
    return pa.table({
        "customer_id": ids,
        "name": pc.binary_join_element_wise(first, last, " "),
        "email": email,
        "ssn": ssns(n, rng),
        "birth_date": pa.array(birth, pa.date32()),
        "zip": _digits(rng.integers(1000, 99999, n), 5),
        "segment": pa.array(np.array(SEGMENTS)[rng.choice(3, n, p=[0.7, 0.2, 0.1])]),
    })


def ssns(n: int, rng: np.random.Generator) -> pa.Array:
    """SSNs from issued ranges: area 001-899 except 666, group 01-99, serial 0001-9999."""
    area = rng.integers(1, 899, n)
    area = np.where(area == 666, 667, area)
    parts = [_digits(area, 3), _digits(rng.integers(1, 100, n), 2), _digits(rng.integers(1, 10000, n), 4)]
    return pc.binary_join_element_wise(*parts, "-")


def luhn_numbers(n: int, rng: np.random.Generator, prefix: int = 4, length: int = 16) -> pa.Array:
    """Card numbers whose last digit is the Luhn check digit."""
    body = rng.integers(0, 10, (n, length - 1))
    body[:, 0] = prefix
    weights = np.where(np.arange(length - 1)[::-1] % 2 == 0, 2, 1)
    doubled = body * weights
    total = (doubled - 9 * (doubled > 9)).sum(axis=1)
    check = (10 - total % 10) % 10
    digits = np.concatenate([body, check[:, None]], axis=1).astype(np.uint8) + ord("0")
    return pa.array(digits.view(f"S{length}").ravel().astype(str))


def cards(n: int, customer_count: int, rng: np.random.Generator) -> pa.Table:
    return pa.table({
        "card_id": np.arange(1, n + 1, dtype=np.int64),
        "customer_id": np.concatenate([np.arange(1, customer_count + 1), rng.integers(1, customer_count + 1, n - customer_count)]).astype(np.int64),
        "pan": luhn_numbers(n, rng),
    })


def orders(n: int, customer_count: int, rng: np.random.Generator) -> pa.Table:
    seconds = rng.integers(0, 3 * 365 * 86400, n)
    created = np.datetime64("2023-01-01T00:00:00") + seconds.astype("timedelta64[s]")
    cents = np.round(rng.lognormal(3.5, 1.0, n) * 100).astype(np.int64)
    return pa.table({
        "order_id": np.arange(1, n + 1, dtype=np.int64),
        "customer_id": rng.integers(1, customer_count + 1, n).astype(np.int64),
        "amount": pa.array(cents / 100.0).cast(pa.decimal128(12, 2)),
        "region": pa.array(np.array(REGIONS)[rng.choice(3, n, p=[0.5, 0.35, 0.15])]),
        "created_at": pa.array(created, pa.timestamp("us")),
    })


def make_database(path: str | Path, size: DemoSize = DemoSize(), seed: int = 7) -> Path:
    """Write the synthetic production database; replaces ``path`` atomically."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    n = size.customers
    tables = {
        "customers": customers(n, rng),
        "cards": cards(max(n, int(n * size.cards_per_customer)), n, rng),
        "orders": orders(int(n * size.orders_per_customer), n, rng),
    }
    return write_tables(path, tables)


def write_tables(path: Path, tables: dict[str, pa.Table]) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    with duckdb.connect(str(tmp)) as con:
        for name, table in tables.items():
            con.register("incoming", table)
            con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM incoming')  # names are our own constants
            con.unregister("incoming")
    os.replace(tmp, path)
    return path


POLICY = """\
version: 1
sources:                       # named connections; credentials only by reference
  prod:
    engine: duckdb
    path: prod.duckdb          # relative paths resolve against this file's folder
secrets:
  token_key: file:token.key    # references only: env:NAME or file:PATH
threats:
  card-theft: Outside attackers steal payment card data (PCI DSS)
  reidentification: A customer is re-identified from analytics data (GLBA, GDPR)
tags:
  pci: {threats: [card-theft]}
  pii: {threats: [reidentification]}
  quasi: {threats: [reidentification]}
  key: {}
tables:
  prod.customers: {customer_id: key, name: pii, email: pii, ssn: pii, birth_date: quasi, zip: quasi, segment: public}
  prod.cards: {card_id: public, customer_id: key, pan: pci}
  prod.orders: {order_id: public, customer_id: key, amount: public, region: public, created_at: public}
users:
  alice: {roles: [analyst], attributes: {region: EU}}
  ivan: {roles: [investigator]}
roles:
  analyst:
    columns: {pii: tokenize, quasi: generalize, pci: deny, key: tokenize}
    rows: {prod.orders: "region = {user.region}"}
    max_rows: 100000
  investigator:
    columns: {pii: allow, quasi: allow, pci: mask, key: allow}
  reporting:                   # what the analytics build publishes
    columns: {pii: tokenize, quasi: {action: generalize, date_unit: year, prefix: 1}, pci: deny, key: tokenize}
builds:
  analytics:
    role: reporting
    target: {engine: duckdb, path: analytics.duckdb}
    k_anonymity: {columns: [birth_date, zip], k: 5, on_violation: suppress}
"""

FRAGMENT = "analytics.duckdb.saferoom.yaml"  # what `saferoom build analytics` writes beside analytics.duckdb
SERVE_BUILD = ("""    rows: {prod.orders: "region = {user.region}"}""",
               """    rows: {prod.orders: "region = {user.region}", analytics.orders: "region = {user.region}"}""")


def serve_build(policy: Path) -> None:
    """What the security team does after the first build: include its fragment, carry the row filter."""
    text = policy.read_text().replace(*SERVE_BUILD)
    policy.write_text(text + f"includes: [{FRAGMENT}]\n")


def write_demo(folder: str | Path, size: DemoSize = DemoSize(), seed: int = 7) -> Path:
    """Create ``folder`` with prod.duckdb, saferoom.yaml and a token key; return the policy path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    make_database(folder / "prod.duckdb", size, seed)
    key = folder / "token.key"
    if not key.exists():
        key.touch(mode=0o600)
        key.write_text(secrets.token_hex(32))
    policy = folder / "saferoom.yaml"
    policy.write_text(POLICY)
    return policy


def _digits(values: np.ndarray, width: int) -> pa.Array:
    return pc.utf8_lpad(_text(values), width, "0")


def _text(values: np.ndarray) -> pa.Array:
    return pc.cast(pa.array(values), pa.string())
