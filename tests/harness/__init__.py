"""Test-host harness: real systemd Debian 12 hosts in a private dockerd.

Pieces (each module can be used on its own):
  docker  -- our own dockerd (socket, data root under the cache dir) and a CLI wrapper
  image   -- wheelhouse, debootstrapped base image, systemd+salt image (content-hashed tag)
  network -- the test bridge network and the apt proxy bound to its gateway
  hosts   -- boot / exec / converge / destroy hosts
"""

import fcntl
import os
import signal
import time
from pathlib import Path

# The tree mounted into hosts (salt/, chatmaild/, ...): this work tree, or e.g. a
# `git worktree` of HEAD to converge exactly what is committed.
REPO = Path(os.environ.get("CMSALT_REPO") or Path(__file__).resolve().parents[2]).resolve()
CACHE = Path(os.environ.get("CHATMAIL_CACHE", "/var/cache/chatmail-salt"))
LOG_DIR = CACHE / "logs"

LABEL = "chatmail-salt.harness"
NETWORK = "cmsalt-net"
SUBNET = "172.31.77.0/24"
GATEWAY = "172.31.77.1"
# docker hands out addresses only from the upper half; fixed addresses (boot(ip=...))
# belong in 172.31.77.2-127 so they never collide with a dynamically addressed host.
DYNAMIC_RANGE = "172.31.77.128/25"
PROXY_PORT = 3142
PROXY_URL = f"http://{GATEWAY}:{PROXY_PORT}"

SALT_VERSION = "3008.3"
RELAY_NAME = "cmsalt-relay"
RELAY_IP = "172.31.77.10"

LOCK_FILE = "/run/cmsalt-harness.lock"


def pid_alive(pidfile):
    """The pid in `pidfile` if that process exists and is not a zombie, else None."""
    try:
        pid = int(open(pidfile).read().strip())
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(") ", 1)[1][:1]
    except (OSError, ValueError, IndexError):
        return None
    return None if state in ("Z", "X") else pid


def stop_process(pidfile):
    """SIGTERM the live process named by `pidfile`, SIGKILL it after 5 s.
    Returns False when no such process was running."""
    pid = pid_alive(pidfile)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    for _ in range(50):
        if pid_alive(pidfile) is None:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    return True


class locked:
    """Inter-process (and inter-thread) lock around the shared setup steps:
    starting dockerd, building images, creating the network, starting the proxy."""

    def __enter__(self):
        self._fd = open(LOCK_FILE, "a")
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        self._fd.close()
        return False


def ensure_infra():
    """dockerd, systemd image, test network and apt proxy; returns (started_dockerd, tag)."""
    from . import docker, image, network

    with locked():
        started = docker.ensure()
        tag = image.ensure_image()
        network.ensure_network()
        network.ensure_proxy()
    return started, tag
