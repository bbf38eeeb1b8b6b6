"""pandas.read_sql through the SQLAlchemy dialect against the Python client's to_pandas(), same query, same run.

1M rows x 6 columns, embedded and through a gateway on this machine. Prints each median and the speed of
read_sql as a fraction of to_pandas() (target >= 0.8), from pairs timed back to back (bench/timing.py).

Uses the data of bench/guard.py (built on first run). Usage: python bench/clients.py [--repeat 5] [--rows N]

On the 2-core development machine: embedded 0.15, gateway 0.25. read_sql cannot reach to_pandas() through
PEP 249: pandas builds its frame from a million Python row tuples (DataFrame.from_records alone takes longer
than the whole of to_pandas()), after each value became a Python object; to_pandas() converts Arrow
columns at once.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from guard import build
from timing import paired_medians

import saferoom
from saferoom.session import SessionProtocol
from tests.gateway_helpers import Server, free_port

SQL = "select order_id, customer_id, amount, region, created_at, amount * 2 as doubled from orders_1m"


def compare(label: str, session: SessionProtocol, engine: sa.Engine, repeat: int) -> None:
    rows = len(session.query(SQL).to_pandas())

    def client() -> object:
        return session.query(SQL).to_pandas()

    def read_sql() -> object:
        return pd.read_sql(SQL, engine)

    assert len(pd.read_sql(SQL, engine)) == rows
    read_s, client_s, ratio = paired_medians(read_sql, client, repeat)
    print(f"{label:9} {rows:,} rows  read_sql {read_s:6.2f} s  to_pandas() {client_s:6.2f} s  "
          f"read_sql speed / to_pandas() = {1 / ratio:.2f} (target >= 0.8)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of bench/guard.py's `orders` (unused here)")
    args = parser.parse_args()
    policy = build(args.rows)
    with saferoom.connect(policy, user="sam") as session:
        engine = sa.create_engine(f"saferoom:///{policy}?user=sam")
        compare("embedded", session, engine, args.repeat)
        engine.dispose()
    with tempfile.TemporaryDirectory() as folder:
        state = Path(folder) / "state"
        server = Server(policy, state, free_port(), Path(folder) / "server.log").start()
        try:
            token = server.token("sam")
            with saferoom.connect(url=server.url, token=token) as remote:
                engine = sa.create_engine(f"saferoom+http://:{token}@127.0.0.1:{server.port}")
                compare("gateway", remote, engine, args.repeat)
                engine.dispose()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
