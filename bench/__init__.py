"""Benchmarks of chatmail-salt; run them all with ``./cmsalt bench``."""

import os
import platform
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
