"""DKIM verification for incoming mail (used by ``filtermail incoming``).

A message passes when at least one DKIM signature verifies and its ``d=``
domain is *equal* (strict alignment, case-insensitive) to the domain of the
single ``From:`` address.  A signature of a parent or sub-domain does not
count: chatmail relays sign with exactly their mail domain.

Bounds, so that no sender can stall or load filtermail: only aligned
signatures without ``l=`` are considered, at most :data:`MAX_SIGNATURES`;
their keys are fetched concurrently on the event loop
(:func:`prefetch_keys`) within one time budget per message, so slow DNS
never occupies the worker threads other mails need; keys larger than
:data:`MAX_KEY_BYTES` are refused.

The TXT lookup is a plain function ``dnsfunc(name: bytes, timeout=5) ->
bytes | None`` as dkimpy expects, so tests can verify real signatures
against an in-process key table, and :func:`make_dnsfunc` can point dkimpy at
one specific DNS server (``ip:port``) with dnspython.
"""

from __future__ import annotations

import asyncio
import base64
import logging

import dkim
import dkim.dnsplug
import dkim.util

log = logging.getLogger("chatmaild.filtermail.dkim")

#: signatures (aligned with From, without l=) verified per message
MAX_SIGNATURES = 3
#: public keys larger than this (DER bytes; RSA-4096 is about 550) are refused
MAX_KEY_BYTES = 1100


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


def _signature_tags(verifier) -> list[dict | None]:
    """The tags of every DKIM-Signature header, in the order dkimpy counts
    them (``idx``); None for one that does not parse."""
    tags = []
    for name, value in verifier.headers:
        if name.lower() != b"dkim-signature":
            continue
        try:
            tags.append(dkim.util.parse_tag_value(value))
        except Exception:  # dkimpy raises several types for bad input
            tags.append(None)
    return tags


def candidate_signatures(message: bytes, from_domain: str, limit=MAX_SIGNATURES):
    """``(verifier, [(idx, selector, domain)])``: the signatures worth
    checking, at most ``limit`` of them.  Only signatures whose ``d=``
    equals ``from_domain`` can make a message pass, so no other one costs a
    DNS lookup or a body hash, and none with ``l=``: a body length limit
    leaves whatever follows it unsigned (cleartext appended to a signed
    encrypted body would pass)."""
    verifier = dkim.DKIM(message, logger=log)
    picked = []
    for idx, tags in enumerate(_signature_tags(verifier)):
        if tags is None:
            continue
        domain = tags.get(b"d", b"").decode("ascii", "replace").strip().lower()
        selector = tags.get(b"s", b"").decode("ascii", "replace").strip()
        if domain != from_domain.lower() or not selector:
            continue
        if b"l" in tags:
            log.info("DKIM signature %d of %s has l=, not considered", idx, domain)
            continue
        picked.append((idx, selector, domain))
        if len(picked) >= limit:
            break
    return verifier, picked


def key_name(selector: str, domain: str) -> bytes:
    return f"{selector}._domainkey.{domain}.".encode("ascii", "replace")


def acceptable_key(record: bytes | None) -> bytes | None:
    """``record`` unless its public key is larger than :data:`MAX_KEY_BYTES`
    (a huge modulus or exponent makes every verification expensive)."""
    if record is None:
        return None
    try:
        tags = dkim.util.parse_tag_value(record)
        key = base64.b64decode(b"".join(tags.get(b"p", b"").split()))
    except Exception:  # malformed: dkimpy reports it as such
        return record
    if len(key) > MAX_KEY_BYTES:
        log.info("DKIM key of %d bytes refused", len(key))
        return None
    return record


def check_dkim(message: bytes, from_domain: str, dnsfunc=None, limit=MAX_SIGNATURES) -> str | None:
    """None if a valid signature aligns with ``from_domain``, else a reason.

    ``dnsfunc(name, timeout=5)`` answers the key lookups; with
    :func:`check_dkim_async`'s prefetched keys it never touches the network,
    so a verification costs CPU only (at most ``limit`` body hashes)."""
    verifier, picked = candidate_signatures(message, from_domain, limit)
    if not picked:
        if not any(name.lower() == b"dkim-signature" for name, _ in verifier.headers):
            # chatmail/relay's text for a message without any signature
            return "No DKIM signature found"
        return f"no DKIM signature of {from_domain} (without l=)"
    lookup = dnsfunc

    def keyfunc(name, timeout=5):
        if lookup is None:
            return acceptable_key(dkim.dnsplug.get_txt(name, timeout=timeout))
        return acceptable_key(lookup(name, timeout=timeout))

    for idx, _selector, domain in picked:
        try:
            if verifier.verify(idx=idx, dnsfunc=keyfunc):
                return None
        except dkim.DKIMException as exc:
            log.info("DKIM signature %d of %s not valid: %s", idx, domain, exc)
    return f"no valid DKIM signature of {from_domain}"


async def prefetch_keys(names, resolver, budget: float) -> tuple[dict, bool]:
    """Look up the TXT records ``names`` concurrently on the event loop,
    ``budget`` seconds for all of them together.  Returns ``(records,
    timed_out)``: ``records`` maps each name answered in time to its record
    (None for NXDOMAIN and the like)."""
    import dns.asyncresolver  # noqa: F401 - the resolver's module
    import dns.exception
    import dns.resolver

    records: dict[bytes, bytes | None] = {}
    deadline = asyncio.get_running_loop().time() + budget

    async def one(name: bytes):
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return
        try:
            answer = await resolver.resolve(
                name.decode("ascii"), "TXT", lifetime=remaining, raise_on_no_answer=False
            )
        except (dns.resolver.NXDOMAIN, dns.resolver.NoNameservers):
            records[name] = None
            return
        except dns.exception.Timeout:
            return
        except dns.exception.DNSException:
            records[name] = None
            return
        record = None
        if answer.rrset is not None:
            for rdata in answer.rrset:
                record = b"".join(rdata.strings)
                break
        records[name] = record

    tasks = [asyncio.ensure_future(one(name)) for name in dict.fromkeys(names)]
    if tasks:
        done, pending = await asyncio.wait(tasks, timeout=budget)
        for task in pending:
            task.cancel()
    timed_out = any(name not in records for name in names)
    return records, timed_out


def make_async_resolver(server: str | None = None):
    """A dnspython asyncio resolver: the system's, or only ``ip:port``."""
    import dns.asyncresolver

    if server is None:
        resolver = dns.asyncresolver.Resolver()
    else:
        host, port = parse_server(server)
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [host]
        resolver.port = port
    # Wait up to 4 s for one answer before asking again (dnspython's 2 s
    # drops answers of a slow but working server); the per-message budget
    # bounds the whole.
    resolver.timeout = 4.0
    return resolver
