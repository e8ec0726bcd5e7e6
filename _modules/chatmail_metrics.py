"""
Prometheus metrics of a chatmail relay that only Salt's modules can compute:
certificate expiry, the live DNS check and the unit states per domain
(``write_status``, run by the ``chatmail-status-metrics`` timer into the node
exporter's textfile directory), and the scrape targets a relay publishes in
the salt mine for the fleet's Prometheus (``targets``).

The files it reads are written by the ``chatmail.metrics`` states:
``/etc/chatmail/metrics-targets.json`` (exporter -> host:port) and
``/etc/chatmail/metrics-status.json`` (the DNS check's arguments per domain,
rendered from the pillar, so the timer needs no pillar of its own).
"""

import calendar
import json
import logging
import os
import tempfile
import time

log = logging.getLogger(__name__)

__virtualname__ = "chatmail_metrics"

# filled in by the salt loader
__salt__ = {}

TARGETS_FILE = "/etc/chatmail/metrics-targets.json"
STATUS_ARGS_FILE = "/etc/chatmail/metrics-status.json"
STATUS_FILE = "/var/lib/chatmail-metrics/chatmail-status.prom"

FAMILIES = {
    "chatmail_status_timestamp_seconds": ("gauge", "When the status below was taken."),
    "chatmail_service_up": ("gauge", "1 if the chatmail unit is active."),
    "chatmail_tls_cert_expiry_timestamp_seconds": (
        "gauge",
        "notAfter of the certificate, served (port 993 with SNI) or on file.",
    ),
    "chatmail_tls_cert_days_left": (
        "gauge",
        "Days until the first of the served and the file certificate expires.",
    ),
    "chatmail_tls_cert_ok": (
        "gauge",
        "1 if both the served and the file certificate of the domain could be read.",
    ),
    "chatmail_dns_check_ok": ("gauge", "1 if every required DNS record is published."),
    "chatmail_dns_check_problems": ("gauge", "Required DNS records missing or wrong."),
    "chatmail_dns_check_warnings": ("gauge", "Recommended DNS records missing or wrong."),
    "chatmail_mailbox_disk_used_ratio": ("gauge", "Used share of the mailbox filesystem."),
}


def __virtual__():
    return __virtualname__


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def targets(path=TARGETS_FILE):
    """
    The relay's exporters as ``{"node": "host:port", "postfix": ..., "mtail":
    ..., "dovecot": ...}`` (empty when metrics are switched off).  Published
    in the salt mine; the fleet Prometheus turns it into file_sd targets.

    CLI Example:

    .. code-block:: bash

        salt '*' chatmail_metrics.targets
    """
    data = _read_json(path)
    return data if isinstance(data, dict) else {}


def _escape(value):
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _not_after(text):
    """Epoch seconds of chatmail_status's 'YYYY-MM-DDThh:mm:ssZ', or None."""
    try:
        return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))
    except (TypeError, ValueError):
        return None


def status_text(report, dns=None, now=None):
    """
    The Prometheus text of a ``chatmail_status.report`` result and a
    ``chatmail_dns.status`` result (``dns`` may be None: no DNS metrics).

    CLI Example:

    .. code-block:: bash

        salt-call chatmail_metrics.status_text "$(salt-call --out=json chatmail_status.report)"
    """
    samples = {name: [] for name in FAMILIES}
    samples["chatmail_status_timestamp_seconds"].append(({}, int(now or time.time())))
    for unit, state in sorted((report.get("services") or {}).items()):
        samples["chatmail_service_up"].append(({"unit": unit}, int(state == "active")))
    for domain, entry in sorted((report.get("domains") or {}).items()):
        cert = (entry or {}).get("cert") or {}
        readable = 1
        for source in ("served", "file"):
            info = cert.get(source)
            expires = _not_after(info.get("not_after")) if isinstance(info, dict) else None
            if expires is None:
                readable = 0
                continue
            labels = {"domain": domain, "source": source}
            samples["chatmail_tls_cert_expiry_timestamp_seconds"].append((labels, expires))
        if "days_left" in cert:
            samples["chatmail_tls_cert_days_left"].append(({"domain": domain}, cert["days_left"]))
        samples["chatmail_tls_cert_ok"].append(({"domain": domain}, readable))
    for domain, entry in sorted((dns or {}).items()):
        if not isinstance(entry, dict) or entry.get("skipped"):
            continue
        labels = {"domain": domain}
        samples["chatmail_dns_check_ok"].append((labels, int(bool(entry.get("ok")))))
        samples["chatmail_dns_check_problems"].append((labels, len(entry.get("problems") or [])))
        samples["chatmail_dns_check_warnings"].append((labels, len(entry.get("warnings") or [])))
    disk = report.get("disk") or {}
    if "used_percent" in disk:
        ratio = round(float(disk["used_percent"]) / 100.0, 4)
        samples["chatmail_mailbox_disk_used_ratio"].append(({}, ratio))
    out = []
    for name, (kind, help_text) in FAMILIES.items():
        if not samples[name]:
            continue
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples[name]:
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
            out.append(f"{name}{{{text}}} {value}" if text else f"{name} {value}")
    return "\n".join(out) + "\n"


def _write_atomic(path, text):
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".chatmail-status.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_status(path=STATUS_FILE, args_file=STATUS_ARGS_FILE, dns=True):
    """
    Take the relay's status (``chatmail_status.report``) and, unless
    ``dns=False``, the live DNS check of every domain (``chatmail_dns.check``
    with the arguments the highstate wrote to ``args_file``), and write them
    as Prometheus text to ``path`` (atomically).  Returns a short summary.

    CLI Example:

    .. code-block:: bash

        salt-call --local chatmail_metrics.write_status
    """
    report = __salt__["chatmail_status.report"]()
    dns_result = None
    if dns:
        args = _read_json(args_file) or {}
        nameservers = args.get("nameservers") or None
        dns_result = {}
        for domain, kwargs in sorted((args.get("domains") or {}).items()):
            try:
                res = __salt__["chatmail_dns.check"](
                    domain, nameservers=nameservers, **(kwargs or {})
                )
            except Exception as exc:  # one broken domain must not hide the others
                res = {"ok": False, "problems": [f"check failed: {exc}"], "warnings": []}
            dns_result[domain] = res
    text = status_text(report, dns_result)
    _write_atomic(path, text)
    return {
        "path": path,
        "domains": sorted(report.get("domains") or {}),
        "dns_ok": {d: bool(r.get("ok")) for d, r in (dns_result or {}).items()},
    }
