"""Run the benchmarks and print their tables.

    python -m bench              # every bench/bench_*.py
    python -m bench doveauth     # only bench/bench_doveauth.py
    python -m bench e2e --n 20   # options after the names go to each script

Each benchmark is a standalone script that prints a markdown table; this
runner adds the machine and date so the output can be pasted into
BENCHMARKS.md as it is.
"""

import datetime
import os
import subprocess
import sys
from pathlib import Path

from bench import machine

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    scripts = sorted(HERE.glob("bench_*.py"))
    split = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
    names, options = argv[:split], argv[split:]
    if names:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in names]
        if not scripts:
            print(f"no benchmark named {' '.join(names)}", file=sys.stderr)
            return 2
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"# Benchmarks, {now}\n\nMachine: {machine()}\n")
    failed = 0
    for script in scripts:
        print(f"## {script.stem.removeprefix('bench_')}\n", flush=True)
        # the scripts import the test harness (tests.harness) from the tree
        path = os.pathsep.join(filter(None, [str(HERE.parent), os.environ.get("PYTHONPATH")]))
        proc = subprocess.run(
            [sys.executable, str(script), *options],
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": path},
        )
        if proc.returncode:
            print(f"\n(benchmark {script.name} failed with exit code {proc.returncode})")
            failed += 1
        print(flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
