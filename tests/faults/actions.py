"""Faults done to a relay test host (tests/harness) while tests/faults/load.py
sends mail: shared by tests/faults and bench/bench_faults.py.

Every helper returns once the fault is over (or has been done, for a kill);
recovery is left to the relay: nothing here restarts a service it broke.
"""

from __future__ import annotations

import time

from _modules.chatmail_status import UNITS
from tests.harness import NETWORK, dns, hosts
from tests.harness.docker import docker as docker_cli

# the unit whose main process is postfix's master (postfix.service is Debian's
# dummy wrapper)
UNIT_OF = {"postfix": "postfix@-", "dovecot": "dovecot"}


def unit_name(unit):
    return UNIT_OF.get(unit, unit)


def main_pid(host, unit):
    """The unit's main process as systemd knows it; postfix: its master's pid
    file (what the unit must track, see salt/chatmail/postfix/config.sls)."""
    if unit == "postfix":
        out = host.exec("cat", "/var/spool/postfix/pid/master.pid", check=False).stdout
        return int(out.strip() or 0)
    out = host.exec("systemctl", "show", "-p", "MainPID", "--value", unit_name(unit)).stdout
    return int(out.strip() or 0)


def kill9(host, unit):
    """kill -9 of the unit's main process (a chatmaild daemon, postfix's or
    dovecot's master), as a crash would; returns the killed pid."""
    pid = main_pid(host, unit)
    if not pid:
        raise RuntimeError(f"{host.name}: {unit} has no main process")
    host.exec("kill", "-9", str(pid))
    return pid


def wait_back(host, units=UNITS, old_pids=None, timeout=120):
    """Seconds until every unit is active again (with a new main process where
    old_pids says which one died); raises TimeoutError naming the ones that
    are not."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        down = [u for u in units if not host.is_active(unit_name(u))]
        for unit, pid in (old_pids or {}).items():
            if unit not in down and main_pid(host, unit) in (0, pid):
                down.append(unit)
        if not down:
            return time.monotonic() - start
        if time.monotonic() > deadline:
            raise TimeoutError(f"{host.name}: not back after {timeout}s: {down}")
        time.sleep(0.3)


def reboot(host, timeout=300):
    """docker stop (systemd shuts down: SIGRTMIN+3) and start; waits for
    systemd, not for the chatmail units (see wait_back)."""
    docker_cli("stop", "-t", "90", host.name, timeout=180)
    docker_cli("start", host.name, timeout=120)
    hosts.wait_running(host, timeout=timeout)


def disconnect(host):
    """The host unreachable: off the test network (its address is kept)."""
    docker_cli("network", "disconnect", NETWORK, host.name, timeout=60)


def reconnect(host):
    docker_cli("network", "connect", "--ip", host.ip, NETWORK, host.name, timeout=60)


def small_mailboxes(host, size="48m"):
    """Mount a tmpfs of `size` on the mailboxes directory (empty: make the
    accounts afterwards) and restart what keeps it open or sees it through
    its own mount namespace; returns the directory."""
    mailboxes = "/home/vmail/mail"
    # the per-domain directories the highstate made, with their modes
    host.sh(
        f"""set -e; cd {mailboxes}
        dirs=$(for d in */; do d=${{d%/}}; echo "$d:$(stat -c %a "$d")"; done)
        mount -t tmpfs -o size={size},mode=0700,uid=$(id -u vmail),gid=$(id -g vmail) \\
          tmpfs {mailboxes}
        for e in $dirs; do
          install -d -o vmail -g vmail -m "${{e##*:}}" "{mailboxes}/${{e%:*}}"
        done
        systemctl restart doveauth lastlogin chatmail-metadata dovecot"""
    )
    return mailboxes


def fill(host, directory):
    """Fill the filesystem of `directory` up (a root-owned file); returns its path."""
    path = f"{directory}/.faults-filler"
    host.sh(f"dd if=/dev/zero of={path} bs=1M status=none; sync", check=False, timeout=300)
    avail = host.sh(f"df --output=avail -B1 {directory} | tail -1").stdout.strip()
    if int(avail) > 1 << 20:
        raise RuntimeError(f"{directory} still has {avail} bytes free after filling")
    return path


def free(host, path):
    host.exec("rm", "-f", path)


def unmount_mailboxes(host, directory):
    host.sh(
        f"umount -l {directory}; systemctl restart doveauth lastlogin chatmail-metadata dovecot",
        check=False,
    )


def nsd_down():
    """Stop the harness nsd of this slot (the authoritative server of every
    test domain); nsd_up() starts it again with the same zones."""
    dns.stop()


def nsd_up():
    dns.restart()


def flush_dns(host, zones):
    """Make the host's unbound forget what it knows of `zones`."""
    hosts.flush_resolver([host], zones)


def replace_certificate(host, domain):
    """Renew a tls mode 'self' certificate: a new key and certificate written
    beside the old ones and renamed over them, then what a renewal hook does
    (chatmail-tls-reload.service's reload of postfix, dovecot and nginx)."""
    d = f"/etc/chatmail/tls/{domain}"
    host.sh(
        f"""set -e; cd {d}
        umask 077
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \\
          -subj '/CN={domain}' -addext 'subjectAltName=DNS:{domain}' \\
          -keyout privkey.pem.new -out fullchain.pem.new 2>/dev/null
        chmod 0644 fullchain.pem.new
        mv privkey.pem.new privkey.pem; mv fullchain.pem.new fullchain.pem
        systemctl try-reload-or-restart postfix dovecot nginx""",
        timeout=120,
    )
