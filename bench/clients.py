"""Clients other than the Python one, against the Python client on the same gateway in the same run.

R: 1M rows x 6 columns into a data.frame with the R package in clients/r (DBI's dbGetQuery; the gateway's
`vectors` format), timed inside Rscript, against the Python client's to_pandas() of the same query, in
alternating rounds (target: R at least 0.5x the Python client's throughput).

Uses the data of bench/guard.py (built on first run). Usage: python bench/clients.py [--repeat N]
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

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from guard import build

import saferoom
from saferoom.client import RemoteSession
from tests.gateway_helpers import Server, free_port

ROOT = Path(__file__).parent.parent
QUERY = "select order_id, customer_id, amount, region, created_at, amount > 500 as large from orders_1m"
R_SCRIPT = """
library(DBI)
con <- dbConnect(saferoom::saferoom())
start <- Sys.time()
frame <- dbGetQuery(con, Sys.getenv("BENCH_QUERY"))
seconds <- as.numeric(Sys.time() - start, units = "secs")
stopifnot(is.data.frame(frame), ncol(frame) == 6)
cat(nrow(frame), seconds, "\\n")
"""


def r_seconds(url: str, token: str, library: Path) -> tuple[int, float]:
    env = {**os.environ, "SAFEROOM_URL": url, "SAFEROOM_TOKEN": token, "R_LIBS": str(library), "BENCH_QUERY": QUERY}
    done = subprocess.run(["Rscript", "-e", R_SCRIPT], env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"Rscript failed: {done.stderr[-2000:]}")
    rows, seconds = done.stdout.split()
    return int(rows), float(seconds)


def python_seconds(session: RemoteSession) -> tuple[int, float]:
    start = time.perf_counter()
    frame = session.query(QUERY).to_pandas()
    return len(frame), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if shutil.which("Rscript") is None:
        sys.exit("Rscript is not installed (see .ci/run for the Debian packages)")
    policy = build(1_000_000)
    with tempfile.TemporaryDirectory() as folder:
        library = Path(folder) / "library"
        library.mkdir()
        subprocess.run(["R", "CMD", "INSTALL", f"--library={library}", str(ROOT / "clients" / "r")],
                       capture_output=True, check=True)
        server = Server(policy, Path(folder), free_port(), Path(folder) / "server.log").start()
        try:
            token = server.token("sam")
            with RemoteSession(server.url, token) as session:
                r_runs, python_runs, ratios = [], [], []
                for i in range(args.repeat):
                    order = ("r", "python") if i % 2 == 0 else ("python", "r")
                    timed = {name: r_seconds(server.url, token, library) if name == "r" else python_seconds(session)
                             for name in order}
                    assert timed["r"][0] == timed["python"][0], timed
                    r_runs.append(timed["r"][1])
                    python_runs.append(timed["python"][1])
                    ratios.append(timed["python"][1] / timed["r"][1])
                rows = timed["r"][0]
        finally:
            server.stop()
    r, python = statistics.median(r_runs), statistics.median(python_runs)
    print(f"saferoom {saferoom.__version__}: {rows:,} rows x 6 columns from the gateway, median of {args.repeat}")
    print(f"R data.frame (dbGetQuery) {r:.2f} s ({rows / r / 1e6:.2f} M rows/s), "
          f"Python to_pandas() {python:.2f} s ({rows / python / 1e6:.2f} M rows/s): "
          f"R / Python throughput {statistics.median(ratios):.2f} (target >= 0.5)")


if __name__ == "__main__":
    main()
