"""pandas.read_sql through the SQLAlchemy dialect and through ADBC (the gateway's Flight SQL endpoint), and an R
data.frame through the R package, against the Python client's to_pandas(), same query, same run.

1M rows x 6 columns. read_sql embedded and through a gateway on this machine: each median and the speed of
read_sql as a fraction of to_pandas() (target >= 0.8), from pairs timed back to back (bench/timing.py).
R through the same gateway (clients/r, DBI's dbGetQuery over the gateway's `vectors` body, timed inside
Rscript) against to_pandas() in alternating rounds: R's throughput as a fraction of to_pandas() (target >= 0.5).

Uses the data of bench/guard.py (built on first run).
Usage: python bench/clients.py [--repeat 5] [--rows N] [--paths embedded,gateway,adbc,r]

ADBC (read_sql over saferoom.adbc.connect(), pandas' Arrow path): 1.58 and 1.27 of to_pandas() in two runs,
with the SQLAlchemy path through the same gateway at 0.37 and 0.23 in those runs (load average 14).

On the 2-core development machine: embedded 0.15, gateway 0.25. read_sql cannot reach to_pandas() through
PEP 249: pandas builds its frame from a million Python row tuples (DataFrame.from_records alone takes longer
than the whole of to_pandas()), after each value became a Python object; to_pandas() converts Arrow
columns at once. The driver now converts a column at a time (timestamps through numpy, decimals from their
text): embedded 0.20-0.24 in a profile on a machine with a load average of 15-25, where a full run of this
script took minutes per round (to_pandas() 26 s instead of 1.5 s) and was not completed. R: 0.46 to 0.51 over three runs (e.g. R 2.43 s, to_pandas() 1.51 s: 0.46), at or just
under the target; most of what R spends is making a string per value of the tokenized key.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from guard import build
from timing import paired_medians

import saferoom
import saferoom.adbc
from saferoom.session import SessionProtocol
from tests.gateway_helpers import Server, free_port

ROOT = Path(__file__).parent.parent
SQL = "select order_id, customer_id, amount, region, created_at, amount * 2 as doubled from orders_1m"
R_SCRIPT = """
library(DBI)
con <- dbConnect(saferoom::saferoom())
start <- Sys.time()
frame <- dbGetQuery(con, Sys.getenv("BENCH_QUERY"))
seconds <- as.numeric(Sys.time() - start, units = "secs")
stopifnot(is.data.frame(frame), ncol(frame) == 6)
cat(nrow(frame), seconds, "\\n")
"""


def compare(label: str, session: SessionProtocol, connection: object, repeat: int) -> None:
    """read_sql over ``connection`` (a SQLAlchemy engine or an ADBC connection) against to_pandas()."""
    rows = len(session.query(SQL).to_pandas())

    def client() -> object:
        return session.query(SQL).to_pandas()

    def read_sql() -> object:
        return pd.read_sql(SQL, connection)  # type: ignore[call-overload]

    assert len(pd.read_sql(SQL, connection)) == rows  # type: ignore[call-overload]
    read_s, client_s, ratio = paired_medians(read_sql, client, repeat)
    print(f"{label:9} {rows:,} rows  read_sql {read_s:6.2f} s  to_pandas() {client_s:6.2f} s  "
          f"read_sql speed / to_pandas() = {1 / ratio:.2f} (target >= 0.8)")


def r_seconds(url: str, token: str, library: Path) -> tuple[int, float]:
    """Rows and seconds of dbGetQuery inside Rscript (R's start and the package's loading left out)."""
    env = {**os.environ, "SAFEROOM_URL": url, "SAFEROOM_TOKEN": token, "R_LIBS": str(library), "BENCH_QUERY": SQL}
    done = subprocess.run(["Rscript", "-e", R_SCRIPT], env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"Rscript failed: {done.stderr[-2000:]}")
    rows, seconds = done.stdout.split()
    return int(rows), float(seconds)


def python_seconds(session: SessionProtocol) -> tuple[int, float]:
    start = time.perf_counter()
    frame = session.query(SQL).to_pandas()
    return len(frame), time.perf_counter() - start


def compare_r(server: Server, token: str, session: SessionProtocol, repeat: int, folder: Path) -> None:
    if shutil.which("Rscript") is None:
        print("R        skipped: Rscript is not installed (see .ci/run for the Debian packages)")
        return
    library = folder / "r-library"
    library.mkdir()
    subprocess.run(["R", "CMD", "INSTALL", f"--library={library}", str(ROOT / "clients" / "r")], capture_output=True, check=True)
    r_runs, python_runs, ratios = [], [], []
    for i in range(repeat):
        order = ("r", "python") if i % 2 == 0 else ("python", "r")
        timed = {name: r_seconds(server.url, token, library) if name == "r" else python_seconds(session) for name in order}
        assert timed["r"][0] == timed["python"][0], timed
        r_runs.append(timed["r"][1])
        python_runs.append(timed["python"][1])
        ratios.append(timed["python"][1] / timed["r"][1])
    print(f"R         {timed['r'][0]:,} rows  data.frame {statistics.median(r_runs):6.2f} s  "
          f"to_pandas() {statistics.median(python_runs):6.2f} s  "
          f"R speed / to_pandas() = {statistics.median(ratios):.2f} (target >= 0.5)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of bench/guard.py's `orders` (unused here)")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"which of {','.join(PATHS)} to time")
    args = parser.parse_args()
    paths = set(args.paths.split(","))
    policy = build(args.rows)
    if "embedded" in paths:
        with saferoom.connect(policy, user="sam") as session:
            engine = sa.create_engine(f"saferoom:///{policy}?user=sam")
            compare("embedded", session, engine, args.repeat)
            engine.dispose()
    with tempfile.TemporaryDirectory() as folder:
        state = Path(folder) / "state"
        server = Server(policy, state, free_port(), Path(folder) / "server.log", extra=["--flight-sql", str(free_port())]).start()
        try:
            token = server.token("sam")
            with saferoom.connect(url=server.url, token=token) as remote:
                through_gateway(server, token, remote, paths, args.repeat, Path(folder))
        finally:
            server.stop()


PATHS = ("embedded", "gateway", "adbc", "r")


def through_gateway(server: Server, token: str, remote: SessionProtocol, paths: set[str], repeat: int, folder: Path) -> None:
    """read_sql through the SQLAlchemy dialect and through ADBC (Flight SQL), and R, each against to_pandas()."""
    if "gateway" in paths:
        engine = sa.create_engine(f"saferoom+http://:{token}@127.0.0.1:{server.port}")
        compare("gateway", remote, engine, repeat)
        engine.dispose()
    if "adbc" in paths:
        with saferoom.adbc.connect(server.url, token) as adbc:
            compare("adbc", remote, adbc, repeat)
    if "r" in paths:
        compare_r(server, token, remote, repeat, folder)

if __name__ == "__main__":
    main()
