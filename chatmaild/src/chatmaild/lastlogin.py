"""lastlogin: dict server for Dovecot's ``last_login`` plugin.

Dovecot (``last_login_dict = proxy:<socket>:lastlogin``, default
``last_login_key = last-login/%u``) sends, on every login::

    B<id>\\t<user>
    S<id>\\tshared/last-login/<user>\\t<unix timestamp>
    C<id>   (or D<id>)

We record the login at day precision only: the account's ``password`` file
gets the UTC midnight of the current day as mtime, and is touched only when
that changes (at most once per account and day).  The timestamp Dovecot
sends is not stored.

Usage: ``lastlogin <chatmail.ini> <socket>``
"""

from __future__ import annotations

import logging
import time

from .dictproxy import DictProxy, run_dict_daemon
from .user import User

log = logging.getLogger("lastlogin")

KEY_PREFIX = "shared/last-login/"


class LastLoginDictProxy(DictProxy):
    def __init__(self, config, clock=time.time):
        self.config = config
        self.clock = clock

    def transaction_set(self, user: str, key: str, value: str) -> bool:
        if not key.startswith(KEY_PREFIX):
            log.warning("set of unsupported key %r", key[:100])
            return False
        addr = key[len(KEY_PREFIX) :]
        try:
            account = User(self.config, addr)
        except ValueError:
            log.warning("last login of an address not served here: %r", addr[:100])
            return False
        if not account.set_last_login(self.clock()):
            log.warning("last login of unknown account %r", addr[:100])
            return False
        return True

    def lookup(self, key: str, user: str):
        if not key.startswith(KEY_PREFIX):
            return None
        try:
            account = User(self.config, key[len(KEY_PREFIX) :])
        except ValueError:
            return None
        last = account.get_last_login()
        return None if last is None else str(last)


def main(argv=None) -> int:
    return run_dict_daemon("lastlogin", LastLoginDictProxy, argv)


if __name__ == "__main__":
    raise SystemExit(main())
