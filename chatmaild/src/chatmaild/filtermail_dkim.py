"""DKIM verification for incoming mail (used by ``filtermail incoming``).

A message passes when at least one DKIM signature verifies and its ``d=``
domain is *equal* (strict alignment, case-insensitive) to the domain of the
single ``From:`` address.  A signature of a parent or sub-domain does not
count: chatmail relays sign with exactly their mail domain.

The TXT lookup is a plain function ``dnsfunc(name: bytes, timeout=5) ->
bytes | None`` as dkimpy expects, so tests can verify real signatures
against an in-process key table, and :func:`make_dnsfunc` can point dkimpy at
one specific DNS server (``ip:port``) with dnspython.
"""

from __future__ import annotations

import logging

import dkim

log = logging.getLogger("chatmaild.filtermail.dkim")


def parse_server(spec: str) -> tuple[str, int]:
    """Split ``ip:port`` (``[v6]:port`` for IPv6; port defaults to 53)."""
    spec = spec.strip()
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        port = rest.lstrip(":") or "53"
    elif spec.count(":") == 1:
        host, port = spec.split(":")
    else:
        host, port = spec, "53"
    return host, int(port)


def make_dnsfunc(server: str):
    """A dkimpy ``dnsfunc`` asking only the DNS server ``ip:port``."""
    import dns.exception
    import dns.resolver

    host, port = parse_server(server)
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [host]
    resolver.port = port

    def dnsfunc(name, timeout=5):
        if isinstance(name, bytes):
            name = name.decode("ascii")
        try:
            answer = resolver.resolve(name, "TXT", lifetime=timeout, raise_on_no_answer=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoNameservers):
            return None
        except dns.exception.Timeout as exc:
            raise dkim.DnsTimeoutError(str(exc)) from None
        if answer.rrset is None:
            return None
        for rdata in answer.rrset:
            return b"".join(rdata.strings)
        return None

    return dnsfunc


def signature_domains(message: bytes, dnsfunc=None) -> list[str]:
    """The ``d=`` domains (lower-case) of all DKIM signatures that verify."""
    kwargs = {} if dnsfunc is None else {"dnsfunc": dnsfunc}
    verifier = dkim.DKIM(message, logger=log)
    count = sum(1 for name, _ in verifier.headers if name.lower() == b"dkim-signature")
    valid = []
    for idx in range(count):
        try:
            ok = verifier.verify(idx=idx, **kwargs)
        except dkim.DKIMException as exc:
            log.info("DKIM signature %d not valid: %s", idx, exc)
            continue
        if ok and verifier.domain:
            valid.append(verifier.domain.decode("ascii", "replace").lower())
    return valid


def check_dkim(message: bytes, from_domain: str, dnsfunc=None) -> str | None:
    """None if a valid signature aligns with ``from_domain``, else a reason."""
    domains = signature_domains(message, dnsfunc)
    if from_domain.lower() in domains:
        return None
    if domains:
        return f"no DKIM signature of {from_domain} (valid ones: {', '.join(domains)})"
    return "no valid DKIM signature"
