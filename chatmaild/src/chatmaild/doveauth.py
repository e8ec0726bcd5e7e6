"""doveauth: Dovecot passdb/userdb over the dict protocol, creating accounts
on first login.

Dovecot's ``auth.conf`` for ``driver = dict`` (``proxy:<socket>:auth``)::

    password_key = passdb/%Ew"%Eu
    user_key = userdb/%Eu
    iterate_prefix = userdb/

so lookups arrive as ``Lshared/passdb/<password>"<user>\\t<user>`` and
``Lshared/userdb/<user>\\t<user>`` (``%E`` backslash-escapes ``"``, ``'`` and
``\\``).  A passdb lookup of an unknown address creates the account if the
creation policy allows it; the stored hash is returned and Dovecot verifies
the password, so a wrong password never changes anything.  Refusals answer
``N`` (not found) and log the reason.

Usage: ``doveauth <chatmail.ini> <socket>``
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading

from . import metrics
from .address import is_account_localpart
from .dictproxy import DictProxy, run_dict_daemon
from .syslimits import resource_shortage
from .user import User, encrypt_password

log = logging.getLogger("doveauth")

MAX_PASSWORD_LENGTH = 512
_LOCK_STRIPES = 1024


class Refused(Exception):
    """Creation or lookup refused; the message is logged, never sent."""


def split_escaped(text: str) -> list[str]:
    """Split Dovecot ``%E``-escaped fields joined by ``"``."""
    parts = []
    cur = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            if i + 1 >= len(text):
                raise ValueError("dangling backslash")
            cur.append(text[i + 1])
            i += 2
            continue
        if c == '"':
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def check_address(config, addr: str):
    """Return the DomainConfig of a well-formed address served here, or raise
    :class:`Refused`."""
    if addr.count("@") != 1:
        raise Refused("address must contain exactly one @")
    localpart, domain = addr.split("@")
    dc = config.for_address(addr)
    if dc is None or domain != dc.address_domain:
        raise Refused(f"domain {domain!r} is not served here")
    if not is_account_localpart(localpart):
        raise Refused("localpart has characters outside [a-z0-9._-]")
    return dc


def creation_refusal(config, addr: str, password: str) -> str | None:
    """Why ``addr`` may not be created with ``password`` (None: allowed)."""
    try:
        dc = check_address(config, addr)
    except Refused as exc:
        return str(exc)
    localpart = addr.split("@")[0]
    if not dc.username_min_length <= len(localpart) <= dc.username_max_length:
        return (
            f"localpart length {len(localpart)} outside "
            f"{dc.username_min_length}..{dc.username_max_length}"
        )
    if len(password) < dc.password_min_length:
        return f"password shorter than {dc.password_min_length}"
    if len(password) > MAX_PASSWORD_LENGTH or "\0" in password:
        return "password too long or contains NUL"
    if os.path.exists(config.nocreate_file):
        return f"kill-switch {config.nocreate_file} exists"
    return resource_shortage(config, dc.mailboxes_path)


class AuthDictProxy(DictProxy):
    def __init__(self, config):
        self.config = config
        self._locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]

    def _lock_for(self, addr: str) -> threading.Lock:
        digest = hashlib.blake2b(addr.encode(), digest_size=4).digest()
        return self._locks[int.from_bytes(digest, "big") % _LOCK_STRIPES]

    # ---- dict protocol hooks ----

    def lookup(self, key: str, user: str):
        namespace, _, rest = key.partition("/")
        kind, _, arg = rest.partition("/")
        if namespace != "shared" or kind not in ("passdb", "userdb"):
            log.warning("lookup of unsupported key %r", key[:100])
            return None
        try:
            fields = split_escaped(arg)
        except ValueError:
            log.warning("malformed %s key", kind)
            return None
        try:
            if kind == "passdb":
                if len(fields) != 2:
                    raise Refused("passdb key needs password and user")
                return self.lookup_passdb(fields[1], fields[0])
            if len(fields) != 1:
                raise Refused("userdb key needs one user")
            return self.lookup_userdb(fields[0])
        except Refused as exc:
            log.info("%s lookup of %r: not found (%s)", kind, fields[-1][:100], exc)
            return None

    def iterate(self, path: str, user: str, flags: int):
        if path.rstrip("/") != "shared/userdb":
            log.warning("iterate of unsupported path %r", path[:100])
            return []
        return [(f"shared/userdb/{addr}", "") for addr in self.iter_users()]

    # ---- accounts ----

    def iter_users(self):
        for dc in self.config.domains.values():
            try:
                entries = sorted(os.listdir(dc.mailboxes_path))
            except FileNotFoundError:
                continue
            suffix = "@" + dc.address_domain
            for name in entries:
                if name.endswith(suffix) and os.path.exists(
                    os.path.join(dc.mailboxes_path, name, "password")
                ):
                    yield name

    def _user(self, addr: str) -> User:
        check_address(self.config, addr)
        try:
            return User(self.config, addr)
        except ValueError as exc:
            raise Refused(str(exc)) from None

    def lookup_userdb(self, addr: str):
        user = self._user(addr)
        if not user.exists():
            raise Refused("no such account")
        return user.userdb()

    def lookup_passdb(self, addr: str, password: str):
        user = self._user(addr)
        stored = user.read_password()
        if stored is not None:
            return user.passdb(stored)
        reason = creation_refusal(self.config, addr, password)
        if reason:
            log.warning("refused to create %s: %s", addr, reason)
            metrics.inc("chatmail_account_creations_refused_total")
            return None
        with self._lock_for(addr):
            stored = user.read_password()
            if stored is None:
                if user.create(encrypt_password(password)):
                    log.info("created account %s", addr)
                    metrics.inc("chatmail_accounts_created_total", domain=addr.rsplit("@", 1)[1])
                stored = user.read_password()
        if stored is None:
            raise Refused("account vanished during creation")
        return user.passdb(stored)


def main(argv=None) -> int:
    return run_dict_daemon("doveauth", AuthDictProxy, argv)


if __name__ == "__main__":
    raise SystemExit(main())
