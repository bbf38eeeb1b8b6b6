"""`saferoom check` against `grep -cP`, Presidio and detect-secrets, on the same generated files, in one run.

Generates a CSV (default 1 GB) and a Parquet file (default 200 MB) of synthetic customer-like records in
which about 1 row in 100 carries PII (an email, a card number, an SSN or a phone number), then measures:

- saferoom's check of each file in a fresh process: seconds, MB/s and peak memory (its own ru_maxrss);
- `grep -cP` with a comparable pattern set on the CSV: the floor (it only reads and matches);
- Presidio (presidio-analyzer) with its pattern recognizers only, no NLP engine and no spaCy model: each
  recognizer's ``analyze`` called directly on every cell of a sample of the CSV (it is far too slow for the
  whole file; its MB/s on the sample is extrapolated, and the script says so);
- detect-secrets' default plugins scanning a sample of the CSV as a file (same: extrapolated);
- recall and false positives of all three on the labelled corpus in tests/fixtures/check_corpus.

The peers are bench-only: `pip install -e .[bench]`.

Usage: python bench/check.py [--csv-mb 1000] [--parquet-mb 200] [--data DIR] [--sample-mb 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).parent.parent))

import saferoom.check as airlock

DATA = Path(__file__).parent / "data" / "check"
CORPUS = Path(__file__).parent.parent / "tests" / "fixtures" / "check_corpus"
GREP = (r"\b(?:\d{4}[ -]){3}\d{4}\b|\b\d{13,19}\b|\b\d{3}-\d{2}-\d{4}\b|[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"
        r"|\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4}|\b[A-Z]{2}\d{2}[A-Z0-9]{11,30}\b|\b(?:\d{1,3}\.){3}\d{1,3}\b|AKIA[A-Z0-9]{16}"
        r"|-----BEGIN [A-Z ]*PRIVATE KEY-----|[a-z]+://[^\s:@/]+:[^\s@/]+@|(?i)bearer\s+[A-Za-z0-9._-]{20,}")
PRESIDIO_ENTITIES = {"CREDIT_CARD": "card-number", "EMAIL_ADDRESS": "email", "IBAN_CODE": "iban", "IP_ADDRESS": "ip-address",
                     "PHONE_NUMBER": "phone", "US_SSN": "ssn"}
# The child's own peak: VmHWM starts afresh at exec, while ru_maxrss keeps the peak of the process it was forked from.
OURS = """
import re, sys, time
import saferoom.check as airlock
start = time.perf_counter()
report = airlock.check(sys.argv[1])
peak = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
print(time.perf_counter() - start, peak, sum(report.counts.values()))
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


def make(csv_mb: int, parquet_mb: int, data: Path) -> tuple[Path, Path | None]:
    data.mkdir(parents=True, exist_ok=True)
    csv_path, parquet_path = data / f"orders-{csv_mb}mb.csv", data / f"orders-{parquet_mb}mb.parquet"
    rng = np.random.default_rng(5)
    if not csv_path.exists():
        with pyarrow.csv.CSVWriter(str(csv_path), records(10, rng).schema) as writer:
            while csv_path.stat().st_size < csv_mb * 1e6:
                writer.write_table(records(500_000, rng))
    if parquet_mb and not parquet_path.exists():
        rows = 0
        with pq.ParquetWriter(parquet_path, records(10, rng).schema, compression="zstd") as writer:
            while rows == 0 or parquet_path.stat().st_size < parquet_mb * 1e6:
                writer.write_table(records(2_000_000, rng))
                rows += 1
    return csv_path, parquet_path if parquet_mb else None


def mb_per_s(size: int, seconds: float) -> float:
    return size / seconds / 1e6


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def ours(path: Path) -> tuple[float, int, int]:
    """saferoom's check in a fresh process: seconds, peak bytes, findings."""
    done = subprocess.run([sys.executable, "-c", OURS, str(path)], capture_output=True, text=True, check=True)
    seconds, peak, found = done.stdout.split()
    return float(seconds), int(peak), int(found)


def sample(csv_path: Path, megabytes: float) -> Path:
    """The CSV's first ``megabytes``, cut at a line end."""
    out = csv_path.parent / f"sample-{megabytes}mb.csv"
    with csv_path.open("rb") as src:
        block = src.read(int(megabytes * 1e6))
    out.write_bytes(block[:block.rfind(b"\n") + 1])
    return out


def presidio_recognizers() -> list[object]:
    """Presidio's pattern recognizers for the kinds compared, used without an NLP engine (no spaCy model)."""
    from presidio_analyzer.predefined_recognizers import (
        CreditCardRecognizer,
        EmailRecognizer,
        IbanRecognizer,
        IpRecognizer,
        PhoneRecognizer,
        UsSsnRecognizer,
    )

    logging.getLogger("tldextract").setLevel(logging.CRITICAL)  # offline: the suffix list snapshot is used
    return [CreditCardRecognizer(), EmailRecognizer(), IbanRecognizer(), IpRecognizer(), PhoneRecognizer(), UsSsnRecognizer()]


def presidio_found(recognizers: list[object], text: str) -> set[str]:
    found = set()
    for recognizer in recognizers:
        for result in recognizer.analyze(text, recognizer.supported_entities, None):  # type: ignore[attr-defined]
            found.add(PRESIDIO_ENTITIES.get(result.entity_type, result.entity_type))
    return found


def presidio_speed(path: Path) -> float:
    """MB/s over every cell of the sample, as a table's cells would be checked."""
    recognizers = presidio_recognizers()
    presidio_found(recognizers, "warm up 212-67-8910")
    cells = [cell for line in path.read_text().splitlines() for cell in line.split(",")]
    return mb_per_s(path.stat().st_size, timed(lambda: [presidio_found(recognizers, c) for c in cells]))


def detect_secrets_speed(path: Path) -> float:
    from detect_secrets import SecretsCollection
    from detect_secrets.settings import default_settings

    def scan() -> None:
        with default_settings():
            SecretsCollection().scan_file(str(path))

    return mb_per_s(path.stat().st_size, timed(scan))


def corpus() -> list[dict[str, object]]:
    return [json.loads(line) for name in ("presidio.jsonl", "gitleaks.jsonl", "synthetic.jsonl")
            for line in (CORPUS / name).read_text().splitlines() if line.strip()]


def corpus_scores() -> dict[str, dict[str, Counter[str]]]:
    """tool -> entity -> tp/fn/fp/tn, each case written as one table cell (secrets: as one line for detect-secrets)."""
    from detect_secrets.core.scan import scan_line
    from detect_secrets.settings import default_settings

    cases = corpus()
    found: dict[int, set[str]] = {}
    for f in airlock.check(pl.DataFrame({"text": [str(c["text"]) for c in cases]}), min_cell=0).findings:
        found.setdefault(int(f.location.split(",")[0].removeprefix("row ")), set()).update({f.kind, f"rule:{f.rule_id}"})
    recognizers = presidio_recognizers()
    scores: dict[str, dict[str, Counter[str]]] = {"saferoom": {}, "presidio": {}, "detect-secrets": {}}
    with default_settings():
        for row, case in enumerate(cases, 1):
            entity, text = str(case["entity"]), str(case["text"])
            if entity == "secret":
                _score(scores["detect-secrets"], case, any(True for _ in scan_line(text)))
            else:
                _score(scores["presidio"], case, entity in presidio_found(recognizers, text))
            _score(scores["saferoom"], case, _ours_flagged(case, found.get(row, set())))
    return scores


def _ours_flagged(case: dict[str, object], kinds: set[str]) -> bool:
    """As tests/test_check_corpus.py counts: a gitleaks negative written for one rule is a false positive of that rule only."""
    if case["entity"] == "secret" and not case["positive"] and case.get("rule"):
        return f"rule:{case['rule']}" in kinds
    return str(case["entity"]) in kinds


def _score(table: dict[str, Counter[str]], case: dict[str, object], hit: bool) -> None:
    outcome = ("tp" if hit else "fn") if case["positive"] else ("fp" if hit else "tn")
    table.setdefault(str(case["entity"]), Counter())[outcome] += 1


def print_corpus(scores: dict[str, dict[str, Counter[str]]]) -> None:
    print(f"\n{'corpus (recall, false positives)':<34}" + "".join(f"{tool:>22}" for tool in scores))
    for entity in sorted(scores["saferoom"]):
        cells = []
        for tool in scores:
            c = scores[tool].get(entity)
            cells.append(f"{c['tp'] / max(1, c['tp'] + c['fn']):>15.1%} {c['fp']:>3} fp" if c else f"{'-':>22}")
        print(f"{entity:<34}" + "".join(f"{cell:>22}" for cell in cells))
    print("(secrets: 291 of the 300 negatives are gitleaks' per-rule negatives; saferoom's false positives count its"
          " finding by that rule, as the test suite does; detect-secrets' count any finding, its plugins having no such ids)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--csv-mb", type=int, default=1000)
    parser.add_argument("--parquet-mb", type=int, default=200, help="0 skips the Parquet file")
    parser.add_argument("--sample-mb", type=float, default=2.0, help="the slice of the CSV the peers are timed on")
    parser.add_argument("--data", type=Path, default=DATA, help="where the generated files are kept")
    args = parser.parse_args()
    # This folder holds requests.py (the airlock's own benchmark), which would shadow the `requests` library
    # that Presidio imports: the script's folder is taken off the path before the peers are imported.
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]
    csv_path, parquet_path = make(args.csv_mb, args.parquet_mb, args.data)
    size = csv_path.stat().st_size
    seconds, peak, found = ours(csv_path)
    grep = shutil.which("grep")
    grep_seconds = timed(lambda: subprocess.run([grep, "-cP", GREP, str(csv_path)], capture_output=True, check=False)) if grep else float("nan")
    piece = sample(csv_path, args.sample_mb)
    presidio, secrets = presidio_speed(piece), detect_secrets_speed(piece)
    speed = mb_per_s(size, seconds)
    print(f"{'':<44}{'seconds':>9}{'MB/s':>10}{'peak MB':>9}")
    print(f"{'saferoom check, ' + csv_path.name:<44}{seconds:>9.1f}{speed:>10.1f}{peak / 1e6:>9.0f}  ({found:,} findings)")
    if parquet_path is not None:
        p_seconds, p_peak, _ = ours(parquet_path)
        rows = pq.ParquetFile(parquet_path).metadata.num_rows
        print(f"{'saferoom check, ' + parquet_path.name:<44}{p_seconds:>9.1f}{mb_per_s(parquet_path.stat().st_size, p_seconds):>10.1f}"
              f"{p_peak / 1e6:>9.0f}  ({rows / p_seconds:,.0f} rows/s; MB/s of the zstd-compressed file)")
    print(f"{'grep -cP, ' + csv_path.name:<44}{grep_seconds:>9.1f}{mb_per_s(size, grep_seconds):>10.1f}")
    for name, peer in (("Presidio, pattern recognizers only", presidio), ("detect-secrets, default plugins", secrets)):
        print(f"{name + f', {args.sample_mb:g} MB sample':<44}{size / peer / 1e6:>9.0f}{peer:>10.3f}  (seconds extrapolated to the whole file)")
    print(f"\nsaferoom / Presidio throughput: {speed / presidio:,.0f}x (target >= 1000x)")
    print(f"saferoom / detect-secrets throughput: {speed / secrets:,.0f}x")
    print(f"saferoom / grep -cP time: {seconds / grep_seconds:.2f}x (target <= 3x)")
    print(f"saferoom peak memory on {size / 1e9:.2f} GB: {peak / 1e6:.0f} MB (target <= 300 MB)")
    print_corpus(corpus_scores())


if __name__ == "__main__":
    main()
