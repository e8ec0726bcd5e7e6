"""Benchmarks of chatmail-salt; run them all with ``./cmsalt bench``."""

import os
import platform
import sys
import time
from pathlib import Path


def machine() -> str:
    """The machine a benchmark or fuzz run ran on, for the recorded tables."""
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()}: {os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def release_harness_at_exit(keep=False):
    """At the exit of a benchmark that booted test hosts: remove what is left
    of its slot and, when no other session uses the harness, stop dockerd,
    nsd and the apt proxy, as a test session does at its end (without this
    they stayed running after every host benchmark)."""
    import atexit

    from tests import harness

    atexit.register(harness.release, keep=keep)


def percentile(values, q):
    """The nearest-rank q-quantile (0 <= q <= 1) of values; nan if empty."""
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def progress(text):
    """A progress line on stderr with the time and the 1-minute load."""
    stamp = time.strftime("%H:%M:%S", time.gmtime())
    print(f"[{stamp} load {os.getloadavg()[0]:.1f}] {text}", file=sys.stderr, flush=True)
