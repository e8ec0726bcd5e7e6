"""
Helpers shared by the chatmail execution and state modules: one
implementation of each rule (see docs/development.md, "Shared helpers").

Salt syncs this file from ``salt://_utils`` (``saltutil.sync_all``,
``saltutil.sync_utils``; salt-ssh ships it with the other custom modules) and
hands its functions to every execution and state module as
``__utils__["chatmail_util.<function>"]``.  Modules that also run as plain
Python (``chatmail_config`` in the unit tests, the fuzz targets and
``tests/paramdocs.py``) import this file from the checkout instead (see
``chatmail_config._util``).

The helpers raise ``ValueError`` for a bad value; the calling module turns it
into ``SaltInvocationError`` (a bad argument) or its own error type.
"""

import configparser
import copy
import ipaddress
import os
import re

__virtualname__ = "chatmail_util"


def __virtual__():
    return __virtualname__


def pillar_get(salt_funcs, key, default):
    """
    A pillar value (``key`` colon-separated) as default for a module argument.

    ``salt_funcs`` is the calling module's ``__salt__``.  Salt 3008 masks
    pillar values handed to modules ("**********") unless asked to unmask;
    older salt has no ``unmask`` argument and does not mask.  Without a
    ``pillar.get`` (a module used outside a minion) the default is returned.
    """
    try:
        get = salt_funcs["pillar.get"]
    except (KeyError, TypeError):
        return default
    try:
        return get(key, default, unmask=True)
    except TypeError:
        return get(key, default)


def is_ip(text):
    """True when ``text`` is an IPv4 or IPv6 address, with or without the
    brackets of a mail address literal (``[1.2.3.4]``) and surrounding blanks."""
    try:
        ipaddress.ip_address(str(text).strip().strip("[]"))
    except ValueError:
        return False
    return True


# One label of a chatmail domain: letters (any case; names are lower-cased
# first), digits, hyphen and underscore, 1-63 characters, no hyphen first or
# last.  The underscore is allowed anywhere, also last (_dcacc-style names and
# the IP-less test domains starting with "_").
_LABEL_RE = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


def normalize_domain(name):
    """
    The canonical form of a chatmail domain, or ``ValueError``.

    Case-insensitive (the result is lower case), a trailing dot is dropped.
    An IPv4 or IPv6 address (also in brackets) comes back in its canonical
    form without brackets.  A name must have at least two labels, at most 253
    characters, and every label must match the label rule above.
    """
    if not isinstance(name, str):
        raise ValueError(f"not a domain name: {name!r}")
    dom = name.strip().lower().rstrip(".")
    if is_ip(dom):
        return str(ipaddress.ip_address(dom.strip("[]")))
    if len(dom) > 253 or "." not in dom:
        raise ValueError(f"not a fully qualified domain name: {name!r}")
    for label in dom.split("."):
        if not _LABEL_RE.match(label):
            raise ValueError(f"invalid label {label!r} in domain {name!r}")
    return dom


def domain_arg(name, what="domain"):
    """:func:`normalize_domain` for a module argument: a bad name raises
    Salt's ``SaltInvocationError`` saying ``invalid <what>: ...``."""
    from salt.exceptions import SaltInvocationError

    try:
        return normalize_domain(str(name))
    except ValueError as exc:
        raise SaltInvocationError(f"invalid {what}: {exc}") from None


def auto_tls_mode(domain):
    """The TLS mode ``auto`` stands for: ``self`` for an IP address, a name
    starting with ``_`` and the ``.test`` names, which no public CA can
    certify; ``acme`` for every other name."""
    domain = str(domain)
    if domain.startswith("_") or domain.endswith(".test") or is_ip(domain):
        return "self"
    return "acme"


# A DKIM selector: one DNS label of lower-case letters, digits and hyphens,
# starting with a letter or digit (it names a key file and the DNS name
# <selector>._domainkey.<domain>).
_SELECTOR_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def check_selector(selector):
    """``selector`` when it is a valid DKIM selector, else ``ValueError``."""
    text = str(selector) if isinstance(selector, (str, int)) else None
    if text is None or not _SELECTOR_RE.match(text):
        raise ValueError(f"not a valid DKIM selector: {selector!r}")
    return text


def deep_merge(base, over):
    """
    A new dict: ``over`` merged into ``base`` recursively (mappings merge, any
    other value of ``over`` replaces; lists are replaced, not appended).
    Neither argument is changed.  Salt's ``salt.utils.dictupdate.update``
    does the merge (the same as ``slsutil.merge`` in the state tree).
    """
    import salt.utils.dictupdate

    return salt.utils.dictupdate.update(copy.deepcopy(base or {}), copy.deepcopy(over or {}))


def read_ini(path):
    """
    What the modules need from a chatmail.ini, or None when ``path`` does not
    exist::

        {"domains": [...], "params": {...}, "tls_modes": {domain: mode},
         "mailboxes_dir": <path or "">}

    ``domains`` are the ``mail_domain`` entries, normalized (primary first,
    duplicates dropped).  ``mailboxes_dir`` loses the per-domain last part of
    chatmail/relay's form (``/home/vmail/mail/<domain>`` with one domain), as
    chatmaild does.  An unreadable or invalid file raises ``ValueError``
    naming the path.
    """
    if not os.path.exists(path):
        return None
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as fh:
            parser.read_file(fh)
    except (OSError, UnicodeDecodeError, configparser.Error) as exc:
        raise ValueError(f"{path}: {exc.__class__.__name__}: {exc}") from None
    params = dict(parser["params"]) if parser.has_section("params") else {}
    domains = []
    for item in re.split(r"[\s,]+", params.get("mail_domain", "")):
        if not item:
            continue
        try:
            dom = normalize_domain(item)
        except ValueError as exc:
            raise ValueError(f"{path}: mail_domain: {exc}") from None
        if dom not in domains:
            domains.append(dom)
    mbdir = params.get("mailboxes_dir", "").strip().rstrip("/")
    if len(domains) == 1 and os.path.basename(mbdir) == domains[0]:
        mbdir = os.path.dirname(mbdir)
    modes = {
        section[len("domain:") :]: parser[section].get("tls_mode", "")
        for section in parser.sections()
        if section.startswith("domain:")
    }
    return {"domains": domains, "params": params, "tls_modes": modes, "mailboxes_dir": mbdir}


def lookup(salt_funcs):
    """
    ``chatmail:lookup`` of the merged map (paths, users, sockets), as
    ``chatmail_config.lookup`` merges it: what a module uses instead of a
    path constant or a raw pillar value.  ``salt_funcs`` is the calling
    module's ``__salt__``.
    """
    return salt_funcs["chatmail_config.lookup"]()
