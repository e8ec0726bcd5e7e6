"""An account the relay operates itself (the echobot's ``echo@<domain>``).

Such an address is shorter than ``username_min_length``, so its first login
could not create it; this command creates it directly, as doveauth would,
with the password read from stdin, and resets the stored hash when it does
not match that password.  Everything else about the account is ordinary: it
logs in, sends through filtermail and expires after
``delete_inactive_users_after`` days without a login, like any other.

    python -m chatmaild.localaccount /etc/chatmail/chatmail.ini echo@example.org <secret
    python -m chatmaild.localaccount --check ... <secret   # exit 1: create or reset needed

Runs as the mailboxes' owner (vmail).
"""

from __future__ import annotations

import argparse
import hmac
import sys

from .config import ConfigError, main_config_error, read_config
from .user import PASSWORD_SCHEME, User, encrypt_password, sha512_crypt


def matches(stored: str | None, password: str) -> bool:
    """Whether the stored password field is the hash of ``password``."""
    if not stored or not stored.startswith(PASSWORD_SCHEME + "$6$"):
        return False
    crypted = stored[len(PASSWORD_SCHEME) :]
    salt = crypted.split("$")[2]
    return hmac.compare_digest(sha512_crypt(password, salt), crypted)


def ensure(config, addr: str, password: str) -> str:
    """Create ``addr`` or reset its password: "created", "reset" or "ok"."""
    user = User(config, addr)
    stored = user.read_password()
    if matches(stored, password):
        return "ok"
    if stored is None and user.create(encrypt_password(password)):
        return "created"
    user.set_password(encrypt_password(password))
    return "reset"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check (exit 1: not in place)")
    parser.add_argument("ini")
    parser.add_argument("addr")
    args = parser.parse_args(argv)
    try:
        config = read_config(args.ini)
    except ConfigError as exc:
        return main_config_error(exc)
    password = sys.stdin.readline().strip()
    if len(password) < 20:
        print("refused: the password on stdin is shorter than 20 characters", file=sys.stderr)
        return 2
    if config.for_address(args.addr) is None:
        print(f"refused: {args.addr} is not an address of this relay", file=sys.stderr)
        return 2
    if args.check:
        return 0 if matches(User(config, args.addr).read_password(), password) else 1
    print(f"{args.addr}: {ensure(config, args.addr, password)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
