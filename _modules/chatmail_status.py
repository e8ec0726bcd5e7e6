"""
Health of a chatmail relay, per domain.

``report()`` looks at the relay as it runs, not at what salt would render:

- the domains and the mailbox directory come from chatmaild's own
  configuration file (``/etc/chatmail/chatmail.ini``), the file every chatmail
  daemon reads, so the report describes the deployed relay even where no
  pillar is at hand (``salt-call --local``, the mine, a relay set up by hand);
- services: ``systemctl is-active`` of every chatmail unit (``UNITS``, and
  ``OPTIONAL_UNITS`` when enabled: coturn, the echobot);
- certificates: the one Dovecot hands out on port 993 for the domain's SNI
  (IP domains: without SNI) and the file Dovecot's configuration names for it;
- queue: Postfix queue entries whose sender or a recipient is an address of
  the domain, and the host total per queue;
- accounts: address directories under ``<mailboxes_dir>/<domain>``;
- disk: bytes below ``<mailboxes_dir>/<domain>``, and the mailbox filesystem;
- dovecot (host-wide): the installed Dovecot, whether it is the patched build
  (version ``...+chatmail<N>``, docs/dovecot.md) and whether Debian has a newer
  ``dovecot-core`` than the one it was built from (``outdated``: a security
  update the pinned build keeps out; ``warnings`` says so).

Only the standard library and tools of a relay (systemctl, openssl, doveconf,
postqueue, du, dpkg-query, apt-cache, dpkg) are used, each bounded by a
timeout.  A missing tool, a stopped service or an unreadable file shows up
as an ``error`` entry, never as an exception.
"""

import datetime
import hashlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import time

__virtualname__ = "chatmail_status"

# The long-running units of a chatmail relay, in start order.  The one list:
# the state module, the fleet runner and the host tests use it.
UNITS = (
    "unbound",
    "opendkim",
    "doveauth",
    "lastlogin",
    "chatmail-metadata",
    "dovecot",
    "filtermail",
    "filtermail-incoming",
    "postfix",
    "nginx",
)
# Units of components a pillar switch turns on or off (chatmail:turn,
# chatmail:echobot): checked when enabled, which the highstate does exactly
# when the switch is on (its clean state disables them).
OPTIONAL_UNITS = (
    "coturn",
    "chatmail-echobot",
)

DEFAULT_MAILBOXES_DIR = "/home/vmail/mail"
TIMEOUT = 10


def __virtual__():
    return __virtualname__


# ---------------------------------------------------------------------------
# helpers


def _run(argv, timeout=TIMEOUT, data=None):
    """(stdout bytes, None) or (None, error text); never raises."""
    try:
        proc = subprocess.run(
            argv,
            input=data,
            stdin=None if data is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        return None, f"{argv[0]} not found"
    except subprocess.TimeoutExpired:
        return None, f"{argv[0]} timed out after {timeout}s"
    except OSError as exc:
        return None, f"{argv[0]}: {exc}"
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        return proc.stdout, (err[-1] if err else f"{argv[0]} exited {proc.returncode}")
    return proc.stdout, None


def _ini_path(path):
    """``path``, else ``lookup:paths:ini`` of the merged map."""
    return path or __utils__["chatmail_util.lookup"](__salt__)["paths"]["ini"]


def read_ini(path=None):
    """
    ``{"domains": [...], "mailboxes_dir": ...}`` from a chatmail.ini (the
    domains as listed in ``mail_domain``, primary first), or ``{"error": ...}``.
    ``path`` defaults to ``lookup:paths:ini`` of the merged map.

    CLI Example:

    .. code-block:: bash

        salt-call chatmail_status.read_ini
    """
    path = _ini_path(path)
    try:
        conf = __utils__["chatmail_util.read_ini"](path)
    except ValueError as exc:
        return {"error": str(exc)}
    if conf is None:
        return {"error": f"{path}: FileNotFoundError: no such file"}
    mbdir = conf["mailboxes_dir"] or DEFAULT_MAILBOXES_DIR
    if not conf["domains"]:
        return {"error": f"{path}: mail_domain names no domain", "mailboxes_dir": mbdir}
    return {"domains": conf["domains"], "mailboxes_dir": mbdir}


def _is_ip(domain):
    return __utils__["chatmail_util.is_ip"](domain)


def _address_domain(address):
    if not isinstance(address, str) or "@" not in address:
        return ""
    return address.rsplit("@", 1)[1].strip().lower().rstrip(".").strip("[]")


# ---------------------------------------------------------------------------
# probes


def units():
    """
    The chatmail units of this relay: ``UNITS``, and those of
    ``OPTIONAL_UNITS`` that are enabled (``systemctl is-enabled``).

    CLI Example:

    .. code-block:: bash

        salt-call chatmail_status.units
    """
    return _units()


def _units():
    out, _err = _run(["systemctl", "is-enabled", *OPTIONAL_UNITS])
    answers = out.decode(errors="replace").split() if out is not None else []
    if len(answers) != len(OPTIONAL_UNITS):
        # a unit that does not exist answers on stderr only: ask one by one
        answers = []
        for unit in OPTIONAL_UNITS:
            one, _err = _run(["systemctl", "is-enabled", unit])
            answers.append(one.decode(errors="replace").strip() if one is not None else "")
    enabled = [u for u, a in zip(OPTIONAL_UNITS, answers, strict=True) if a == "enabled"]
    return list(UNITS) + enabled


def services(units=None):
    """
    ``{unit: state}`` for the chatmail units (``systemctl is-active``:
    active, inactive, failed, activating, ...); ``unknown`` when systemctl
    cannot tell.  Default: every unit ``units()`` names.

    CLI Example:

    .. code-block:: bash

        salt-call chatmail_status.services
    """
    units = list(units or _units())
    out, err = _run(["systemctl", "is-active", *units])
    states = out.decode(errors="replace").split() if out is not None else []
    if len(states) != len(units):
        # is-active exits non-zero when a unit is not active: that is an
        # answer; only a short answer (no systemd, timeout) is unknown
        return {unit: "unknown" + (f" ({err})" if err else "") for unit in units}
    return dict(zip(units, states, strict=True))


def _cert_info(der):
    """not_after/days_left/sha256 of a DER certificate, via openssl."""
    info = {"sha256": hashlib.sha256(der).hexdigest()}
    out, err = _run(["openssl", "x509", "-inform", "DER", "-noout", "-enddate"], data=der)
    text = out.decode(errors="replace").strip() if out else ""
    if err or not text.startswith("notAfter="):
        info["error"] = err or "unreadable certificate"
        return info
    try:
        expires = ssl.cert_time_to_seconds(text.split("=", 1)[1])
    except ValueError as exc:
        info["error"] = f"unreadable notAfter: {exc}"
        return info
    info["not_after"] = datetime.datetime.fromtimestamp(expires, datetime.UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    info["days_left"] = int((expires - time.time()) // 86400)
    return info


def served_cert(domain, host="127.0.0.1", port=993, timeout=TIMEOUT):
    """
    The certificate a client gets on ``host:port`` asking for ``domain`` by
    SNI (no SNI for an IP domain): ``{"not_after", "days_left", "sha256"}``
    or ``{"error"}``.

    CLI Example:

    .. code-block:: bash

        salt-call chatmail_status.served_cert chat.example.org
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    sni = None if _is_ip(domain) else domain
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            with ctx.wrap_socket(sock, server_hostname=sni) as tls:
                der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError, ValueError) as exc:
        return {"error": f"{host}:{port}: {exc}"}
    if not der:
        return {"error": f"{host}:{port}: no certificate"}
    return _cert_info(der)


def _dovecot_certs():
    """({local_name or "": cert path}, error) from ``doveconf -n``."""
    out, err = _run(["doveconf", "-n"])
    if out is None or (err and not out):
        return {}, err or "doveconf gave no output"
    paths, scope, depth = {}, "", 0
    for raw in out.decode(errors="replace").splitlines():
        line = raw.strip()
        if line.endswith("{"):
            depth += 1
            words = line[:-1].split()
            if depth == 1 and len(words) == 2 and words[0] == "local_name":
                scope = words[1].lower()
            continue
        if line == "}":
            depth = max(0, depth - 1)
            if depth == 0:
                scope = ""
            continue
        key, sep, value = line.partition("=")
        if not sep or key.strip() != "ssl_cert":
            continue
        if depth == 0:
            paths[""] = value.strip().lstrip("<").strip()
        elif depth == 1 and scope:
            paths[scope] = value.strip().lstrip("<").strip()
    return paths, None


def _file_cert(path):
    try:
        with open(path, "rb") as fh:
            pem = fh.read().decode("ascii", errors="replace")
        der = ssl.PEM_cert_to_DER_cert(
            pem[: pem.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")]
        )
    except (OSError, ValueError) as exc:
        return {"path": path, "error": f"{exc.__class__.__name__}: {exc}"}
    return {"path": path, **_cert_info(der)}


def _queue():
    """(entries, error): the JSON records of ``postqueue -j``."""
    out, err = _run(["postqueue", "-j"])
    if out is None or err:
        return None, err or "postqueue gave no output"
    entries = []
    for line in out.decode(errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            entries.append(json.loads(line))
        except ValueError:
            continue
    return entries, None


def _queue_domains(entry):
    found = {_address_domain(entry.get("sender"))}
    for rcpt in entry.get("recipients") or []:
        if isinstance(rcpt, dict):
            found.add(_address_domain(rcpt.get("address")))
    found.discard("")
    return found


def _accounts(path):
    try:
        with os.scandir(path) as entries:
            return sum(1 for e in entries if "@" in e.name and e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return 0
    except OSError as exc:
        return {"error": f"{exc.__class__.__name__}: {exc}"}


def _du(path, timeout):
    if not os.path.isdir(path):
        return {"path": path, "used_bytes": 0}
    out, err = _run(["du", "-s", "--block-size=1", path], timeout=timeout)
    try:
        return {"path": path, "used_bytes": int(out.split()[0])}
    except (AttributeError, IndexError, ValueError):
        return {"path": path, "error": err or "du gave no size"}


def _filesystem(path):
    probe = path
    while probe and not os.path.isdir(probe):
        probe = os.path.dirname(probe.rstrip("/")) or "/"
    try:
        usage = shutil.disk_usage(probe)
    except OSError as exc:
        return {"path": path, "error": f"{exc.__class__.__name__}: {exc}"}
    used = usage.total - usage.free
    return {
        "path": probe,
        "total": usage.total,
        "used": used,
        "free": usage.free,
        "used_percent": round(100.0 * used / usage.total, 1) if usage.total else 0.0,
    }


PATCHED_MARK = "+chatmail"


def _version_gt(a, b):
    """dpkg's order: is version a newer than b? (None when dpkg cannot tell)"""
    out, err = _run(["dpkg", "--compare-versions", a, "gt", b])
    if out is None:
        return None
    return err is None


def dovecot(package="dovecot-core"):
    """
    The installed Dovecot and whether a patched build fell behind Debian::

        {"installed": "1:2.3.19.1+dfsg1-2.1+deb12u6+chatmail1",
         "patched": True,             # a build of chatmail:dovecot:source patched
         "built_from": "1:2.3.19.1+dfsg1-2.1+deb12u6",
         "debian": "1:2.3.19.1+dfsg1-2.1+deb12u7",   # newest Debian version apt knows
         "outdated": True}            # Debian's is newer than the build's source

    ``debian`` comes from apt's lists as of the last ``apt-get update`` (every
    highstate refreshes them); a build is outdated when Debian has a newer
    ``dovecot-core`` than the source it was built from -- typically a security
    update that the pin keeps out: rebuild (``./cmsalt build-dovecot``) and
    re-apply.  ``{"error": ...}`` when dpkg knows no such package.

    CLI Example:

    .. code-block:: bash

        salt-call chatmail_status.dovecot
    """
    out, err = _run(["dpkg-query", "-W", "-f=${Version}\t${db:Status-Abbrev}", package])
    fields = out.decode(errors="replace").split("\t") if out else []
    if err or len(fields) != 2 or not fields[1].startswith("ii"):
        return {"error": f"{package} is not installed" + (f" ({err})" if err else "")}
    installed = fields[0].strip()
    info = {"installed": installed, "patched": PATCHED_MARK in installed}
    info["built_from"] = installed.split(PATCHED_MARK, 1)[0] if info["patched"] else installed
    out, err = _run(["apt-cache", "madison", package])
    debian = None
    for line in (out or b"").decode(errors="replace").splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) < 3 or parts[0] != package or PATCHED_MARK in parts[1]:
            continue
        if debian is None or _version_gt(parts[1], debian):
            debian = parts[1]
    info["debian"] = debian
    if debian is None:
        info["outdated"] = False
        if err:
            info["error"] = f"apt-cache: {err}"
        return info
    info["outdated"] = bool(info["patched"] and _version_gt(debian, info["built_from"]))
    return info


# ---------------------------------------------------------------------------
# the report


def report(ini=None, host="127.0.0.1", port=993, timeout=TIMEOUT):
    """
    Status of the relay per chatmail domain, and host-wide.

    Returns::

        {
          "time": <epoch>, "ini": <path>, "mailboxes_dir": <path>,
          "services": {unit: state},                 # every unit of units()
          "queue": {"total": n, "deferred": n, ...} | {"error": ...},
          "disk": {"path", "total", "used", "free", "used_percent"},
          "dovecot": {"installed", "patched", "built_from", "debian", "outdated"},
          "errors": [...],                           # unreadable config etc.
          "warnings": [...],                         # e.g. an outdated Dovecot build
          "domains": {
            <domain>: {
              "services": {"up": n, "total": n, "down": [unit, ...]},
              "cert": {"served": {...}, "file": {...}, "days_left": n,
                       "matches_file": bool},
              "queue": n | None,                    # entries for its addresses
              "accounts": n,
              "disk": {"path", "used_bytes"},
            }, ...
          },
        }

    ``cert.days_left`` is the smaller of the served and the file certificate
    (missing when neither could be read).

    CLI Example:

    .. code-block:: bash

        salt-call chatmail_status.report
        salt-call --local chatmail_status.report --out=json
    """
    timeout = float(timeout)
    errors = []
    ini = _ini_path(ini)
    conf = read_ini(ini)
    if "error" in conf:
        errors.append(conf["error"])
    domains = conf.get("domains", [])
    mailboxes_dir = conf.get("mailboxes_dir", DEFAULT_MAILBOXES_DIR)

    units = services()
    down = sorted(unit for unit, state in units.items() if state != "active")

    entries, qerr = _queue()
    if entries is None:
        queue = {"error": qerr}
    else:
        queue = {"total": len(entries)}
        for entry in entries:
            name = str(entry.get("queue_name") or "unknown")
            queue[name] = queue.get(name, 0) + 1

    cert_paths, cerr = _dovecot_certs()
    if cerr:
        errors.append(f"dovecot certificate paths: {cerr}")

    out_domains = {}
    for domain in domains:
        served = served_cert(domain, host=host, port=port, timeout=timeout)
        path = cert_paths.get(domain) or cert_paths.get("")
        filed = _file_cert(path) if path else {"error": cerr or "no ssl_cert in dovecot"}
        days = [c["days_left"] for c in (served, filed) if "days_left" in c]
        cert = {"served": served, "file": filed}
        if days:
            cert["days_left"] = min(days)
        if "sha256" in served and "sha256" in filed:
            cert["matches_file"] = served["sha256"] == filed["sha256"]
        out_domains[domain] = {
            "services": {"up": len(units) - len(down), "total": len(units), "down": down},
            "cert": cert,
            "queue": None
            if entries is None
            else sum(1 for e in entries if domain in _queue_domains(e)),
            "accounts": _accounts(os.path.join(mailboxes_dir, domain)),
            "disk": _du(os.path.join(mailboxes_dir, domain), timeout=timeout * 6),
        }

    warnings = []
    dove = dovecot()
    if dove.get("outdated"):
        warnings.append(
            f"dovecot: the patched build {dove['installed']} is older than Debian's"
            f" dovecot-core {dove['debian']} (a security update?): rebuild it"
            " (./cmsalt build-dovecot) and apply chatmail.dovecot"
        )

    return {
        "time": int(time.time()),
        "ini": ini,
        "mailboxes_dir": mailboxes_dir,
        "services": units,
        "queue": queue,
        "disk": _filesystem(mailboxes_dir),
        "dovecot": dove,
        "errors": errors,
        "warnings": warnings,
        "domains": out_domains,
    }
