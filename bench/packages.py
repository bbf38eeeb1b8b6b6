"""`saferoom packages sync` of a data-science stack against the real index, vs plain `pip download`, in one run.

Times, for the same requirements and target (Python 3.11, manylinux_2_17_x86_64), each with its own
empty cache: plain `pip download` (the baseline), a first `packages sync` into an empty mirror, a
second sync over that mirror, then an offline `pip install --isolated` of the locked set into a fresh
venv from the snapshot. Prints admitted/refused counts and the times. Needs the public index.

Usage: python bench/packages.py --vulnerabilities OSV_FOLDER_OR_ZIP [--work DIR] [REQUIREMENT ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))

import saferoom
from saferoom.errors import PackagesRefused
from saferoom.packages import sync
from saferoom.packages.resolve import pip_env

STACK = ["pandas", "scikit-learn", "matplotlib", "polars", "pyarrow", "requests", "jupyterlab"]
BANK = ["MIT", "MIT-0", "MIT-CMU", "BSD-2-Clause", "BSD-3-Clause", "0BSD", "Apache-2.0", "PSF-2.0", "Python-2.0", "ISC",
        "MPL-2.0", "Unlicense", "HPND", "Zlib"]
PYTHON, PLATFORM = "3.11", "manylinux_2_17_x86_64"
INDEX = "https://pypi.org/simple"


def policy(folder: Path, requirements: list[str], vulnerabilities: Path) -> Path:
    lines = ["version: 1", "sources: {}", "tables: {}", "packages:",
             f"  requirements: [{', '.join(requirements)}]", f'  python: ["{PYTHON}"]', f"  platforms: [{PLATFORM}]",
             f"  licenses: [{', '.join(BANK)}]", f"  vulnerabilities: {vulnerabilities.resolve()}",
             "  license_overrides:",
             "    jupyter-server-terminals: {expression: BSD-3-Clause, reason: 'the BSD-3-Clause text with"
             " \"All rights reserved.\" moved between its clauses; read and compared by hand'}"]
    path = folder / "saferoom.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def pip_download(requirements: list[str], dest: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--python-version", PYTHON,
                    "--platform", PLATFORM, "--index-url", INDEX, "--cache-dir", str(dest / "cache"), "--dest",
                    str(dest / "wheels"), "--disable-pip-version-check", *requirements], env=pip_env(), check=True)
    return time.perf_counter() - start


def timed_sync(policy_path: Path, mirror: Path) -> tuple[float, saferoom.packages.Report]:
    start = time.perf_counter()
    report = sync(saferoom.load_policy(policy_path), mirror, INDEX)
    return time.perf_counter() - start, report


def offline_install(mirror: Path, folder: Path) -> float:
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    lock = mirror / "latest" / "locks" / f"py{PYTHON}-{PLATFORM}.txt"
    start = time.perf_counter()
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--isolated", "--quiet", "--no-cache-dir", "--disable-pip-version-check",
                    "--index-url", f"file://{(mirror / 'latest' / 'simple').resolve()}", "--require-hashes", "-r", str(lock)],
                   check=True, env={**os.environ, "PIP_CONFIG_FILE": os.devnull})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("requirements", nargs="*", default=STACK)
    parser.add_argument("--vulnerabilities", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-packages-", dir=args.work))
    try:
        run(args.requirements, args.vulnerabilities, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(requirements: list[str], vulnerabilities: Path, work: Path) -> None:
    baseline = pip_download(requirements, work / "pip")
    wheels = len(list((work / "pip" / "wheels").glob("*.whl")))
    print(f"pip download:       {baseline:6.1f} s  {wheels} wheels")
    path = policy(work, requirements, vulnerabilities)
    first, report = timed_sync(path, work / "mirror")
    print(f"packages sync:      {first:6.1f} s  {first / baseline:.2f}x pip download; {len(report.admitted)} admitted, "
          f"{len(report.refused_versions)} versions and {len(report.refused_requirements)} requirements refused")
    for refused in report.refused_versions:
        print(f"  refused {refused['project']} {refused['version']}: {refused['reason']}")
    for refused in report.refused_requirements:
        print(f"  requirement refused {refused['requirement']}: {refused['reason']}")
    second, again = timed_sync(path, work / "mirror")
    print(f"sync over a mirror: {second:6.1f} s  {second / baseline:.2f}x; {len(again.admitted)} admitted")
    install = offline_install(work / "mirror", work)
    print(f"offline install:    {install:6.1f} s  {len(again.admitted)} wheels into a fresh venv (pip --isolated)")
    if report.refused_requirements:
        raise PackagesRefused("some requirements were refused (above)")


if __name__ == "__main__":
    main()
