"""
Fleet view of chatmail relays for the salt master, built from the salt mine
(published by every minion, see pillar/fleet/mine.sls) and the master's job
cache (results of the scheduled highstates), read through Salt's returner
interface (``get_jids``/``get_jid`` of the configured ``master_job_cache`` or
``ext_job_cache``, as ``salt-run jobs.*`` does), so any job cache works.

- ``records``: the DNS records of every chatmail domain in the fleet
- ``dns``: the live DNS check result per domain
- ``status``: one line per relay: last highstate, services, certificates,
  queue, accounts, disk
- ``report``: all three

The master finds this module through ``runner_dirs`` (etc/salt/master.d).
"""

import contextlib
import logging

import salt.minion

log = logging.getLogger(__name__)

# filled in by the salt loader
__salt__ = {}
__opts__ = {}

__virtualname__ = "chatmail_fleet"

MINE_ZONES = "chatmail_dns.zone_fragments"
MINE_DKIM = "chatmail_dkim.list_keys"
MINE_DNS = "chatmail_dns.status"
MINE_STATUS = "chatmail_status.report"
HIGHSTATE_FUNS = ("state.highstate", "state.apply")


def __virtual__():
    return __virtualname__


def _mine(fun, tgt, tgt_type):
    data = __salt__["mine.get"](tgt, fun, tgt_type=tgt_type) or {}
    return {minion: value for minion, value in data.items() if value is not None}


def _domains(tgt, tgt_type):
    """{domain: [minion, ...]} from the published zone fragments and DKIM keys."""
    owners = {}
    for source in (MINE_ZONES, MINE_DKIM):
        for minion, value in _mine(source, tgt, tgt_type).items():
            if not isinstance(value, dict):
                continue
            for domain in value:
                owners.setdefault(domain, [])
                if minion not in owners[domain]:
                    owners[domain].append(minion)
    return {domain: sorted(minions) for domain, minions in sorted(owners.items())}


def _dkim_in_zone(zone, domain, selector, public):
    """True when the zone text carries the DKIM key (its TXT may be split in strings)."""
    name = f"{selector}._domainkey"
    joined = "".join(part for part in zone.split('"')[1::2])
    return name in zone and public in joined


def domains(tgt="*", tgt_type="glob"):
    """
    Return ``{domain: [minion, ...]}`` for every chatmail domain the fleet
    publishes.  A domain listed with two minions is served twice (a move in
    progress or a pillar mistake).

    CLI Example:

    .. code-block:: bash

        salt-run chatmail_fleet.domains
    """
    return _domains(tgt, tgt_type)


def records(tgt="*", tgt_type="glob", text=True):
    """
    Return the DNS records (zone fragments) of every chatmail domain in the
    fleet as one zone-file text, each domain headed by the relay serving it.
    The relay's published DKIM public key is checked against its fragment;
    mismatches and domains served by two relays are flagged in the text.
    ``text=False`` returns ``{domain: {"minion", "zone", "dkim", "problems"}}``.

    CLI Example:

    .. code-block:: bash

        salt-run chatmail_fleet.records
        salt-run chatmail_fleet.records text=False --out=json
    """
    zones = _mine(MINE_ZONES, tgt, tgt_type)
    keys = _mine(MINE_DKIM, tgt, tgt_type)
    out = {}
    for domain, minions in _domains(tgt, tgt_type).items():
        minion = minions[0]
        zone = (zones.get(minion) or {}).get(domain, "")
        dkim = (keys.get(minion) or {}).get(domain, {})
        problems = []
        if len(minions) > 1:
            problems.append("served by several relays: " + ", ".join(minions))
        if not zone:
            problems.append(f"{minion} published no zone fragment")
        for selector, public in sorted(dkim.items()):
            if zone and not _dkim_in_zone(zone, domain, selector, public):
                problems.append(f"DKIM key {selector} of {minion} is not in the zone fragment")
        out[domain] = {"minion": minion, "zone": zone, "dkim": dkim, "problems": problems}
    if not text:
        return out
    chunks = []
    for domain, entry in out.items():
        head = [f"; {domain} -- relay {entry['minion']}"]
        head += [f"; PROBLEM: {problem}" for problem in entry["problems"]]
        chunks.append("\n".join(head) + "\n" + entry["zone"].rstrip("\n") + "\n")
    return "\n".join(chunks) if chunks else "; no chatmail domains published in the mine"


def dns(tgt="*", tgt_type="glob"):
    """
    Return the live DNS check per domain as each relay last published it
    (``chatmail_dns.status`` in the mine): ``{domain: {"minion", "ok",
    "problems", "warnings"}}``.  Run ``salt '*' mine.update`` first for a
    fresh check.

    CLI Example:

    .. code-block:: bash

        salt-run chatmail_fleet.dns
    """
    out = {}
    for minion, report in sorted(_mine(MINE_DNS, tgt, tgt_type).items()):
        if not isinstance(report, dict):
            continue
        for domain, entry in sorted(report.items()):
            if not isinstance(entry, dict):
                continue
            out[domain] = {
                "minion": minion,
                "ok": bool(entry.get("ok")),
                "problems": list(entry.get("problems") or []),
                "warnings": list(entry.get("warnings") or []),
            }
            if entry.get("skipped"):
                out[domain]["skipped"] = entry["skipped"]
    return out


def _is_busy(ret):
    """The refusal a run gets while another state run is going (not a result)."""
    return isinstance(ret, list) and any("is running as PID" in str(item) for item in ret)


def _is_highstate_return(ret):
    if isinstance(ret, dict):
        return bool(ret) and all("_|-" in key and isinstance(ret[key], dict) for key in ret)
    # a highstate that failed before any state (render or pillar error)
    return isinstance(ret, list) and all(isinstance(item, str) for item in ret)


def _state_summary(ret):
    if isinstance(ret, list):
        return {
            "result": False,
            "states": 0,
            "failed": 0,
            "changed": 0,
            "errors": ret,
            "changed_ids": [],
        }
    failed = [key for key, value in ret.items() if value.get("result") is False]
    changed = [key for key, value in ret.items() if value.get("changes")]
    return {
        "result": not failed,
        "states": len(ret),
        "failed": len(failed),
        "changed": len(changed),
        "errors": [key.split("_|-")[1] for key in failed[:5]],
        "changed_ids": [key.split("_|-")[1] for key in changed[:10]],
    }


def _jid_time(jid):
    """UTC time of a jid (YYYYMMDDhhmmssffffff) as 'YYYY-MM-DD hh:mm:ss'."""
    if len(jid) < 14 or not jid[:14].isdigit():
        return jid
    return f"{jid[0:4]}-{jid[4:6]}-{jid[6:8]} {jid[8:10]}:{jid[10:12]}:{jid[12:14]}"


@contextlib.contextmanager
def _job_cache():
    """(returner functions, name of the job cache) as ``salt-run jobs.*`` use
    them: ``ext_job_cache`` when set, else ``master_job_cache``."""
    name = __opts__.get("ext_job_cache") or __opts__.get("master_job_cache") or "local_cache"
    mminion = salt.minion.MasterMinion(__opts__, states=False, rend=False)
    try:
        yield mminion.returners, name
    finally:
        mminion.destroy()


def _load_fun_args(load):
    """(function, arguments) of a job as get_jids or get_load give it."""
    if not isinstance(load, dict):
        return None, []
    fun = load.get("Function") or load.get("fun")
    args = load.get("Arguments")
    if args is None:
        args = load.get("arg")
    return fun, list(args or [])


def _is_highstate_job(fun, args):
    if fun not in HIGHSTATE_FUNS:
        return False
    # state.apply with named SLS is not a highstate
    return not (
        fun == "state.apply"
        and any(isinstance(arg, str) and "=" not in arg and arg != "" for arg in args)
    )


def _highstate_jids(returners, cache):
    """Highstate jids in the job cache, newest first."""
    jids = returners[f"{cache}.get_jids"]() or {}
    if isinstance(jids, dict):
        entries = jids.items()
    else:  # returners that list jids only
        entries = ((jid, returners[f"{cache}.get_load"](jid)) for jid in jids)
    found = []
    for jid, load in entries:
        fun, args = _load_fun_args(load)
        if _is_highstate_job(fun, args):
            found.append(str(jid))
    return sorted(found, reverse=True)


def _minion_return(value):
    """The function's return from a get_jid entry ({"return": ...} or bare)."""
    if isinstance(value, dict) and "return" in value:
        return value["return"]
    return value


def last_highstates(tgt="*", tgt_type="glob"):
    """
    Return ``{minion: {"jid", "time", "result", "states", "failed", "changed",
    "errors"}}``: the newest highstate each minion returned to the master,
    scheduled or started from the master, read from the master's job cache
    through the returner interface (any ``master_job_cache``).  Jobs are read
    newest first and the search stops once every relay in the mine has its
    result.

    CLI Example:

    .. code-block:: bash

        salt-run chatmail_fleet.last_highstates
    """
    minions = set(_mine(MINE_STATUS, tgt, tgt_type)) | set(_mine(MINE_ZONES, tgt, tgt_type))
    latest = {}
    with _job_cache() as (returners, cache):
        for jid in _highstate_jids(returners, cache):
            if minions and minions <= set(latest):
                break
            returns = returners[f"{cache}.get_jid"](jid) or {}
            for minion, value in returns.items():
                if minion in latest or (minions and minion not in minions):
                    continue
                ret = _minion_return(value)
                if _is_busy(ret) or not _is_highstate_return(ret):
                    continue
                entry = {"jid": jid, "time": _jid_time(jid)}
                entry.update(_state_summary(ret))
                latest[minion] = entry
    return dict(sorted(latest.items()))


def _cert_summary(domains):
    """(days left of the first certificate to expire, [domains whose served
    certificate or certificate file could not be read])"""
    days, errors = [], []
    for domain, entry in sorted(domains.items()):
        cert = entry.get("cert") if isinstance(entry, dict) else None
        if not isinstance(cert, dict):
            errors.append(domain)
            continue
        if "days_left" in cert:
            days.append(cert["days_left"])
        for kind in ("served", "file"):
            info = cert.get(kind)
            if not isinstance(info, dict) or "error" in info:
                errors.append(domain)
                break
    return (min(days) if days else None), errors


def _status_row(minion, status, last):
    """One line of the table from a chatmail_status.report result."""
    services = status.get("services") or {}
    down = sorted(unit for unit, state in services.items() if state != "active")
    domains = status.get("domains") or {}
    days, cert_errors = _cert_summary(domains)
    queue = status.get("queue") or {}
    accounts = [e.get("accounts") for e in domains.values() if isinstance(e, dict)]
    disk = status.get("disk") or {}
    if last:
        outcome = "ok" if last["result"] else f"FAILED({last['failed'] or 'render'})"
        highstate = f"{outcome} {last['time']}"
    else:
        highstate = "never"
    return {
        "minion": minion,
        "domains": ",".join(sorted(domains)),
        "highstate": highstate,
        "services": f"{len(services) - len(down)}/{len(services)}"
        + (f" down:{','.join(down)}" if down else ""),
        "cert_days": ("-" if days is None else str(days))
        + (f" err:{','.join(cert_errors)}" if cert_errors else ""),
        "queue": str(queue["total"]) if "total" in queue else "-",
        "accounts": str(sum(n for n in accounts if isinstance(n, int))),
        "disk": f"{disk['used_percent']}%" if "used_percent" in disk else "-",
    }


def _status_data(tgt, tgt_type):
    raw = _mine(MINE_STATUS, tgt, tgt_type)
    last = last_highstates(tgt, tgt_type)
    rows = []
    for minion in sorted(set(raw) | set(last)):
        # not a dict: the minion has not synced chatmail_status yet (an error text)
        status = raw.get(minion)
        status = status if isinstance(status, dict) else {}
        rows.append((_status_row(minion, status, last.get(minion)), status, last.get(minion)))
    return rows


COLUMNS = ["minion", "domains", "highstate", "services", "cert_days", "queue", "accounts", "disk"]


def status(tgt="*", tgt_type="glob", text=True):
    """
    Fleet status table, one line per relay: last highstate result and time,
    services up, days until the first certificate expires, Postfix queue
    length, accounts, mailbox disk use.  ``text=False`` returns the data
    (``{minion: {"row", "status", "highstate"}}``; ``status`` is the relay's
    ``chatmail_status.report``, with the details per domain).

    CLI Example:

    .. code-block:: bash

        salt-run chatmail_fleet.status
    """
    rows = _status_data(tgt, tgt_type)
    if not text:
        return {row["minion"]: {"row": row, "status": st, "highstate": hs} for row, st, hs in rows}
    table = [COLUMNS] + [[row[col] for col in COLUMNS] for row, _st, _hs in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in table
    )


def _dns_text(result):
    lines = []
    for domain, entry in result.items():
        if entry.get("skipped"):
            verdict = f"skipped ({entry['skipped']})"
        else:
            verdict = "OK" if entry["ok"] else "MISSING/WRONG"
        lines.append(f"{domain} ({entry['minion']}): {verdict}")
        lines += [f"  problem: {p}" for p in entry["problems"]]
        lines += [f"  warning: {w}" for w in entry["warnings"]]
    return "\n".join(lines) if lines else "no DNS check results in the mine"


def report(tgt="*", tgt_type="glob"):
    """
    Everything at once: the DNS records of every domain, the DNS check per
    domain and the fleet status table.

    CLI Example:

    .. code-block:: bash

        salt-run chatmail_fleet.report
    """
    return "\n\n".join(
        [
            "=== DNS records ===\n" + records(tgt, tgt_type),
            "=== DNS check ===\n" + _dns_text(dns(tgt, tgt_type)),
            "=== Fleet status ===\n" + status(tgt, tgt_type),
        ]
    )
