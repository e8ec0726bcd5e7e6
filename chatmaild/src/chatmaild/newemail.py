"""chatmail-newemail: CGI program behind ``POST https://<domain>/new``.

nginx passes the request to fcgiwrap, which runs this program with the CGI
environment.  The chatmail domain is taken from ``HTTP_HOST`` (port
stripped), falling back to ``SERVER_NAME``; it must be one of the configured
domains (``404`` otherwise).  Only ``POST`` is allowed (``405``).  The reply
is JSON::

    {"email": "<random localpart>@<address domain>", "password": "<random>"}

plus ``"dclogin_url"`` when the domain uses self-signed TLS
(``tls_mode = self``: IP relays, ``_name`` and ``.test`` domains), so a
Delta Chat client can scan it and accept the certificate.  Nothing is
stored: the account is created by doveauth on the first login.  When
doveauth would refuse to create it (the kill switch ``nocreate_file``
exists, the host is short of resources, ...), ``/new`` answers
``503`` with ``{"error": "..."}`` instead of credentials that cannot log in.
nginx limits the requests per client IP (``limit_req``).

Usage: ``chatmail-newemail [<chatmail.ini>]`` (default: ``$CHATMAIL_INI`` or
``/etc/chatmail/chatmail.ini``).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import string
import sys
from urllib.parse import quote

from .config import ConfigError, read_config
from .doveauth import creation_refusal

log = logging.getLogger("chatmaild.newemail")

DEFAULT_INI = "/etc/chatmail/chatmail.ini"
LOCALPART_CHARS = string.ascii_lowercase + string.digits
PASSWORD_CHARS = string.ascii_letters + string.digits
PASSWORD_LENGTH = 20


def random_string(chars: str, length: int) -> str:
    return "".join(secrets.choice(chars) for _ in range(length))


def host_from_environ(environ) -> str:
    host = (environ.get("HTTP_HOST") or environ.get("SERVER_NAME") or "").strip().lower()
    if host.startswith("["):
        # [v6-or-v4-literal]:port
        end = host.find("]")
        return host[: end + 1] if end > 0 else ""
    if host.count(":") == 1:
        host = host.split(":")[0]
    return host.rstrip(".")


def new_account(dc) -> dict:
    """Credentials for a fresh random account of domain config ``dc``."""
    localpart = random_string(LOCALPART_CHARS, dc.username_max_length)
    password = random_string(PASSWORD_CHARS, max(PASSWORD_LENGTH, dc.password_min_length))
    result = {"email": f"{localpart}@{dc.address_domain}", "password": password}
    if dc.tls_mode == "self":
        result["dclogin_url"] = dclogin_url(dc, result["email"], password)
    return result


def dclogin_url(dc, email: str, password: str) -> str:
    """A ``dclogin:`` URL with explicit IMAP/SMTP host, implicit TLS and
    invalid certificates accepted (``ic=3``, ``sc=3``)."""
    host = dc.mail_domain
    params = [
        f"p={quote(password, safe='')}",
        "v=1",
        f"ih={host}",
        "ip=993",
        "is=ssl",
        "ic=3",
        f"sh={host}",
        "sp=465",
        "ss=ssl",
        "sc=3",
    ]
    return f"dclogin:{quote(email, safe='@[]')}?" + "&".join(params)


def respond(status: str | None, body: dict | str) -> str:
    lines = []
    if status:
        lines.append(f"Status: {status}")
    if isinstance(body, dict):
        lines.append("Content-Type: application/json")
        payload = json.dumps(body)
    else:
        lines.append("Content-Type: text/plain; charset=utf-8")
        payload = body
    if status and status.startswith("405"):
        lines.append("Allow: POST")
    lines.append("Cache-Control: no-store")
    return "\n".join(lines) + "\n\n" + payload + "\n"


# What the client is told when doveauth would refuse to create the account
# (the reason itself goes to the log only).
DISABLED = "account creation is disabled on this relay"
BUSY = "this relay cannot create accounts right now, try again later"


def handle(config, environ) -> str:
    method = environ.get("REQUEST_METHOD", "").upper()
    dc = config.for_domain(host_from_environ(environ))
    if dc is None:
        return respond("404 Not Found", "unknown chatmail domain")
    if method != "POST":
        return respond("405 Method Not Allowed", "use POST")
    account = new_account(dc)
    # Never hand out credentials that doveauth refuses at the first login:
    # the same creation policy (kill switch, resource brakes, name rules).
    reason = creation_refusal(config, account["email"], account["password"])
    if reason:
        log.warning("/new refused for %s: %s", dc.mail_domain, reason)
        message = DISABLED if os.path.exists(config.nocreate_file) else BUSY
        return respond("503 Service Unavailable", {"error": message})
    return respond(None, account)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    inipath = argv[0] if argv else os.environ.get("CHATMAIL_INI", DEFAULT_INI)
    try:
        config = read_config(inipath)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        sys.stdout.write(respond("500 Internal Server Error", "configuration error"))
        return 2
    sys.stdout.write(handle(config, os.environ))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
