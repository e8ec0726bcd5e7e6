"""Test-host harness: real systemd Debian 12 hosts in a private dockerd.

Pieces (each module can be used on its own):
  docker  -- our own dockerd (socket, data root under the cache dir) and a CLI wrapper
  image   -- wheelhouse, debootstrapped base image, systemd+salt image (content-hashed tag)
  network -- the test bridge networks and the apt proxy on the service address
  hosts   -- boot / exec / converge / destroy hosts

Slots: every process that uses the harness owns one slot, a numbered test
network with its own bridge, subnet, gateway address, nsd and container names,
so test sessions (and pytest-xdist workers) running at the same time never see
each other's hosts or zones.  Slot 0 belongs to ``./cmsalt up/down/status/shell``
(the relay a developer keeps running); test sessions take the first free slot
of 1..SLOTS-1, held by an flock for the life of the process.  ``CMSALT_SLOT=N``
asks for slot N (waiting while another process holds it).  dockerd, the images
and the apt proxy are shared by all slots; the apt proxy listens on a service
address of the machine (SERVICE_IP) that hosts of every slot reach through their
own gateway.
"""

import fcntl
import os
import signal
import subprocess
import time
from pathlib import Path

# The tree mounted into hosts (salt/, chatmaild/, ...): this work tree, or e.g. a
# `git worktree` of HEAD to converge exactly what is committed.
REPO = Path(os.environ.get("CMSALT_REPO") or Path(__file__).resolve().parents[2]).resolve()
CACHE = Path(os.environ.get("CHATMAIL_CACHE", "/var/cache/chatmail-salt"))
LOG_DIR = CACHE / "logs"

LABEL = "chatmail-salt.harness"
SLOT_LABEL = "chatmail-salt.slot"
KEEP_LABEL = "chatmail-salt.keep"
SLOTS = 16
SLOT_LOCK = "/run/cmsalt-slot-{}.lock"
LOCK_FILE = "/run/cmsalt-harness.lock"

SALT_VERSION = "3008.3"
# The apt proxy's address: on the machine's loopback device, outside every slot's
# subnet, reached by hosts through their default route (their slot's gateway).
SERVICE_IP = "172.31.76.1"
PROXY_PORT = 3142
PROXY_URL = f"http://{SERVICE_IP}:{PROXY_PORT}"

RELAY_NAME = "cmsalt-relay"


def _take_slot():
    """(slot, open lock file) for this process; see the module docstring."""
    wanted = os.environ.get("CMSALT_SLOT")
    if wanted is not None:
        slot = int(wanted)
        if not 0 <= slot < SLOTS:
            raise ValueError(f"CMSALT_SLOT must be 0..{SLOTS - 1}, not {wanted!r}")
        lock = open(SLOT_LOCK.format(slot), "a")
        fcntl.flock(lock, fcntl.LOCK_EX)
        return slot, lock
    for slot in range(1, SLOTS):
        lock = open(SLOT_LOCK.format(slot), "a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        return slot, lock
    raise RuntimeError(f"all {SLOTS - 1} harness slots are in use by other test sessions")


def slot_prefix(slot):
    """The first three octets of `slot`'s /24 test network."""
    return f"172.31.{77 + slot}"


SLOT, _SLOT_LOCK = _take_slot()
NETWORK = "cmsalt-net" if SLOT == 0 else f"cmsalt-net-s{SLOT}"
PREFIX = slot_prefix(SLOT)
SUBNET = f"{PREFIX}.0/24"
GATEWAY = f"{PREFIX}.1"
# docker hands out addresses only from the upper half; fixed addresses (boot(ip=...))
# belong in .2-.127 (addr(n)) so they never collide with a dynamically addressed host.
DYNAMIC_RANGE = f"{PREFIX}.128/25"
RELAY_IP = f"{PREFIX}.10"


def addr(n):
    """Address .n of this slot's subnet (fixed addresses: 2..127)."""
    if not 2 <= n <= 127:
        raise ValueError(f"fixed host addresses are .2-.127, not .{n}")
    return f"{PREFIX}.{n}"


def scoped(name):
    """A container name made unique to this slot (slot 0 keeps the plain name)."""
    suffix = f"-s{SLOT}" if SLOT else ""
    return name if not suffix or name.endswith(suffix) else name + suffix


def _boot_time():
    with open("/proc/stat") as stat:
        for line in stat:
            if line.startswith("btime "):
                return int(line.split()[1])
    raise OSError("no btime in /proc/stat")


def pid_alive(pidfile, marker=None):
    """The pid in `pidfile` if that process exists, is not a zombie, is the
    one the file was written for, and (with `marker`) has `marker` in its
    command line; else None.  Process numbers wrap (32768 here), so a stale
    file from an earlier run names, sooner or later, someone else: another
    slot's nsd was once stopped that way in the middle of a run.  A process
    that started after the file was written is not the one it names."""
    try:
        pid = int(open(pidfile).read().strip())
        written = os.stat(pidfile).st_mtime
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(") ", 1)[1].split()
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            argv = cmdline.read().replace(b"\0", b" ").decode(errors="replace")
        started = _boot_time() + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    if fields[0] in ("Z", "X") or started > written + 5:
        return None
    if marker is not None and marker not in argv:
        return None
    return pid


def stop_process(pidfile, marker=None):
    """SIGTERM the live process named by `pidfile` (see pid_alive), SIGKILL it
    after 5 s.  Returns False when no such process was running."""
    pid = pid_alive(pidfile, marker)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    for _ in range(50):
        if pid_alive(pidfile, marker) is None:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    return True


def start_daemon(argv, log_name, ready, what, pidfile=None, timeout=30):
    """Start `argv` detached (its own session, stdio appended to LOG_DIR/log_name),
    write its pid to `pidfile` (unless the daemon writes its own), and wait until
    `ready()` is true.  Raises RuntimeError naming `what` if it exits or times out."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with open(LOG_DIR / log_name, "ab") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    if pidfile:
        with open(pidfile, "w") as f:
            f.write(f"{proc.pid}\n")
    if not wait_until(ready, timeout, alive=lambda: proc.poll() is None):
        raise RuntimeError(f"{what} did not come up; see {LOG_DIR / log_name}")
    return proc


def wait_until(ready, timeout, alive=lambda: True, interval=0.2):
    """True once `ready()` is; False after `timeout` s or once `alive()` is false."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return True
        if not alive():
            return False
        time.sleep(interval)
    return False


class locked:
    """Inter-process (and inter-thread) lock around the shared setup steps:
    starting dockerd, building images, creating networks, starting the proxy."""

    def __enter__(self):
        self._fd = open(LOCK_FILE, "a")
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        self._fd.close()
        return False


def slots_in_use():
    """Slots other than ours whose lock some live process holds."""
    busy = []
    for slot in range(SLOTS):
        if slot == SLOT:
            continue
        with open(SLOT_LOCK.format(slot), "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                busy.append(slot)
    return busy


def ensure_service_ip():
    """SERVICE_IP on the loopback device (idempotent)."""
    shown = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "dev", "lo"], capture_output=True, text=True
    ).stdout
    if f" {SERVICE_IP}/" not in shown:
        subprocess.run(["ip", "addr", "add", f"{SERVICE_IP}/32", "dev", "lo"], check=True)


def remove_service_ip():
    subprocess.run(["ip", "addr", "del", f"{SERVICE_IP}/32", "dev", "lo"], capture_output=True)


_ensured = False


def ensure_infra():
    """dockerd, systemd image, this slot's network and nsd, the apt proxy.
    Returns (started_dockerd, tag).  The first call of a process removes what a
    dead earlier owner of the slot left behind (hosts not marked keep) and
    the kernel bridges of an earlier dockerd (network.remove_stale_bridges)."""
    global _ensured
    from . import docker, image, network

    with locked():
        started = docker.ensure()
        ensure_service_ip()
        network.ensure_proxy()
        if not _ensured:
            from . import dns, hosts

            hosts.remove_slot_hosts(keep_kept=True)
            dns.clear()
            network.remove_stale_bridges()
            _ensured = True
        network.ensure_network()
        tag = image.ensure_image()
    ensure_dovecot()
    return started, tag


_dovecot_ready = False


def ensure_dovecot():
    """The patched Dovecot (chatmail:dovecot:source patched, the default) as
    salt://chatmail-dovecot/chatmail-dovecot.tar of the mounted tree: taken
    from the machine's cache (dovecot/build.py), built first when the cache
    has no build of the current patches (~25 CPU-minutes).  Outside the
    harness lock: its own lock keeps builds one at a time."""
    global _dovecot_ready
    if not _dovecot_ready:
        from dovecot import build

        build.ensure(REPO)
        _dovecot_ready = True


def building_dovecot():
    """True while a Dovecot build container runs (e.g. the one ./cmsalt test
    starts in the background): it needs dockerd and the apt proxy."""
    from dovecot.build import CONTAINER_LABEL

    from .docker import docker

    ps = docker("ps", "-q", "--filter", f"label={CONTAINER_LABEL}", check=False)
    return bool(ps.stdout.strip())


def network_address():
    """This slot's gateway address once its network exists: servers of the
    harness (push gateway, mail sink, ACME stand-in, salt master) bind to it."""
    ensure_infra()
    return GATEWAY


def release(keep=False):
    """End of a harness user: remove this slot's hosts (not kept ones when
    `keep`), its network and nsd; stop the apt proxy and dockerd once no slot is
    in use and no host is left in dockerd (a developer's `./cmsalt up` relay
    keeps them running)."""
    from . import dns, docker, hosts, network

    with locked():
        if docker.running():
            hosts.remove_slot_hosts(keep_kept=keep)
            if not hosts.list_hosts(slot=SLOT):
                network.remove_network()
        dns.stop()
        # this process is done with its slot: free it now, inside the harness
        # lock, so that of the sessions ending together the last one sees no
        # slot in use and stops the daemons (each used to see the others'
        # slots still locked by their exiting processes, and none stopped)
        fcntl.flock(_SLOT_LOCK, fcntl.LOCK_UN)
        if slots_in_use() or (docker.running() and hosts.list_hosts(slot=None)):
            return False
        if docker.running() and building_dovecot():
            return False  # the build's own exit releases them (dovecot/build.py)
        network.stop_proxy()
        docker.stop()
        remove_service_ip()
        return True
