"""Run fuzz targets and print a table: target, cases, cases/s, findings.

    python -m fuzz                       # every target, 10000 cases each
    python -m fuzz --cases 1000 pillar   # one target, fewer cases

Exits 1 if any target has a finding (each is printed after the table).
"accepted" counts the cases a target let through (messages filtermail
accepted, archives imported, pillars built, dict lookups answered "O"): it
shows the generators reach the side where an invariant can break.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "chatmaild" / "src"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from bench import machine  # noqa: E402
from fuzz.targets import TARGETS, run_target  # noqa: E402


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10000, help="cases per target")
    parser.add_argument("--seed", type=int, default=None, help="fixed seed (default: random)")
    parser.add_argument("targets", nargs="*", help=f"some of: {' '.join(TARGETS)}")
    args = parser.parse_args(argv)
    names = args.targets or list(TARGETS)
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        print(f"unknown target(s): {' '.join(unknown)}", file=sys.stderr)
        return 2
    # the daemons log every refusal; thousands of cases would bury the table
    logging.disable(logging.CRITICAL)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"# Fuzz run, {now}\n\nMachine: {machine()}\n", flush=True)
    print("| target | cases | cases/s | findings | accepted |")
    print("| --- | ---: | ---: | ---: | ---: |", flush=True)
    results = []
    for name in names:
        result = run_target(name, args.cases, seed=args.seed)
        results.append(result)
        rate = result.cases / result.seconds if result.seconds else 0.0
        row = [name, result.cases, f"{rate:.0f}", len(result.findings), result.accepted]
        print("| " + " | ".join(map(str, row)) + " |", flush=True)
    failed = [r for r in results if r.findings]
    for result in failed:
        print(f"\n## findings of {result.name}\n")
        for finding in result.findings:
            print(finding)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
