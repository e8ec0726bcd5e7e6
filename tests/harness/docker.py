"""Our own dockerd: started detached on a private socket, stopped by its pid."""

import os
import signal
import subprocess
import time

from . import CACHE, LOG_DIR, pid_alive, start_daemon, wait_until

SOCK = "/run/cmsalt-docker.sock"
HOST = f"unix://{SOCK}"
PIDFILE = "/run/cmsalt-docker.pid"
DATA_ROOT = CACHE / "docker"
EXEC_ROOT = "/run/cmsalt-docker"


class DockerError(RuntimeError):
    pass


def env():
    e = dict(os.environ)
    e["DOCKER_HOST"] = HOST
    return e


def docker(*args, check=True, input=None, timeout=None, capture=True):
    """Run the docker CLI against our daemon; returns CompletedProcess (text)."""
    proc = subprocess.run(
        ["docker", *map(str, args)],
        env=env(),
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=capture,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise DockerError(
            f"docker {' '.join(map(str, args))} -> {proc.returncode}\n{proc.stderr or ''}"
        )
    return proc


def _pid():
    return pid_alive(PIDFILE, "dockerd")


def running():
    if _pid() is None:
        return False
    return docker("version", "--format", "{{.Server.Version}}", check=False).returncode == 0


def ensure(timeout=60):
    """Start dockerd unless it already answers on our socket."""
    if running():
        return False
    DATA_ROOT.mkdir(parents=True, exist_ok=True)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    if _pid() is not None:  # started by another process, not answering yet
        if wait_until(running, timeout):
            return True
        raise DockerError(f"dockerd did not come up; see {LOG_DIR / 'dockerd.log'}")
    for stale in (PIDFILE, SOCK):
        if os.path.exists(stale):
            os.unlink(stale)
    argv = ["dockerd", "--iptables=false", "--ip-masq=false", "--data-root", str(DATA_ROOT),
            "--exec-root", EXEC_ROOT, "--pidfile", PIDFILE, "-H", HOST]  # fmt: skip
    try:
        start_daemon(argv, "dockerd.log", running, "dockerd", timeout=timeout)
    except RuntimeError as exc:
        raise DockerError(str(exc)) from None
    return True


def stop(timeout=30):
    pid = _pid()
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _pid() is not None:
        time.sleep(0.3)
    if _pid() is not None:
        os.kill(pid, signal.SIGKILL)
    return True


def image_exists(ref):
    return docker("image", "inspect", ref, check=False).returncode == 0
