"""Authoritative DNS for the slot's test network: nsd on its gateway address, port 53.

Tests write whole zones (set_zone / set_zones).  The first write starts nsd;
later ones make the running nsd pick up new and changed zones (nsd-control
reconfig + reload over a unix socket), so it never stops answering: a resolver
that asked during a restart would back off from it (unbound does) and time out
later queries.  Relays reach it as GATEWAY:53 (e.g. unbound forward/stub zones,
pillar chatmail:dns:forwarders or chatmail:dns:nameservers).
"""

import glob
import itertools
import os
import re
import socket
import subprocess
import sys
import time

from . import CACHE, GATEWAY, LOG_DIR, SLOT, pid_alive, start_daemon, stop_process


def nsd_dir(slot):
    """The directory of `slot`'s nsd (config, zones, control socket)."""
    return CACHE / "nsd" / f"s{slot}"


NSD_DIR = nsd_dir(SLOT)
ZONE_DIR = NSD_DIR / "zones"
CONF = NSD_DIR / "nsd.conf"
CONTROL = NSD_DIR / "control.sock"
PIDFILE = f"/run/cmsalt-nsd-s{SLOT}.pid"
PORT = 53
# Strictly increasing SOA serials, so set_zones can tell the new zone from the old.
_SERIALS = itertools.count(int(time.time()))


def zone_text(origin, records, ns_ip=GATEWAY, serial=None):
    """A complete zone: SOA and NS (ns.<origin> at ns_ip) plus `records`.

    records: zone-file lines relative to the origin, e.g. "@ IN A 172.31.77.20",
    "mail IN MX 10 chat1.test.", or a str of several lines.
    """
    origin = origin.rstrip(".")
    serial = serial or next(_SERIALS)
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
    return pid_alive(PIDFILE, str(CONF))


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
        f'  logfile: "{LOG_DIR}/nsd-s{SLOT}.log"',
        "  hide-version: yes",
        "remote-control:",
        "  control-enable: yes",
        f'  control-interface: "{CONTROL}"',
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
    return stop_process(PIDFILE, str(CONF))


def stop_slots(exclude=()):
    """Stop the nsd of every slot but those in `exclude` (and of older harnesses)."""
    for pidfile in glob.glob("/run/cmsalt-nsd*.pid"):
        match = re.fullmatch(r"/run/cmsalt-nsd(?:-s(\d+))?\.pid", pidfile)
        if match and (match.group(1) is None or int(match.group(1)) not in exclude):
            slot = match.group(1)
            conf = str(nsd_dir(slot) / "nsd.conf") if slot else "nsd"
            stop_process(pidfile, conf)


def _control(*args):
    return subprocess.run(
        ["nsd-control", "-c", str(CONF), *args],
        capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30,
    )  # fmt: skip


def _check_conf():
    check = subprocess.run(["nsd-checkconf", str(CONF)], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"nsd config: {check.stderr}")


def _serves(origin, serial):
    """True once nsd answers the SOA of `origin` with `serial` (zone loaded)."""
    import dns.message
    import dns.query
    import dns.rdatatype

    query = dns.message.make_query(origin, dns.rdatatype.SOA)
    try:
        answer = dns.query.udp(query, GATEWAY, port=PORT, timeout=0.5)
    except (OSError, dns.exception.DNSException):
        return False
    return any(rdata.serial == serial for rrset in answer.answer for rdata in rrset)


def restart(timeout=15):
    """(Re)start nsd with every zone in ZONE_DIR (the test network must exist)."""
    stop()
    ZONE_DIR.mkdir(parents=True, exist_ok=True)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    _write_conf()
    _check_conf()
    start_daemon(
        ["nsd", "-d", "-c", str(CONF)],
        f"nsd-s{SLOT}.out",
        _answers,
        f"nsd on {GATEWAY}:{PORT} (log {LOG_DIR}/nsd-s{SLOT}.log)",
        pidfile=PIDFILE,
        timeout=timeout,
    )


def _reload():
    """Make the running nsd load new, changed and removed zones without a gap
    (or start it with them, saying so, when this slot's nsd is gone)."""
    if _pid() is None:
        print(f"[harness] nsd of slot {SLOT} is not running: starting it", file=sys.stderr)
        restart()
        return
    _write_conf()
    _check_conf()
    for args in (("reconfig",), ("reload",)):
        proc = _control(*args)
        if proc.returncode != 0:
            raise RuntimeError(f"nsd-control {args[0]}: {proc.stdout}{proc.stderr}")


def _serial(text):
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 7 and fields[1:3] == ["IN", "SOA"]:
            return int(fields[5])
    return None


def _touch_newer(path, before):
    """nsd reloads a zone file whose mtime changed: make sure it did, even for
    two writes within the file system's timestamp granularity."""
    now = time.time_ns()
    if before is not None and now <= before:
        now = before + 1_000_000_000
    os.utime(path, ns=(now, now))


def set_zones(zone_texts, replace=False, timeout=15):
    """Write {origin: zone text} (see zone_text) and have nsd serve them; returns
    once nsd answers every written zone's SOA with its new serial."""
    from . import network_address

    network_address()  # nsd binds the slot's gateway: its network must exist
    ZONE_DIR.mkdir(parents=True, exist_ok=True)
    if replace:
        for old in ZONE_DIR.glob("*.zone"):
            if old.name[: -len(".zone")] not in {o.rstrip(".") for o in zone_texts}:
                old.unlink()
    serials = {}
    for origin, text in zone_texts.items():
        origin = origin.rstrip(".")
        path = ZONE_DIR / f"{origin}.zone"
        before = path.stat().st_mtime_ns if path.exists() else None
        path.write_text(text)
        _touch_newer(path, before)
        check = subprocess.run(["nsd-checkzone", origin, str(path)], capture_output=True, text=True)
        if check.returncode != 0:
            raise ValueError(f"zone {origin}: {check.stdout}{check.stderr}")
        serials[origin] = _serial(text)
    if _pid() is None:
        restart()
    else:
        _reload()
    deadline = time.monotonic() + timeout
    pending = {o: s for o, s in serials.items() if s is not None}
    while pending:
        pending = {o: s for o, s in pending.items() if not _serves(o, s)}
        if not pending:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"nsd does not serve the new zones {sorted(pending)}")
        time.sleep(0.1)


def set_zone(origin, text):
    set_zones({origin: text})


def clear():
    """Stop this slot's nsd and forget its zones (what a dead session left)."""
    stop()
    for old in ZONE_DIR.glob("*.zone"):
        old.unlink()
