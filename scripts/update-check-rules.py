"""Replace the secret rule set `saferoom check` ships with a newer gitleaks release.

Usage: python scripts/update-check-rules.py GITLEAKS_TOML VERSION [--license LICENSE] [--commit SHA]

GITLEAKS_TOML is config/gitleaks.toml of a gitleaks release (MIT), VERSION its tag (v8.30.1). Every rule
must compile for polars after the Go-to-Rust translation, or nothing is replaced. Then run
tests/test_check_corpus.py: the corpus levels say whether the new rules find what the old ones did.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).parent.parent))

from saferoom.check.rules import EXTRA_FILE, RULES_DIR, RULES_FILE, VERSION_FILE, RuleSet, ruleset


def broken(rules: RuleSet) -> list[str]:
    """The rules (and allowlist regexes) that Rust's regex engine refuses, with its reason."""
    probe = pl.Series(["probe"])
    problems = []
    for rule in rules.rules:
        for regex in (rule.regex, *(r for a in rule.allowlists for r in a.regexes)):
            try:
                probe.str.contains(regex)
            except pl.exceptions.PolarsError as exc:
                problems.append(f"{rule.id}: {str(exc).splitlines()[0]}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("toml", type=Path)
    parser.add_argument("version")
    parser.add_argument("--license", type=Path, help="gitleaks' LICENSE file, if it changed")
    parser.add_argument("--commit", default="", help="the release's commit, recorded beside the version")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        version = Path(folder) / "version"
        version.write_text(f"{args.version} {args.commit}\n")
        new = ruleset(args.toml, version, EXTRA_FILE)
    problems = broken(new)
    if problems:
        sys.exit("not replaced; these rules do not compile:\n" + "\n".join(problems))
    old = {r.id for r in ruleset().rules}
    ids = {r.id for r in new.rules}
    shutil.copyfile(args.toml, RULES_FILE)
    VERSION_FILE.write_text(f"{args.version} {args.commit} config/gitleaks.toml of github.com/gitleaks/gitleaks\n".replace("  ", " "))
    if args.license:
        shutil.copyfile(args.license, RULES_DIR / "gitleaks.LICENSE")
    print(f"gitleaks {args.version}: {len(ids)} rules, {len(ids - old)} new, {len(old - ids)} gone")
    for rule in sorted(ids - old):
        print(f"  + {rule}")
    for rule in sorted(old - ids):
        print(f"  - {rule}")


if __name__ == "__main__":
    main()
