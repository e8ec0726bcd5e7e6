"""The slot's test bridge network and the apt proxy (apt-cacher-ng).

Hosts have no route outside (dockerd runs with --iptables=false); Debian packages
reach them only through the proxy, which fetches from the mirror this machine uses.
The proxy listens on SERVICE_IP (on the machine's loopback device), which hosts
of every slot reach through their own gateway.
"""

import glob
import os
import re
import socket
import subprocess

from . import (
    CACHE,
    DYNAMIC_RANGE,
    GATEWAY,
    LABEL,
    LOG_DIR,
    NETWORK,
    PROXY_PORT,
    SERVICE_IP,
    SLOT,
    SLOT_LABEL,
    SLOTS,
    SUBNET,
    pid_alive,
    slot_prefix,
    start_daemon,
    stop_process,
)
from .docker import docker

ACNG_DIR = CACHE / "apt-cacher-ng"
ACNG_CONF = CACHE / "apt-cacher-ng-conf"
ACNG_PIDFILE = "/run/cmsalt-acng.pid"
DEFAULT_MIRROR = "http://deb.debian.org/debian"


def debian_mirror():
    """The Debian archive URL this machine's apt uses (not the security archive)."""
    files = sorted(glob.glob("/etc/apt/sources.list.d/*.sources"))
    files += sorted(glob.glob("/etc/apt/sources.list.d/*.list")) + ["/etc/apt/sources.list"]
    for path in files:
        try:
            text = open(path).read()
        except OSError:
            continue
        for url in re.findall(r"(?m)^(?:URIs:|deb)\s+(?:\[[^\]]*\]\s+)?(http\S+)", text):
            if url.rstrip("/").endswith("/debian"):
                return url.rstrip("/")
    return DEFAULT_MIRROR


def ensure_network():
    if docker("network", "inspect", NETWORK, check=False).returncode == 0:
        return False
    docker(
        "network",
        "create",
        "--driver",
        "bridge",
        "--subnet",
        SUBNET,
        "--gateway",
        GATEWAY,
        "--ip-range",
        DYNAMIC_RANGE,
        "--label",
        f"{LABEL}=1",
        "--label",
        f"{SLOT_LABEL}={SLOT}",
        NETWORK,
    )
    return True


def remove_stale_bridges():
    """Delete kernel bridges that hold a slot's subnet but belong to no network
    of the running dockerd.  dockerd leaves a network's bridge in the kernel
    when it stops; if its data root is then removed (`./cmsalt test --cold`, a
    wiped cache), the old bridge keeps the subnet's route while a new network
    of the same subnet gets a second bridge: replies to the hosts leave by the
    dead one and the hosts' connections (the apt proxy's) time out."""
    ids = docker("network", "ls", "--no-trunc", "--format", "{{.ID}}", check=False).stdout.split()
    ours = {f"br-{net_id[:12]}" for net_id in ids}
    shown = subprocess.run(
        ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True
    ).stdout
    prefixes = {slot_prefix(slot) for slot in range(SLOTS)}
    removed = []
    for line in shown.splitlines():
        fields = line.split()
        dev, addr = fields[1], fields[3].partition("/")[0]
        if dev.startswith("br-") and dev not in ours and addr.rpartition(".")[0] in prefixes:
            subprocess.run(["ip", "link", "del", dev], check=False)
            removed.append(dev)
    return removed


def remove_network(name=NETWORK):
    return docker("network", "rm", name, check=False).returncode == 0


def harness_networks():
    """{network name: slot} of every harness network in dockerd."""
    fmt = f'{{{{.Name}}}}\t{{{{.Label "{SLOT_LABEL}"}}}}'
    out = docker("network", "ls", "--filter", f"label={LABEL}", "--format", fmt, check=False)
    nets = {}
    for line in out.stdout.splitlines():
        name, _, slot = line.partition("\t")
        nets[name] = int(slot) if slot.isdigit() else None
    return nets


def _port_open(host, port):
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _acng_pid():
    return pid_alive(ACNG_PIDFILE, "apt-cacher-ng")


def _write_acng_conf():
    ACNG_CONF.mkdir(parents=True, exist_ok=True)
    (ACNG_CONF / "backends_debian").write_text(debian_mirror() + "/\n")
    (ACNG_CONF / "acng.conf").write_text(
        "\n".join(
            [
                f"CacheDir: {ACNG_DIR}",
                f"LogDir: {LOG_DIR / 'apt-cacher-ng'}",
                "SupportDir: /usr/lib/apt-cacher-ng",
                "Remap-debrep: file:deb_mirror*.gz /debian ; file:backends_debian",
                "Remap-secdeb: security.debian.org security.debian.org/debian-security"
                " deb.debian.org/debian-security /debian-security"
                " ; deb.debian.org/debian-security",
                "ExThreshold: 4",
                f"BindAddress: {SERVICE_IP}",
                f"Port: {PROXY_PORT}",
                "SocketPath: /run/cmsalt-acng.socket",
                "ForeGround: 1",
                "",
            ]
        )
    )


def ensure_proxy(timeout=30):
    """Start apt-cacher-ng on SERVICE_IP (which must be on the loopback device)."""
    if _acng_pid() is not None:
        if _port_open(SERVICE_IP, PROXY_PORT):
            return False
        stop_proxy()  # an instance of an older harness, bound elsewhere
    ACNG_DIR.mkdir(parents=True, exist_ok=True)
    (LOG_DIR / "apt-cacher-ng").mkdir(parents=True, exist_ok=True)
    _write_acng_conf()
    start_daemon(
        ["/usr/sbin/apt-cacher-ng", "-c", str(ACNG_CONF)],
        "apt-cacher-ng.out",
        lambda: _port_open(SERVICE_IP, PROXY_PORT),
        f"apt-cacher-ng on {SERVICE_IP}:{PROXY_PORT}",
        pidfile=ACNG_PIDFILE,
        timeout=timeout,
    )
    return True


def stop_proxy():
    if not stop_process(ACNG_PIDFILE, "apt-cacher-ng"):
        return False
    os.unlink(ACNG_PIDFILE)
    return True
