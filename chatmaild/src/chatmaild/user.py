"""One chatmail account on disk: ``<mailboxes_dir>/<domain>/<addr>/``.

The directory holds ``password`` (``{SHA512-CRYPT}$6$...``, mode 0600, its
mtime is the day of the last login), ``enforceE2EEincoming`` and the
Maildir.  The password file is only ever written completely: the hash goes
to a temp file in the same directory, is fsynced, and then linked (first
creation: never replaces an existing file) or renamed into place.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import secrets
import threading
import time
import warnings
from pathlib import Path

log = logging.getLogger("chatmaild.user")

PASSWORD_SCHEME = "{SHA512-CRYPT}"
SECONDS_PER_DAY = 86400
_SALT_CHARS = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def day_start(timestamp: float) -> int:
    """The UTC midnight at or before ``timestamp``."""
    return int(timestamp) // SECONDS_PER_DAY * SECONDS_PER_DAY


def _load_crypt_r():
    """libcrypt's ``crypt_r`` via ctypes: ctypes drops the GIL during the
    call, so hashes run on all cores (the ``crypt`` module holds the GIL)."""
    name = ctypes.util.find_library("crypt")
    if not name:
        return None
    try:
        func = ctypes.CDLL(name).crypt_r
    except (OSError, AttributeError):
        return None
    func.restype = ctypes.c_char_p
    func.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p]
    return func


_crypt_r = _load_crypt_r()
# libxcrypt's struct crypt_data is 32768 bytes; glibc's is smaller.
_CRYPT_DATA_SIZE = 65536
_tls = threading.local()


def _crypt_module(password: str, setting: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

    return crypt.crypt(password, setting)


def sha512_crypt(password: str, salt: str | None = None) -> str:
    """Return the ``$6$<salt>$<hash>`` SHA512-CRYPT string of ``password``."""
    if salt is None:
        salt = "".join(secrets.choice(_SALT_CHARS) for _ in range(16))
    setting = f"$6${salt}"
    result = None
    if _crypt_r is not None:
        buf = getattr(_tls, "buf", None)
        if buf is None:
            buf = _tls.buf = ctypes.create_string_buffer(_CRYPT_DATA_SIZE)
        raw = _crypt_r(password.encode("utf-8"), setting.encode("ascii"), buf)
        result = raw.decode("ascii") if raw else None
    if not result or not result.startswith("$6$"):
        result = _crypt_module(password, setting)
    if not result or not result.startswith("$6$"):
        raise RuntimeError("SHA512-CRYPT is not available")
    return result


def encrypt_password(password: str) -> str:
    """The Dovecot password field for ``password``."""
    return PASSWORD_SCHEME + sha512_crypt(password)


def _fsync_dir(path: Path):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class User:
    """Files of one address.  ``config.user_dir(addr)`` validates the path."""

    def __init__(self, config, addr: str):
        self.config = config
        self.addr = addr
        self.maildir = Path(config.user_dir(addr))
        self.password_path = self.maildir / "password"
        self.enforce_e2ee_path = self.maildir / "enforceE2EEincoming"

    def __repr__(self):
        return f"<User {self.addr}>"

    @property
    def domain_config(self):
        return self.config.for_address(self.addr)

    def read_password(self) -> str | None:
        """The stored password field, or None if the account does not exist."""
        try:
            text = self.password_path.read_text("ascii").strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            log.error("cannot read password of %s: %s", self.addr, exc)
            return None
        if not text:
            log.error("empty password file for %s", self.addr)
            return None
        return text

    def exists(self) -> bool:
        return self.read_password() is not None

    def _write_temp(self, data: bytes) -> Path:
        self.maildir.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.maildir / f".password.{secrets.token_hex(8)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        return tmp

    def create(self, password_field: str) -> bool:
        """Store ``password_field`` unless the account already exists.

        Returns True if this call created the account.  Concurrent callers
        (threads or processes) race safely: exactly one wins, the file is
        never partially written and never replaced."""
        tmp = self._write_temp(password_field.encode("ascii") + b"\n")
        try:
            os.link(tmp, self.password_path)
        except FileExistsError:
            return False
        finally:
            tmp.unlink()
        self.enforce_e2ee_path.touch(mode=0o600)
        _fsync_dir(self.maildir)
        return True

    def set_password(self, password_field: str):
        """Replace the stored password atomically (admin use)."""
        tmp = self._write_temp(password_field.encode("ascii") + b"\n")
        os.replace(tmp, self.password_path)
        _fsync_dir(self.maildir)

    def userdb(self) -> dict:
        """Dovecot userdb fields.  No uid/gid: Dovecot's ``mail_uid`` and
        ``mail_gid`` (rendered from pillar) name the mail user, so the daemon
        never hard-codes a system user name Dovecot might fail to resolve."""
        dc = self.domain_config
        return {
            "home": str(self.maildir),
            "quota_rule": f"*:storage={dc.max_mailbox_size_raw}",
        }

    def passdb(self, password_field: str) -> dict:
        """Dovecot passdb fields: the stored hash, which Dovecot verifies."""
        return {"password": password_field}

    def get_last_login(self) -> int | None:
        try:
            return int(self.password_path.stat().st_mtime)
        except FileNotFoundError:
            return None

    def set_last_login(self, timestamp: float | None = None) -> bool:
        """Set the password file's mtime to the UTC day of ``timestamp``
        (default now).  Returns False if the account does not exist."""
        day = day_start(time.time() if timestamp is None else timestamp)
        try:
            st = self.password_path.stat()
        except FileNotFoundError:
            return False
        if int(st.st_mtime) != day:
            os.utime(self.password_path, (day, day))
        return True
