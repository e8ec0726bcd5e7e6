"""
Health check of a chatmail relay as a state (``salt/chatmail/status.sls``).

``chatmail_status.healthy`` fails, naming the domain and what is wrong, when a
chatmail unit is not active, a certificate (served on 993 or its file) expires
within ``days_left`` days or cannot be read, or the mailbox filesystem is
fuller than ``max_disk_percent``.  It only looks: ``changes`` is always empty,
with or without ``test=True``, so it never disturbs the zero-changes rerun of
a highstate.
"""

__virtualname__ = "chatmail_status"


def __virtual__():
    if "chatmail_status.report" not in __salt__:
        return (False, "chatmail_status: the chatmail_status execution module is not loaded")
    return __virtualname__


def _domain_problems(entry, days_left):
    problems = []
    for unit in entry.get("services", {}).get("down", []):
        problems.append(f"unit {unit} is not active")
    cert = entry.get("cert") or {}
    for kind, label in (("served", "certificate served on 993"), ("file", "certificate file")):
        info = cert.get(kind) or {}
        where = f" {info['path']}" if info.get("path") else ""
        if "error" in info:
            problems.append(f"{label}{where}: {info['error']}")
        elif "days_left" in info and info["days_left"] < days_left:
            problems.append(
                f"{label}{where} expires in {info['days_left']} days"
                f" ({info.get('not_after', '?')}, threshold {days_left})"
            )
    return problems


def _problems(report, days_left=14, max_disk_percent=90):
    """
    ``({domain: [problem, ...]}, [host problem, ...])`` of a
    ``chatmail_status.report`` result (only domains with problems are listed).
    Host problems (mailbox filesystem, unreadable configuration) concern
    every domain of the relay.
    """
    host = list(report.get("errors") or [])
    if not report.get("domains"):
        host.append("no chatmail domains found")
    disk = report.get("disk") or {}
    if "error" in disk:
        host.append(f"mailbox filesystem {disk.get('path', '?')}: {disk['error']}")
    elif disk.get("used_percent", 0) >= float(max_disk_percent):
        host.append(
            f"mailbox filesystem {disk['path']} is {disk['used_percent']}% full"
            f" (threshold {max_disk_percent}%, {disk.get('free', 0) // 2**20} MiB free)"
        )
    per_domain = {}
    for domain, entry in sorted((report.get("domains") or {}).items()):
        found = _domain_problems(entry, int(days_left))
        if found:
            per_domain[domain] = found
    return per_domain, host


def healthy(name, days_left=14, max_disk_percent=90, ini=None):
    """
    Check that the relay is healthy for every chatmail domain it serves.

    name
        Any id; not used.
    days_left
        Fail when a certificate has fewer days left than this.
    max_disk_percent
        Fail when the mailbox filesystem is at least this full (percent).
    ini
        chatmaild's configuration naming the domains and the mailbox
        directory (default: ``lookup:paths:ini`` of the merged map).

    .. code-block:: yaml

        chatmail relay healthy:
          chatmail_status.healthy:
            - days_left: 14
            - max_disk_percent: 90
    """
    ret = {"name": name, "changes": {}, "result": True, "comment": ""}
    report = __salt__["chatmail_status.report"](ini=ini)
    per_domain, host = _problems(report, days_left=days_left, max_disk_percent=max_disk_percent)
    lines = []
    for domain in sorted(report.get("domains") or {}):
        domain_lines = per_domain.get(domain, []) + host
        if domain_lines:
            lines.append(f"{domain}: " + "; ".join(domain_lines))
    if not report.get("domains") and host:
        lines.append("; ".join(host))
    if lines:
        ret["result"] = False
        ret["comment"] = "\n".join(lines)
        return ret
    certs = [
        entry["cert"]["days_left"]
        for entry in report["domains"].values()
        if "days_left" in entry.get("cert", {})
    ]
    ret["comment"] = (
        f"{len(report['domains'])} domain(s) healthy: {len(report['services'])} units active,"
        f" certificates valid for {min(certs) if certs else '?'}+ days,"
        f" mailbox filesystem {report['disk'].get('used_percent', '?')}% full"
    )
    return ret
