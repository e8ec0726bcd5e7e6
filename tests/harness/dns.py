"""Authoritative DNS for the test network: nsd on the gateway address, port 53.

Tests write whole zones (set_zone / set_zones); nsd is restarted to load them.
Relays reach it as GATEWAY:53 (e.g. unbound forward/stub zones, pillar
chatmail:dns:forwarders or chatmail:dns:nameservers).
"""

import socket
import subprocess
import time

from . import CACHE, GATEWAY, LOG_DIR, pid_alive, stop_process

NSD_DIR = CACHE / "nsd"
ZONE_DIR = NSD_DIR / "zones"
CONF = NSD_DIR / "nsd.conf"
PIDFILE = "/run/cmsalt-nsd.pid"
PORT = 53


def zone_text(origin, records, ns_ip=GATEWAY, serial=None):
    """A complete zone: SOA and NS (ns.<origin> at ns_ip) plus `records`.

    records: zone-file lines relative to the origin, e.g. "@ IN A 172.31.77.20",
    "mail IN MX 10 chat1.test.", or a str of several lines.
    """
    origin = origin.rstrip(".")
    serial = serial or int(time.time())
    if isinstance(records, str):
        records = records.splitlines()
    head = [
        f"$ORIGIN {origin}.",
        "$TTL 60",
        f"@ IN SOA ns.{origin}. hostmaster.{origin}. {serial} 60 60 600 60",
        f"@ IN NS ns.{origin}.",
        f"ns IN A {ns_ip}",
    ]
    return "\n".join(head + [r for r in records if r.strip()]) + "\n"


def _pid():
    return pid_alive(PIDFILE)


def zones():
    return sorted(p.name[: -len(".zone")] for p in ZONE_DIR.glob("*.zone"))


def _write_conf():
    lines = [
        "server:",
        f"  ip-address: {GATEWAY}",
        f"  port: {PORT}",
        '  username: ""',
        '  chroot: ""',
        f'  zonesdir: "{ZONE_DIR}"',
        '  database: ""',
        f'  zonelistfile: "{NSD_DIR}/zone.list"',
        f'  xfrdfile: "{NSD_DIR}/xfrd.state"',
        f'  xfrdir: "{NSD_DIR}"',
        f'  pidfile: "{NSD_DIR}/nsd.pid"',
        f'  logfile: "{LOG_DIR}/nsd.log"',
        "  hide-version: yes",
        "remote-control:",
        "  control-enable: no",
    ]
    for name in zones():
        lines += ["zone:", f"  name: {name}", f"  zonefile: {name}.zone"]
    CONF.write_text("\n".join(lines) + "\n")


def _answers():
    """True once nsd answers a SOA query on GATEWAY:53 over UDP (any rcode)."""
    query = b"\x12\x34\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x04test\x00\x00\x06\x00\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.5)
        try:
            sock.sendto(query, (GATEWAY, PORT))
            return sock.recv(512)[:2] == b"\x12\x34"
        except OSError:
            return False


def stop():
    return stop_process(PIDFILE)


def restart(timeout=15):
    """(Re)start nsd with every zone in ZONE_DIR (the test network must exist)."""
    stop()
    ZONE_DIR.mkdir(parents=True, exist_ok=True)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    _write_conf()
    # ./cmsalt kills a dpkg-started nsd unless this marker exists
    (CACHE / ".keep-nsd").touch()
    check = subprocess.run(["nsd-checkconf", str(CONF)], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"nsd config: {check.stderr}")
    with open(LOG_DIR / "nsd.out", "ab") as log:
        proc = subprocess.Popen(
            ["nsd", "-d", "-c", str(CONF)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    with open(PIDFILE, "w") as f:
        f.write(f"{proc.pid}\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _answers():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise RuntimeError(f"nsd did not answer on {GATEWAY}:{PORT}; see {LOG_DIR / 'nsd.log'}")


def set_zones(zone_texts, replace=False):
    """Write {origin: zone text} (see zone_text) and reload nsd."""
    ZONE_DIR.mkdir(parents=True, exist_ok=True)
    if replace:
        for old in ZONE_DIR.glob("*.zone"):
            old.unlink()
    for origin, text in zone_texts.items():
        path = ZONE_DIR / f"{origin.rstrip('.')}.zone"
        path.write_text(text)
        check = subprocess.run(
            ["nsd-checkzone", origin.rstrip("."), str(path)], capture_output=True, text=True
        )
        if check.returncode != 0:
            raise ValueError(f"zone {origin}: {check.stdout}{check.stderr}")
    restart()


def set_zone(origin, text):
    set_zones({origin: text})


def remove_zones():
    for old in ZONE_DIR.glob("*.zone"):
        old.unlink()
