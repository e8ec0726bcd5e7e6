"""Resource brakes for account creation: load, available memory, free disk.

Values that cannot be read (e.g. no ``/proc`` in a sandbox) do not block
creation; they are logged once per call.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("chatmaild.syslimits")


def load_1m() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def mem_available(meminfo="/proc/meminfo") -> int | None:
    """``MemAvailable`` in bytes."""
    try:
        with open(meminfo, "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    parts = line.split()
                    factor = 1024 if len(parts) > 2 and parts[2].lower() == b"kb" else 1
                    return int(parts[1]) * factor
    except (OSError, ValueError, IndexError):
        pass
    return None


def disk_free(path) -> int | None:
    """Bytes available to unprivileged users on the filesystem of ``path``
    (or of its nearest existing parent)."""
    path = os.path.abspath(str(path))
    while True:
        try:
            st = os.statvfs(path)
            return st.f_bavail * st.f_frsize
        except FileNotFoundError:
            parent = os.path.dirname(path)
            if parent == path:
                return None
            path = parent
        except OSError:
            return None


def resource_shortage(config, mailboxes_path=None) -> str | None:
    """Return why the host is short of resources, or None if creation is fine."""
    load = load_1m()
    if load is not None and load > config.max_load_1m:
        return f"1-minute load {load:.2f} > max_load_1m {config.max_load_1m}"
    mem = mem_available()
    if mem is not None and mem < config.min_available_memory:
        return f"available memory {mem} < min_available_memory {config.min_available_memory}"
    disk = disk_free(mailboxes_path or config.mailboxes_dir)
    if disk is not None and disk < config.min_free_disk_space:
        return f"free disk {disk} < min_free_disk_space {config.min_free_disk_space}"
    return None


def has_sufficient_resources(config, mailboxes_path=None) -> bool:
    reason = resource_shortage(config, mailboxes_path)
    if reason:
        log.warning("account creation refused: %s", reason)
        return False
    return True
