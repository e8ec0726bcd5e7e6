"""Account names and the mapping of envelope recipients to accounts.

Two rules live here, and every place in chatmaild that turns an address into
an account (a mailbox directory) uses them:

``is_account_localpart(text)``
    What account creation allows: ``[a-z0-9._-]+`` not starting with a dot.
    Validated with ``re.fullmatch`` (``$`` would accept a trailing newline).

``normalize_recipient(addr)``
    The account an envelope recipient is delivered to, computed the way
    Postfix and Dovecot deliver it, or :class:`AddressError` for forms that
    must be refused instead (see the function).  Callers use it before every
    per-account decision (filtermail's ``enforceE2EEincoming`` check,
    passthrough recipients, the self-addressed Autocrypt Setup Message), so
    that no spelling of an address reaches a mailbox under a name the check
    did not look at.
"""

from __future__ import annotations

import ipaddress
import re

_LOCALPART = re.compile(r"[a-z0-9._-]+")
# RFC 5321 atext, for the parts of a dot-string
_ATEXT = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")
_DOMAIN_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_QUOTED_LOCALPART = re.compile(r'"((?:[^"\\]|\\.)*)"')
# A recipient's account ends at the first "+": no account name contains one.
DETAIL_SEPARATOR = "+"
MAX_ADDRESS_LENGTH = 320


class AddressError(ValueError):
    """The address must be refused; ``args[0]`` says why (safe to log)."""


def is_account_localpart(localpart: str) -> bool:
    """True for a localpart account creation allows."""
    return bool(_LOCALPART.fullmatch(localpart)) and not localpart.startswith(".")


def normalize_domain(domain: str) -> str:
    """The domain as delivery sees it: lower case, one trailing dot dropped,
    an address literal as ``[ip]`` in canonical form (``[IPv6:...]`` becomes
    ``[<compressed v6>]``, the spelling chatmaild uses for IP domains).
    Raises :class:`AddressError` for anything that is not a host name or an
    address literal."""
    if domain.startswith("["):
        if not domain.endswith("]"):
            raise AddressError("unbalanced [ in domain")
        literal = domain[1:-1]
        if literal[:5].lower() == "ipv6:":
            literal = literal[5:]
        try:
            ip = ipaddress.ip_address(literal)
        except ValueError:
            raise AddressError("address literal is not an IP address") from None
        return f"[{ip.compressed}]"
    domain = domain.lower()
    if domain.endswith("."):
        domain = domain[:-1]
    if not domain or len(domain) > 253:
        raise AddressError("empty or overlong domain")
    if not all(_DOMAIN_LABEL.fullmatch(label) for label in domain.split(".")):
        raise AddressError("domain has characters outside [a-z0-9_-] or empty labels")
    return domain


def split_address(addr: str) -> tuple[str, str]:
    """``(localpart, domain)`` of a mailbox as it comes in an SMTP envelope:
    a dot-string or quoted-string localpart and a domain.  The localpart is
    unquoted (``"victim"@x`` is ``victim@x`` to Postfix).  Raises
    :class:`AddressError` for what no delivery should ever see: source
    routes (``@a:b@c``), control characters, whitespace, non-ASCII (chatmail
    accounts are ASCII; IDNA lookalikes never name an account), more than
    one unquoted ``@``."""
    if not addr or len(addr) > MAX_ADDRESS_LENGTH:
        raise AddressError("empty or overlong address")
    if not addr.isascii() or any(c <= " " or c == "\x7f" for c in addr):
        raise AddressError("control character, space or non-ASCII in address")
    if addr.startswith("<") and addr.endswith(">"):
        addr = addr[1:-1]
    if addr.startswith("@"):
        raise AddressError("source route")
    if addr.startswith('"'):
        m = _QUOTED_LOCALPART.match(addr)
        if not m or addr[m.end() : m.end() + 1] != "@":
            raise AddressError("malformed quoted localpart")
        localpart = re.sub(r"\\(.)", r"\1", m.group(1))
        domain = addr[m.end() + 1 :]
    else:
        localpart, at, domain = addr.rpartition("@")
        if not at:
            raise AddressError("no @ in address")
        if not all(_ATEXT.fullmatch(atom) for atom in localpart.split(".")):
            raise AddressError("localpart is not a dot-string")
    if "@" in domain:
        raise AddressError("more than one @")
    return localpart, normalize_domain(domain)


def normalize_recipient(addr: str) -> str:
    """The address of the account that ``addr`` is delivered to.

    Mapped: case of localpart and domain, a trailing dot on the domain, a
    quoted localpart, a ``+detail`` suffix (cut at the first ``+``: no account
    name contains one, so this is right whatever delimiter Postfix or
    Dovecot use, even none), ``[IPv6:...]`` literals.

    Refused (:class:`AddressError`): whatever :func:`split_address` refuses,
    and a localpart (before ``+``) that account creation would not allow,
    which includes the percent hack (``victim%domain@relay``) and bang paths
    (``domain!victim@relay``) that Postfix would otherwise rewrite into a
    different recipient than the one checked here."""
    localpart, domain = split_address(addr)
    localpart = localpart.lower().split(DETAIL_SEPARATOR, 1)[0]
    if not is_account_localpart(localpart):
        raise AddressError("localpart is not an account name")
    return f"{localpart}@{domain}"
