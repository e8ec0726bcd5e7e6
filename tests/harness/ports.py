"""Free ports for test daemons, outside the kernel's ephemeral range.

A port found by binding port 0 and closing the socket comes from the
ephemeral range (32768-60999 on Debian): until the daemon binds it, any
outgoing connection of a concurrent test (another xdist worker, another
session) may take it as its local port, or another worker's bind(0) may
return it too.  Here each pytest process draws from its own block below that
range (the worker index and the session's pid pick the block) and checks the
port is bindable for TCP (and UDP when asked) before handing it out.
"""

from __future__ import annotations

import itertools
import os
import socket

LOW, HIGH = 20000, 32000  # below ip_local_port_range's 32768
BLOCK = 500
_BLOCKS = (HIGH - LOW) // BLOCK


def _block() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    session = os.getppid() if "PYTEST_XDIST_WORKER" in os.environ else os.getpid()
    start = LOW + (index + 4 * (session % (_BLOCKS // 4))) % _BLOCKS * BLOCK
    return range(start, start + BLOCK)


_candidates = itertools.cycle(_block())


def _bindable(host: str, port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1", udp: bool = False) -> int:
    """A port on `host` nobody listens on (TCP, and UDP too if `udp`)."""
    for _ in range(BLOCK):
        port = next(_candidates)
        if _bindable(host, port, socket.SOCK_STREAM) and (
            not udp or _bindable(host, port, socket.SOCK_DGRAM)
        ):
            return port
    raise OSError(f"no free port in this process's block on {host}")
