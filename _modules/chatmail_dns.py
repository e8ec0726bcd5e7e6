"""
DNS of chatmail domains: the MTA-STS policy and its id, the records a domain
needs (structured and as a zone-file fragment), and a live check of those
records against the domain's authoritative name servers.

The MTA-STS policy text served by nginx and the ``_mta-sts`` id published in
DNS both come from :py:func:`mta_sts_policy`, so they cannot disagree.

IP-address "domains" (IP-only relays) have no DNS: :py:func:`records` returns
an empty list and :py:func:`check` reports the check as skipped.

:depends: dnspython (only for :py:func:`check`)
"""

import hashlib
import ipaddress
import logging
import os
import re

try:
    import dns.exception
    import dns.flags
    import dns.message
    import dns.name
    import dns.query
    import dns.rcode
    import dns.rdatatype
    import dns.resolver

    HAS_DNSPYTHON = True
except ImportError:  # pragma: no cover - depends on the minion's python
    HAS_DNSPYTHON = False

from salt.exceptions import CommandExecutionError, SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "chatmail_dns"

DEFAULT_TTL = 3600
DEFAULT_MAX_AGE = 2419200
DEFAULT_SELECTOR = "opendkim"
SPF = "v=spf1 a -all"
DMARC = "v=DMARC1;p=reject;adkim=s;aspf=s"
SRV_SERVICES = (
    ("_submission._tcp", 587),
    ("_submissions._tcp", 465),
    ("_imap._tcp", 143),
    ("_imaps._tcp", 993),
)
# TXT records are told apart by their leading tag (several TXT records may
# share a name, e.g. SPF next to a site verification token at the apex)
TXT_TAGS = ("v=spf1", "v=DMARC1", "v=DKIM1", "v=STSv1", "v=TLSRPTv1")


def __virtual__():
    return __virtualname__


# ---------------------------------------------------------------------------
# helpers


def _pillar(key, default):
    """A pillar value as default for an argument (see _utils/chatmail_util.py)."""
    return __utils__["chatmail_util.pillar_get"](__salt__, key, default)


def _domain(domain):
    """The canonical domain (the rule of _utils/chatmail_util.py)."""
    return __utils__["chatmail_util.domain_arg"](domain, "domain name")


def is_ip_domain(domain):
    """
    Return True when ``domain`` is an IP address (``1.2.3.4`` or ``[1.2.3.4]``):
    an IP-only relay, for which DNS does not apply.

    CLI Example:

    .. code-block:: bash

        salt '*' chatmail_dns.is_ip_domain 1.2.3.4
    """
    return __utils__["chatmail_util.is_ip"](domain)


def _fqdn(name):
    return name.rstrip(".").lower() + "."


def _mx_hosts(domain, mx):
    if not mx:
        return [domain]
    if isinstance(mx, str):
        mx = [part for part in mx.replace(",", " ").split() if part]
    return [_domain(host) for host in mx]


def _pick_address(candidates, version):
    """First usable address of ``version``: public before private; never
    loopback, link-local, multicast or unspecified."""
    public, private = [], []
    for text in candidates or []:
        try:
            addr = ipaddress.ip_address(str(text).split("%")[0])
        except ValueError:
            continue
        if addr.version != version:
            continue
        if addr.is_loopback or addr.is_link_local or addr.is_multicast or addr.is_unspecified:
            continue
        (private if addr.is_private else public).append(str(addr))
    if public:
        return public[0]
    if private and version == 4:
        return private[0]
    return None


def _grain(name):
    try:
        return __grains__.get(name, [])
    except NameError:
        return []


def _addresses(ipv4, ipv6):
    """Resolve the A/AAAA addresses: explicit values win, empty/None means
    "from grains", False (or "none") means "do not publish"."""

    def one(value, version, grain):
        if value is False or (isinstance(value, str) and value.lower() in ("none", "false")):
            return None
        if value:
            try:
                addr = ipaddress.ip_address(str(value).strip())
            except ValueError as exc:
                raise SaltInvocationError(str(exc)) from None
            if addr.version != version:
                raise SaltInvocationError(f"not an IPv{version} address: {value}")
            return str(addr)
        return _pick_address(_grain(grain), version)

    return one(ipv4, 4, "ipv4"), one(ipv6, 6, "ipv6")


def _record(name, rtype, value, required, ttl=DEFAULT_TTL):
    return {"name": name, "type": rtype, "ttl": ttl, "value": value, "required": required}


def _split_txt(value, size=255):
    if not value:
        return [""]
    return [value[i : i + size] for i in range(0, len(value), size)]


def _quote_txt(value):
    parts = []
    for chunk in _split_txt(value):
        escaped = chunk.replace("\\", "\\\\").replace('"', '\\"')
        parts.append(f'"{escaped}"')
    return " ".join(parts)


def _txt_params(value):
    """Parse ``k=v; k=v`` tag lists (DKIM, MTA-STS, DMARC) into a dict."""
    params = {}
    for part in value.split(";"):
        if "=" in part:
            key, val = part.split("=", 1)
            params[key.strip()] = "".join(val.split())
    return params


# ---------------------------------------------------------------------------
# MTA-STS


def mta_sts_policy(domain, mx=None, max_age=DEFAULT_MAX_AGE, crlf=False):
    """
    Return the exact text of ``https://mta-sts.<domain>/.well-known/mta-sts.txt``:
    ``key: value`` lines, mode enforce, the relay itself as MX unless ``mx``
    names other hosts.

    Lines end in LF, which RFC 8461 allows (``sts-policy-term = LF / CRLF``)
    and which Salt's ``file.managed`` keeps byte for byte (it rewrites CRLF),
    so the served file hashes to :py:func:`mta_sts_id`.  ``crlf=True`` gives
    CRLF line ends for servers that do not go through ``file.managed``.

    CLI Example:

    .. code-block:: bash

        salt '*' chatmail_dns.mta_sts_policy example.org
        salt '*' chatmail_dns.mta_sts_policy example.org max_age=86400
    """
    domain = _domain(domain)
    max_age = int(max_age)
    if not 0 <= max_age <= 31557600:
        raise SaltInvocationError(f"mta_sts max_age out of range (0..31557600): {max_age}")
    lines = ["version: STSv1", "mode: enforce"]
    lines += [f"mx: {host}" for host in _mx_hosts(domain, mx)]
    lines.append(f"max_age: {max_age}")
    end = "\r\n" if crlf else "\n"
    return "".join(line + end for line in lines)


def mta_sts_id(domain, mx=None, max_age=DEFAULT_MAX_AGE):
    """
    Return the MTA-STS policy id published in ``_mta-sts.<domain>`` TXT: the
    first 16 hex digits of the SHA-256 of the policy text.  It is stable
    across runs and hosts and changes exactly when the policy changes.

    CLI Example:

    .. code-block:: bash

        salt '*' chatmail_dns.mta_sts_id example.org
    """
    text = mta_sts_policy(domain, mx=mx, max_age=max_age)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------------------
# expected records


def records(
    domain,
    ipv4=None,
    ipv6=None,
    selector=DEFAULT_SELECTOR,
    keydir=None,
    tlsrpt="",
    caa=True,
    acme_account_uri="",
    mx=None,
    max_age=DEFAULT_MAX_AGE,
    ttl=DEFAULT_TTL,
):
    """
    Return the DNS records ``domain`` needs, as a list of dicts
    ``{"name": "<fqdn>.", "type", "ttl", "value", "required"}``.

    TXT values are the joined text (split into 255-character strings only in
    the zone file).  ``ipv4``/``ipv6`` default to the host's first public
    (else, for IPv4, private) address from the grains; ``ipv6=False`` leaves
    out the AAAA record.  The DKIM record needs the key to exist in ``keydir``
    (see ``chatmail_dkim.generate``); without a key it is left out.

    Required: A (or AAAA when there is no IPv4), MX, SPF, DMARC, DKIM,
    ``_mta-sts`` and ``mta-sts``.  Recommended: AAAA next to A, ``www``, SRV,
    CAA, TLS-RPT.  An IP address as domain returns ``[]``.

    CLI Example:

    .. code-block:: bash

        salt '*' chatmail_dns.records example.org
        salt '*' chatmail_dns.records example.org ipv4=192.0.2.1 tlsrpt=postmaster@example.org
    """
    if is_ip_domain(domain):
        return []
    domain = _domain(domain)
    apex = _fqdn(domain)
    ttl = int(ttl)
    ipv4, ipv6 = _addresses(ipv4, ipv6)
    out = []
    if ipv4:
        out.append(_record(apex, "A", ipv4, True, ttl))
    if ipv6:
        out.append(_record(apex, "AAAA", ipv6, not ipv4, ttl))
    for host in _mx_hosts(domain, mx):
        out.append(_record(apex, "MX", f"10 {_fqdn(host)}", True, ttl))
    out.append(_record(apex, "TXT", SPF, True, ttl))
    out.append(_record(f"_dmarc.{apex}", "TXT", DMARC, True, ttl))
    dkim = __salt__["chatmail_dkim.txt_value"](domain, selector=selector, keydir=keydir)
    if dkim:
        out.append(_record(f"{selector}._domainkey.{apex}", "TXT", dkim, True, ttl))
    sts_id = mta_sts_id(domain, mx=mx, max_age=max_age)
    out.append(_record(f"_mta-sts.{apex}", "TXT", f"v=STSv1; id={sts_id}", True, ttl))
    out.append(_record(f"mta-sts.{apex}", "CNAME", apex, True, ttl))
    out.append(_record(f"www.{apex}", "CNAME", apex, False, ttl))
    for service, port in SRV_SERVICES:
        out.append(_record(f"{service}.{apex}", "SRV", f"0 1 {port} {apex}", False, ttl))
    if caa:
        issuer = "letsencrypt.org"
        if acme_account_uri and re.search(r'[\s"\\;]', str(acme_account_uri)):
            raise SaltInvocationError(f"invalid acme_account_uri: {acme_account_uri!r}")
        if acme_account_uri:
            issuer += f";accounturi={acme_account_uri}"
        out.append(_record(apex, "CAA", f'0 issue "{issuer}"', False, ttl))
    if tlsrpt:
        if re.search(r'[\s";,!]', str(tlsrpt)):
            raise SaltInvocationError(f"invalid tlsrpt address: {tlsrpt!r}")
        rua = tlsrpt if ":" in tlsrpt else f"mailto:{tlsrpt}"
        out.append(_record(f"_smtp._tls.{apex}", "TXT", f"v=TLSRPTv1;rua={rua}", False, ttl))
    return out


def zone_fragment(domain, **kwargs):
    """
    Return the records of ``domain`` (same arguments as :py:func:`records`)
    as zone-file text: absolute names, explicit TTL and class on every line,
    TXT values quoted and split into strings of at most 255 characters.
    Required records come first.  An IP address as domain gives a comment only.

    CLI Example:

    .. code-block:: bash

        salt '*' chatmail_dns.zone_fragment example.org
    """
    kwargs = {k: v for k, v in kwargs.items() if not k.startswith("__")}
    recs = records(domain, **kwargs)
    if not recs:
        return f"; {domain}: IP-address relay, no DNS records\n"
    width = max(len(r["name"]) for r in recs)
    lines = [f"; chatmail DNS records for {_domain(domain)}"]
    for title, required in (("required", True), ("recommended", False)):
        group = [r for r in recs if r["required"] is required]
        if not group:
            continue
        lines.append(f"; {title}")
        for rec in group:
            value = _quote_txt(rec["value"]) if rec["type"] == "TXT" else rec["value"]
            lines.append(f"{rec['name']:<{width}} {rec['ttl']:>6} IN {rec['type']:<5} {value}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# live check


def _parse_server(text, default_port=53):
    text = str(text).strip()
    if text.startswith("["):  # [v6]:port
        host, _, port = text[1:].partition("]")
        return host, int(port.lstrip(":") or default_port)
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, default_port


def _resolver(resolvers):
    if not resolvers:
        return dns.resolver.Resolver()
    res = dns.resolver.Resolver(configure=False)
    servers = [_parse_server(s) for s in resolvers]
    res.nameservers = [host for host, _ in servers]
    res.port = servers[0][1]
    res.lifetime = 5.0
    return res


def _authoritative(domain, resolvers, port):
    """Addresses of the authoritative servers of the zone holding ``domain``."""
    res = _resolver(resolvers)
    zone = dns.resolver.zone_for_name(domain, resolver=res)
    ns_hosts = sorted(str(r.target) for r in res.resolve(zone, "NS"))
    servers = []
    for host in ns_hosts:
        for rtype in ("A", "AAAA"):
            try:
                servers += [(r.address, int(port)) for r in res.resolve(host, rtype)]
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
    if not servers:
        raise CommandExecutionError(f"no address for the name servers of {zone}: {ns_hosts}")
    return str(zone), servers


class _Querier:
    """Ask authoritative servers directly (no cache, recursion not desired);
    UDP first, TCP when the answer is truncated.  A server that fails is
    moved to the back, so a dead server costs one timeout, not one per query."""

    def __init__(self, servers, timeout):
        self.servers = list(servers)
        self.timeout = timeout
        self.used = None

    def _ask(self, query, host, port):
        response, _ = dns.query.udp_with_fallback(query, host, timeout=self.timeout, port=port)
        rcode = response.rcode()
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            raise CommandExecutionError(dns.rcode.to_text(rcode))
        if not response.flags & dns.flags.AA and not response.answer:
            raise CommandExecutionError("not authoritative (referral or empty cache)")
        return response

    def __call__(self, name, rtype):
        query = dns.message.make_query(name, rtype)
        query.flags &= ~dns.flags.RD
        errors = []
        for server in list(self.servers):
            host, port = server
            try:
                response = self._ask(query, host, port)
            except (dns.exception.DNSException, OSError, CommandExecutionError) as exc:
                errors.append(f"{host}:{port}: {exc}")
                self.servers.remove(server)
                self.servers.append(server)
                continue
            self.used = f"{host}:{port}"
            qname = dns.name.from_text(name)
            qtype = dns.rdatatype.from_text(rtype)
            for rrset in response.answer:
                if rrset.name == qname and rrset.rdtype == qtype:
                    return list(rrset)
            return []
        raise CommandExecutionError(f"no answer for {name} {rtype}: " + "; ".join(errors))


def _found_text(rtype, rdata):
    if rtype == "TXT":
        return b"".join(rdata.strings).decode("utf-8", "replace")
    return rdata.to_text().lower() if rtype in ("MX", "CNAME", "SRV") else rdata.to_text()


def _txt_tag(value):
    squeezed = value.replace(" ", "").lower()
    return next((t for t in TXT_TAGS if squeezed.startswith(t.lower())), None)


def _spf_ok(value, addresses):
    """An SPF record authorises the relay when it names it by ``a``, ``mx``
    or its address, and ends in ``-all`` or ``~all``."""
    terms = value.lower().split()[1:]
    if not terms or terms[-1] not in ("-all", "~all"):
        return False
    allowed = {"a", "+a", "mx", "+mx"}
    for addr in addresses:
        allowed |= {f"ip4:{addr}", f"+ip4:{addr}", f"ip6:{addr}", f"+ip6:{addr}"}
    return any(term in allowed for term in terms[:-1])


def _compare_txt(rec, found):
    expected = rec["value"]
    tag = _txt_tag(expected)
    candidates = [f for f in found if _txt_tag(f) == tag]
    if not candidates:
        return "missing", found, "missing"
    want = _txt_params(expected)
    if tag == "v=DKIM1":
        have = [_txt_params(c).get("p", "") for c in candidates]
        if want["p"] in have:
            return "ok", candidates, ""
        shown = " ".join(_short(p) for p in have)
        return "wrong", candidates, f"wrong: p=<{shown}>, expected p=<{_short(want['p'])}>"
    if tag == "v=STSv1":
        have = [_txt_params(c).get("id", "") for c in candidates]
        if want["id"] in have:
            return "ok", candidates, ""
        return "wrong", candidates, f"wrong: id={','.join(have)}, expected id={want['id']}"
    if tag == "v=spf1":
        if len(candidates) > 1:
            return "wrong", candidates, f"wrong: {len(candidates)} SPF records, expected one"
        if _spf_ok(candidates[0], rec.get("_addresses", [])):
            return "ok", candidates, ""
    else:
        # DMARC, TLS-RPT: every tag we publish must have our value; more tags are fine
        for cand in candidates:
            have = {k.lower(): v.lower() for k, v in _txt_params(cand).items()}
            if all(have.get(k.lower()) == v.lower() for k, v in want.items()):
                return "ok", candidates, ""
    return "wrong", candidates, f"wrong: {' | '.join(candidates)}, expected {expected}"


def _compare_caa(rec, found):
    expected = rec["value"]
    if not found:
        return "missing", found, "missing"
    want = "".join(expected.split('"')[1].split())
    for value in found:
        parts = value.split(None, 2)
        if len(parts) != 3 or parts[1].lower() != "issue":
            continue
        have = "".join(parts[2].strip('"').split())
        if have.split(";")[0] == want.split(";")[0] and (";" not in want or have == want):
            return "ok", found, ""
    return "wrong", found, f"wrong: {' | '.join(found)}, expected {expected}"


def _compare(rec, found, query):
    """Return (status, found_values, detail) for one expected record."""
    rtype, expected = rec["type"], rec["value"]
    if rtype == "TXT":
        return _compare_txt(rec, found)
    if rtype == "CAA":
        return _compare_caa(rec, found)
    if rtype == "CNAME" and not found:
        # an A/AAAA record with the relay's own address is as good as a CNAME
        addresses = [_found_text("A", r) for r in query(rec["name"], "A")]
        addresses += [_found_text("AAAA", r) for r in query(rec["name"], "AAAA")]
        if set(rec.get("_addresses", [])) & set(addresses):
            return "ok", addresses, ""
        if addresses:
            return "wrong", addresses, f"wrong: {' | '.join(addresses)}, expected CNAME {expected}"
        return "missing", [], "missing"
    if not found:
        return "missing", found, "missing"
    if rtype in ("A", "AAAA"):
        ok = str(ipaddress.ip_address(expected)) in found
    elif rtype == "MX":  # any preference will do, the exchange must match
        ok = expected.split()[-1].lower() in [f.split()[-1] for f in found]
    elif rtype == "SRV":  # port and target must match, priority/weight are free
        ok = expected.split()[2:] in [f.split()[2:] for f in found]
    else:
        ok = expected.lower() in found
    if ok:
        return "ok", found, ""
    return "wrong", found, f"wrong: {' | '.join(found)}, expected {expected}"


def _short(value):
    if not value:
        return ""
    return value if len(value) <= 20 else f"{value[:8]}...{value[-8:]}"


def check(
    domain,
    nameservers=None,
    resolvers=None,
    port=53,
    timeout=3.0,
    **kwargs,
):
    """
    Compare the records ``domain`` needs (same arguments as
    :py:func:`records`) with what its authoritative name servers answer.

    ``nameservers`` (list of ``ip`` or ``ip:port``) are asked directly;
    without them the zone's NS are looked up through ``resolvers`` (default:
    the system resolver) and asked on ``port``.  No cache is used and
    recursion is not requested; truncated UDP answers are retried over TCP.

    Returns ``{"domain", "ok", "nameserver", "records": [{"name", "type",
    "expected", "found", "status", "required"}], "problems": [...],
    "warnings": [...]}``.  ``status`` is ``ok``, ``missing`` or ``wrong`` for
    required records and ``warning`` for recommended ones that are missing or
    wrong; only required records make ``ok`` False.  DKIM records are compared
    on their ``p=`` value, ``_mta-sts`` on its id.

    CLI Example:

    .. code-block:: bash

        salt '*' chatmail_dns.check example.org
        salt '*' chatmail_dns.check example.org nameservers='["192.0.2.53"]'
    """
    kwargs = {k: v for k, v in kwargs.items() if not k.startswith("__")}
    result = {"domain": str(domain), "ok": True, "records": [], "problems": [], "warnings": []}
    if is_ip_domain(domain):
        result["skipped"] = "IP-address relay: DNS does not apply"
        return result
    if not HAS_DNSPYTHON:
        raise CommandExecutionError("chatmail_dns.check needs the python 'dnspython' library")
    domain = _domain(domain)
    if nameservers is None:
        nameservers = _pillar("chatmail:dns:nameservers", []) or None
    if nameservers:
        if isinstance(nameservers, str):
            nameservers = nameservers.replace(",", " ").split()
        servers = [_parse_server(s, int(port)) for s in nameservers]
    else:
        _, servers = _authoritative(domain, resolvers, port)
    query = _Querier(servers, float(timeout))

    expected = records(domain, **kwargs)
    addresses = [r["value"] for r in expected if r["type"] in ("A", "AAAA")]
    answers = {}
    for rec in expected:
        key = (rec["name"], rec["type"])
        if key not in answers:
            answers[key] = [_found_text(rec["type"], r) for r in query(*key)]
        rec = dict(rec, _addresses=addresses)
        status, found, detail = _compare(rec, answers[key], query)
        if status != "ok" and not rec["required"]:
            status = "warning"
        entry = {
            "name": rec["name"],
            "type": rec["type"],
            "expected": rec["value"],
            "found": found,
            "status": status,
            "required": rec["required"],
        }
        result["records"].append(entry)
        if detail:
            message = f"{rec['type']} {rec['name']}: {detail}"
            (result["problems"] if rec["required"] else result["warnings"]).append(message)
    result["nameserver"] = query.used
    result["ok"] = not result["problems"]
    return result


def zone_fragments(zone_dir=None):
    """
    Return the zone fragments written by the ``chatmail_dns.zone_fragment_managed``
    state as ``{domain: text}`` (files ``<zone_dir>/<domain>.zone``), e.g. for
    the salt mine.  ``zone_dir`` defaults to ``lookup:paths:zone_dir`` of the
    merged map.

    CLI Example:

    .. code-block:: bash

        salt '*' chatmail_dns.zone_fragments
    """
    zone_dir = zone_dir or __utils__["chatmail_util.lookup"](__salt__)["paths"]["zone_dir"]
    try:
        names = sorted(os.listdir(zone_dir))
    except FileNotFoundError:
        return {}
    out = {}
    for name in names:
        if name.endswith(".zone") and not name.startswith("."):
            with open(os.path.join(zone_dir, name), encoding="utf-8") as fh:
                out[name[: -len(".zone")]] = fh.read()
    return out


def domain_args(domain, keydir=None):
    """
    Return the :py:func:`records` arguments of ``domain`` as configured in
    pillar (``chatmail:domain_defaults`` <- ``chatmail:domains:<domain>``, the
    same keys the state tree passes): ``ipv4``, ``ipv6``, ``selector``,
    ``keydir``, ``tlsrpt``, ``caa`` (only in ACME mode), ``max_age``.

    keydir
        The DKIM key directory; default: ``lookup:paths:dkim_dir`` of the
        merged map.  A state template passes it from its map: under salt-ssh
        a module called while rendering has no file server to read the
        tree's defaults from.

    CLI Example:

    .. code-block:: bash

        salt '*' chatmail_dns.domain_args example.org
    """
    chatmail = _pillar("chatmail", {}) or {}
    settings = __utils__["chatmail_util.deep_merge"](
        chatmail.get("domain_defaults"), (chatmail.get("domains") or {}).get(domain)
    )
    dns_cfg = settings.get("dns") or {}
    mode = (settings.get("tls") or {}).get("mode") or "auto"
    if mode == "auto":
        mode = __utils__["chatmail_util.auto_tls_mode"](str(domain))
    params = chatmail.get("params") or {}
    ipv6 = dns_cfg.get("ipv6") or None
    if params.get("disable_ipv6") or settings.get("disable_ipv6"):
        ipv6 = False
    if keydir is None:
        keydir = __utils__["chatmail_util.lookup"](__salt__)["paths"].get("dkim_dir")
    return {
        "ipv4": dns_cfg.get("ipv4") or None,
        "ipv6": ipv6,
        "selector": (settings.get("dkim") or {}).get("selector") or DEFAULT_SELECTOR,
        "keydir": keydir or None,
        "tlsrpt": dns_cfg.get("tlsrpt") or "",
        "caa": bool(dns_cfg.get("caa", True)) and mode == "acme",
        "max_age": int((settings.get("mta_sts") or {}).get("max_age") or DEFAULT_MAX_AGE),
    }


def status(domains=None, nameservers=None, resolvers=None, port=53, timeout=3.0):
    """
    Run :py:func:`check` for every chatmail domain of this host (pillar
    ``chatmail:domains``, or the ``domains`` given) with the arguments from
    :py:func:`domain_args`, and summarise: ``{domain: {"ok", "problems",
    "warnings", "nameserver"}}``.  A domain whose check cannot run reports
    ``ok: False`` and the error as its problem; IP-address domains are
    reported as skipped.

    CLI Example:

    .. code-block:: bash

        salt '*' chatmail_dns.status
        salt '*' chatmail_dns.status domains='["example.org"]'
    """
    if domains is None:
        domains = sorted((_pillar("chatmail:domains", {}) or {}).keys())
    elif isinstance(domains, str):
        domains = domains.replace(",", " ").split()
    out = {}
    for domain in domains:
        try:
            report = check(
                domain,
                nameservers=nameservers,
                resolvers=resolvers,
                port=port,
                timeout=timeout,
                **domain_args(domain),
            )
        except Exception as exc:  # one broken domain must not hide the others
            out[domain] = {"ok": False, "problems": [f"check failed: {exc}"], "warnings": []}
            continue
        entry = {key: report.get(key) for key in ("ok", "problems", "warnings", "nameserver")}
        if report.get("skipped"):
            entry["skipped"] = report["skipped"]
        out[domain] = entry
    return out
