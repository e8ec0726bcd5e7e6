#!/usr/bin/python3
"""Relay status for the salt mine (run by cmd.script; prints one JSON object).

services: state of every chatmail unit; certs: expiry of the certificate the
relay serves on 993 for each domain (as a client would see it); queue: mails
in the Postfix queue; accounts: address directories per domain; disk: use of
the mailbox filesystem.  Only the standard library and tools of the relay.
"""

import configparser
import json
import os
import shutil
import socket
import ssl
import subprocess
import time

INI = "/etc/chatmail/chatmail.ini"
UNITS = [
    "postfix",
    "dovecot",
    "opendkim",
    "nginx",
    "unbound",
    "doveauth",
    "filtermail",
    "filtermail-incoming",
    "chatmail-metadata",
    "lastlogin",
]


def run(*argv):
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout


def read_params():
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(INI)
        return dict(parser["params"])
    except (configparser.Error, KeyError):
        return {}


def services():
    out = run("systemctl", "is-active", *UNITS) or ""
    states = out.split()
    if len(states) != len(UNITS):
        return {unit: "unknown" for unit in UNITS}
    return dict(zip(UNITS, states, strict=True))


def cert_expiry(domain):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    sni = None if domain.replace(".", "").isdigit() else domain
    try:
        with socket.create_connection(("127.0.0.1", 993), timeout=5) as sock:
            with ctx.wrap_socket(sock, server_hostname=sni) as tls:
                der = tls.getpeercert(binary_form=True)
    except OSError as exc:
        return {"error": str(exc)}
    proc = subprocess.run(
        ["openssl", "x509", "-inform", "DER", "-noout", "-enddate"],
        input=der,
        capture_output=True,
    )
    text = proc.stdout.decode().strip()
    if not text.startswith("notAfter="):
        return {"error": proc.stderr.decode().strip() or "unreadable certificate"}
    not_after = text.split("=", 1)[1]
    expires = ssl.cert_time_to_seconds(not_after)
    return {"not_after": not_after, "days_left": int((expires - time.time()) // 86400)}


def queue_length():
    out = run("postqueue", "-j")
    if out is None:
        return None
    return sum(1 for line in out.splitlines() if line.strip())


def accounts(mailboxes_dir, domain):
    path = os.path.join(mailboxes_dir, domain)
    try:
        return sum(1 for entry in os.scandir(path) if entry.is_dir() and "@" in entry.name)
    except OSError:
        return 0


def disk(path):
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        return None
    return {
        "path": path,
        "total": usage.total,
        "free": usage.free,
        "used_percent": round(100.0 * (usage.total - usage.free) / usage.total, 1),
    }


def main():
    params = read_params()
    domains = sorted(params.get("mail_domain", "").split())
    mailboxes_dir = params.get("mailboxes_dir", "/home/vmail/mail")
    status = {
        "time": int(time.time()),
        "domains": domains,
        "services": services(),
        "certs": {domain: cert_expiry(domain) for domain in domains},
        "queue": queue_length(),
        "accounts": {domain: accounts(mailboxes_dir, domain) for domain in domains},
        "disk": disk(mailboxes_dir if os.path.isdir(mailboxes_dir) else "/"),
    }
    print(json.dumps(status, sort_keys=True))


if __name__ == "__main__":
    main()
