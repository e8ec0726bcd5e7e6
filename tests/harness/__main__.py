"""python -m tests.harness up|down|status|shell  (also reached through ./cmsalt).

These commands work on harness slot 0 (see tests/harness/__init__.py): run them
with CMSALT_SLOT=0, as ./cmsalt does.  Test sessions never take slot 0, so the
relay of `up` lives beside them.
"""

import argparse
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request

from tests.saltopts import write_pillar_tree

from . import CACHE, RELAY_IP, RELAY_NAME, SLOT, dns, docker, hosts, network, slots_in_use

UP_PILLAR = CACHE / "up-pillar"


def write_up_pillar(domain):
    # max_load_1m: containers see the load average of the whole (shared) machine
    return write_pillar_tree(UP_PILLAR, {"params": {"max_load_1m": 100}, "domains": {domain: {}}})


def new_account(ip, domain, timeout=15):
    """POST https://<ip>/new with Host: <domain>; returns the parsed JSON or an error string."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    req = urllib.request.Request(
        f"https://{ip}/new", data=b"", method="POST", headers={"Host": domain}
    )
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=timeout) as resp:
            body = resp.read().decode()
    except (OSError, urllib.error.URLError) as exc:
        return f"not served yet ({exc})"
    try:
        return json.loads(body)
    except ValueError:
        return f"unexpected answer: {body[:200]!r}"


def cmd_up(args):
    t0 = time.monotonic()
    pillar_dir = write_up_pillar(args.domain)
    running_fqdn = None
    if docker.running():
        proc = docker.docker("inspect", "--format", "{{.Config.Hostname}}", RELAY_NAME, check=False)
        running_fqdn = proc.stdout.strip() if proc.returncode == 0 else None
    host = hosts.boot(
        RELAY_NAME,
        args.domain,
        ip=RELAY_IP,
        pillar_dir=pillar_dir,
        reuse=running_fqdn == args.domain and not args.fresh,
        keep=True,
    )
    print(f"[harness] host {host.name} up ({time.monotonic() - t0:.0f}s); converging", flush=True)
    result = hosts.converge(host, sls=args.sls, test=args.test)
    print(result.summary())
    for sid in result.changed:
        print(f"  changed: {sid}")
    ip, dom = host.ip, args.domain
    print(
        f"""
container : {host.name}   (./cmsalt shell {host.name}; DOCKER_HOST={docker.HOST})
address   : {ip}   domain {dom}
IMAP      : {ip}:143 (STARTTLS)  {ip}:993 (TLS)
SMTP      : {ip}:25 (MX)  {ip}:465 (TLS submission)  {ip}:587 (STARTTLS submission)
web       : https://{ip}/   (Host: {dom}; self-signed)"""
    )
    account = new_account(ip, dom) if result.ok or not args.sls else "skipped"
    if isinstance(account, dict):
        print(f"account   : {account.get('email')}  password {account.get('password')}")
        if account.get("dclogin_url"):
            print(f"dclogin   : {account['dclogin_url']}")
        else:
            print(f"new       : {json.dumps(account)}")
    else:
        print(f"/new      : {account}")
    print(f"[harness] done in {time.monotonic() - t0:.0f}s")
    return 0 if result.ok else 1


def cmd_down(_args):
    busy = slots_in_use()
    hosts.teardown_all(stop_daemons=True)
    if busy:
        print(f"[harness] hosts of idle slots removed; slots {busy} are in use by test"
              " sessions, so their hosts, the apt proxy and dockerd stay")  # fmt: skip
    else:
        print("[harness] test hosts, networks, nsd, apt proxy and dockerd stopped")
    return 0


def cmd_status(_args):
    up = docker.running()
    print(f"dockerd   : {'running on ' + docker.HOST if up else 'stopped'}")
    print(f"apt proxy : {'running' if network._acng_pid() else 'stopped'}")
    print(f"nsd       : {'serving ' + ', '.join(dns.zones()) if dns._pid() else 'stopped'}")
    print(f"slots     : in use by test sessions: {slots_in_use() or 'none'}")
    for name, status, ip in hosts.list_hosts(slot=None):
        print(f"{name:28} {ip:16} {status}")
    return 0


def cmd_shell(args):
    os.environ["DOCKER_HOST"] = docker.HOST
    cmd = ["docker", "exec", "-it", args.host, "bash", "-l"]
    os.execvp("docker", cmd)


def main(argv=None):
    if SLOT != 0:
        sys.exit("python -m tests.harness works on slot 0: run it as ./cmsalt does,"
                 " with CMSALT_SLOT=0")  # fmt: skip
    parser = argparse.ArgumentParser(prog="python -m tests.harness")
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="boot the relay test host and converge it")
    up.add_argument("--domain", default="chatmail.test")
    up.add_argument("--sls", default=None, help="apply only these SLS (comma-separated)")
    up.add_argument("--test", action="store_true", help="state.apply test=True")
    up.add_argument("--fresh", action="store_true", help="replace a running host by a new one")
    sub.add_parser("down", help="remove test hosts, network, apt proxy, dockerd")
    sub.add_parser("status", help="show test hosts")
    shell = sub.add_parser("shell", help="bash in a test host")
    shell.add_argument("host", nargs="?", default=RELAY_NAME)
    args = parser.parse_args(argv)
    return {"up": cmd_up, "down": cmd_down, "status": cmd_status, "shell": cmd_shell}[args.cmd](
        args
    )


if __name__ == "__main__":
    sys.exit(main())
