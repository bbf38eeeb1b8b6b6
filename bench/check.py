"""`saferoom check` throughput against grep and Presidio, on the same generated files, in one run.

Generates a CSV (default 1 GB) and a Parquet file (default 200 MB) of synthetic customer-like records in
which about 1 row in 100 carries PII (an email, a card number, an SSN or a phone number), then times:
saferoom's check, `grep -cP` with a comparable pattern set, and Presidio's analyzer with pattern
recognizers only, offline, on a sample (it is too slow for the whole file; its MB/s is what is compared).

Usage: python bench/check.py [--csv-mb 1000] [--parquet-mb 200] [--presidio-python PATH]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).parent.parent))

import saferoom.check as airlock

DATA = Path(__file__).parent / "data" / "check"
GREP = (r"\b(?:\d{4}[ -]){3}\d{4}\b|\b\d{13,19}\b|\b\d{3}-\d{2}-\d{4}\b|[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"
        r"|\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4}|\b[A-Z]{2}\d{2}[A-Z0-9]{11,30}\b|\b(?:\d{1,3}\.){3}\d{1,3}\b|AKIA[A-Z0-9]{16}"
        r"|-----BEGIN [A-Z ]*PRIVATE KEY-----|[a-z]+://[^\s:@/]+:[^\s@/]+@|(?i)bearer\s+[A-Za-z0-9._-]{20,}")

PRESIDIO = r"""
import sys, time
import spacy
from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
from presidio_analyzer.nlp_engine import SpacyNlpEngine
from presidio_analyzer.predefined_recognizers import (CreditCardRecognizer, EmailRecognizer, IbanRecognizer,
    IpRecognizer, PhoneRecognizer, UsSsnRecognizer)
registry = RecognizerRegistry()
for r in (CreditCardRecognizer(), EmailRecognizer(), IbanRecognizer(), IpRecognizer(), PhoneRecognizer(), UsSsnRecognizer()):
    registry.add_recognizer(r)
nlp = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": "en"}])
nlp.nlp = {"en": spacy.blank("en")}  # offline: a blank pipeline, so only the pattern recognizers work
analyzer = AnalyzerEngine(registry=registry, nlp_engine=nlp, supported_languages=["en"])
lines = open(sys.argv[1], encoding="utf-8").read().splitlines()
start = time.perf_counter()
size = 0
for line in lines:
    for cell in line.split(","):
        analyzer.analyze(text=cell, language="en")
        size += len(cell) + 1
print(size / (time.perf_counter() - start) / 1e6)
"""


def records(rows: int, rng: np.random.Generator) -> pa.Table:
    ids = np.arange(rows)
    pii = rng.random(rows) < 0.01
    kinds = rng.integers(0, 4, rows)
    note = np.where(~pii, "order shipped on time; no issue reported by the carrier",
                    np.array(["contact jane.roe@gmail.com", "card 4539 1488 0343 6467",
                                                      "ssn 212-67-8910", "call (212) 456-7890"])[kinds])
    return pa.table({
        "order_id": pa.array(ids),
        "sku": pa.array(np.char.add("SKU-", (ids % 99991).astype(str))),
        "amount": pa.array(np.round(rng.random(rows) * 500, 2)),
        "region": pa.array(np.array(["EU", "US", "APAC"])[ids % 3]),
        "note": pa.array(note),
    })


def make(csv_mb: int, parquet_mb: int) -> tuple[Path, Path]:
    DATA.mkdir(parents=True, exist_ok=True)
    csv_path, parquet_path = DATA / f"orders-{csv_mb}mb.csv", DATA / f"orders-{parquet_mb}mb.parquet"
    rng = np.random.default_rng(5)
    if not csv_path.exists():
        with pyarrow.csv.CSVWriter(str(csv_path), records(10, rng).schema) as writer:
            while csv_path.stat().st_size < csv_mb * 1e6:
                writer.write_table(records(500_000, rng))
    if not parquet_path.exists():
        rows = 0
        with pq.ParquetWriter(parquet_path, records(10, rng).schema, compression="zstd") as writer:
            while rows == 0 or parquet_path.stat().st_size < parquet_mb * 1e6:
                writer.write_table(records(2_000_000, rng))
                rows += 1
    return csv_path, parquet_path


def mb_per_s(path: Path, seconds: float) -> float:
    return path.stat().st_size / seconds / 1e6


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv-mb", type=int, default=1000)
    parser.add_argument("--parquet-mb", type=int, default=200)
    parser.add_argument("--presidio-python", default=None, help="A Python with presidio-analyzer and spaCy installed.")
    args = parser.parse_args()
    csv_path, parquet_path = make(args.csv_mb, args.parquet_mb)
    ours_csv = timed(lambda: airlock.check(csv_path))
    ours_parquet = timed(lambda: airlock.check(parquet_path))
    grep = shutil.which("grep")
    grep_csv = timed(lambda: subprocess.run([grep, "-cP", GREP, str(csv_path)], capture_output=True, check=False)) if grep else float("nan")
    presidio = _presidio(args.presidio_python, csv_path)
    csv_rows = sum(1 for _ in csv_path.open("rb")) - 1
    parquet_rows = pq.ParquetFile(parquet_path).metadata.num_rows
    print(f"{'':<36}{'seconds':>9}{'MB/s':>9}{'rows/s':>13}")
    print(f"{'saferoom check, ' + csv_path.name:<36}{ours_csv:>9.1f}{mb_per_s(csv_path, ours_csv):>9.1f}{csv_rows / ours_csv:>13,.0f}")
    print(f"{'saferoom check, ' + parquet_path.name:<36}{ours_parquet:>9.1f}{mb_per_s(parquet_path, ours_parquet):>9.1f}"
          f"{parquet_rows / ours_parquet:>13,.0f}  (MB/s of the zstd-compressed file)")
    print(f"{'grep -cP, ' + csv_path.name:<36}{grep_csv:>9.1f}{mb_per_s(csv_path, grep_csv):>9.1f}{csv_rows / grep_csv:>13,.0f}")
    if presidio == presidio:
        print(f"{'Presidio (patterns only), sample':<36}{'':>9}{presidio:>9.3f}")
        print(f"saferoom / Presidio throughput: {mb_per_s(csv_path, ours_csv) / presidio:,.0f}x (target >= 1000x)")
    else:
        print("Presidio: not measured (pass --presidio-python with presidio-analyzer and spaCy installed)")
    print(f"saferoom / grep time on the CSV: {ours_csv / grep_csv:.2f}x (target <= 3x)")


def _presidio(python: str | None, csv_path: Path) -> float:
    if not python:
        return float("nan")
    sample = DATA / "presidio-sample.csv"
    with csv_path.open() as src:
        sample.write_text("".join(src.readline() for _ in range(2000)))
    script = DATA / "presidio_run.py"
    script.write_text(PRESIDIO)
    done = subprocess.run([python, str(script), str(sample)], capture_output=True, text=True, check=False,
                          env={"HF_HUB_OFFLINE": "1", "TLDEXTRACT_CACHE": str(DATA / "tld"), "PATH": "/usr/bin:/bin"})
    try:
        return float(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        print("Presidio failed:", done.stderr.strip().splitlines()[-1:] or done.stdout)
        return float("nan")


if __name__ == "__main__":
    main()
