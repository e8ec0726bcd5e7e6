"""chatmail-metadata: Dovecot's IMAP METADATA dict, device tokens and push.

Dovecot is configured with ``mail_attribute_dict = proxy:<socket>:metadata``
and passes every METADATA access through the dict protocol.  It names
private attributes ``priv/<mailbox-guid>/<name>`` and shared ones
``shared/<mailbox-guid>/<name>``; server attributes (mailbox ``""``) carry
the extra prefix ``vendor/vendor.dovecot/pvt/server/``.  What we serve:

``priv/<guid>/devicetoken``
    set: remember a push token of a device (up to :data:`MAX_TOKENS` per
    account, each with the time it was last set, in
    ``<user_dir>/metadata.json``; one more forgets the oldest); lookup: all
    valid tokens separated by spaces.  Tokens not set again within
    ``push_token_expiry_days`` are forgotten.
``priv/<guid>/messagenew``
    set by Dovecot's push Lua script for each delivered message: queue one
    push request per token (see :mod:`chatmaild.notifier`) unless the value
    is ``self`` (the account's own message).  Only a delivery may set it:
    the dict connection must come from a process in
    :data:`DELIVERY_PROCESSES` (``SO_PEERCRED`` and ``/proc/<pid>/comm``); the
    same attribute set by an IMAP client with SETMETADATA is refused.
``shared/<guid>/[vendor/vendor.dovecot/pvt/server/]vendor/deltachat/<name>``
    lookup of what the relay advertises: ``maxsmtprecipients``,
    ``turn`` (``host:port:user:password``, coturn REST API credentials
    derived from ``turn_secret``, or from ``turn_secret_file``: on relays a
    systemd credential only this daemon can read), ``irohrelay`` when
    configured (``iroh_relay``) and ``appversions`` (the newest Delta Chat
    releases, :data:`APPVERSIONS`, one line of JSON as chatmail/relay serves
    it).

Usage: ``chatmail-metadata <chatmail.ini> <socket>`` (the reference's order,
socket first, is accepted too).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import sys
import threading
import time
from pathlib import Path

from . import metrics
from .dictproxy import DictProxy, run_dict_daemon
from .notifier import QUEUE_DIRNAME, Notifier, write_file_atomic

log = logging.getLogger("chatmaild.metadata")

DEVICETOKEN = "devicetoken"
MESSAGENEW = "messagenew"
SERVER_PREFIX = "vendor/vendor.dovecot/pvt/server/"
VENDOR_PREFIX = "vendor/deltachat/"
DEFAULT_TURN_PORT = 3478
#: the client releases advertised as ``vendor/deltachat/appversions``
APPVERSIONS = Path(__file__).with_name("appversions.json")
TURN_CREDENTIAL_SECONDS = 5 * 86400
#: tokens stamped further in the future than this are considered invalid
CLOCK_SKEW = 60
#: device tokens kept per account; setting one more forgets the oldest
MAX_TOKENS = 16
#: longest token accepted (Delta Chat's encrypted tokens are ~850 characters)
MAX_TOKEN_LENGTH = 2048
#: processes whose dict connections may report a delivery (messagenew):
#: Dovecot's LMTP service and its LDA; an IMAP session (process "imap")
#: must not be able to trigger pushes with SETMETADATA
DELIVERY_PROCESSES = ("lmtp", "dovecot-lda")


def turn_credentials(secret: str, now: float | None = None, ttl=TURN_CREDENTIAL_SECONDS):
    """Time-limited TURN credentials as coturn's ``use-auth-secret`` REST API
    expects: user = expiry unix time, password = base64(HMAC-SHA1(secret, user))."""
    now = time.time() if now is None else now
    user = str(int(now) + ttl)
    digest = hmac.new(secret.encode("utf-8"), user.encode("ascii"), hashlib.sha1).digest()
    return user, base64.b64encode(digest).decode("ascii")


def split_host_port(text: str, default_port: int):
    text = text.strip()
    if text.startswith("["):  # [v6]:port
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
        return f"[{host}]", int(port) if port else default_port
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, default_port


class TokenStore:
    """Device tokens per address in ``metadata.json``: ``{"devicetoken":
    {token: unix_time_last_set}}`` (an older list form is accepted)."""

    def __init__(self, config, expiry_days: int):
        self.config = config
        self.expiry_seconds = expiry_days * 86400
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    def _lock(self, addr):
        with self._locks_lock:
            return self._locks.setdefault(addr, threading.Lock())

    def _path(self, addr) -> Path:
        return self.config.user_dir(addr) / "metadata.json"

    def _read(self, path: Path) -> dict:
        try:
            data = json.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            log.warning("unreadable %s, starting afresh", path)
            return {}
        return data if isinstance(data, dict) else {}

    def _valid(self, tokens, now) -> dict:
        if isinstance(tokens, list):
            tokens = {str(t): now for t in tokens}
        if not isinstance(tokens, dict):
            return {}
        return {
            str(t): ts
            for t, ts in tokens.items()
            if isinstance(ts, (int, float)) and now - self.expiry_seconds < ts < now + CLOCK_SKEW
        }

    def _modify(self, addr, change):
        """Apply ``change(tokens)`` to the valid tokens and write if needed;
        returns the resulting token dict."""
        path = self._path(addr)
        with self._lock(addr):
            data = self._read(path)
            now = int(time.time())
            stored = data.get(DEVICETOKEN)
            tokens = self._valid(stored, now)
            change(tokens, now)
            if tokens != stored:
                if not path.parent.is_dir():
                    raise FileNotFoundError(f"no account directory for {addr}")
                data[DEVICETOKEN] = tokens
                write_file_atomic(path, json.dumps(data, sort_keys=True).encode("utf-8"))
            return tokens

    def add(self, addr, token):
        def change(tokens, now):
            tokens[token] = now
            while len(tokens) > MAX_TOKENS:
                oldest = min(tokens, key=lambda t: (tokens[t], t == token, t))
                del tokens[oldest]

        self._modify(addr, change)

    def remove(self, addr, token):
        def change(tokens, now):
            tokens.pop(token, None)

        self._modify(addr, change)

    def get(self, addr) -> list[str]:
        """Valid tokens, oldest first; expired ones are removed from disk."""
        path = self._path(addr)
        stored = self._read(path).get(DEVICETOKEN)
        if not stored:
            return []
        tokens = self._valid(stored, int(time.time()))
        if tokens != stored:
            tokens = self._modify(addr, lambda tokens, now: None)
        return [t for t, _ in sorted(tokens.items(), key=lambda kv: (kv[1], kv[0]))]


def read_appversions(path: Path) -> str | None:
    """The JSON of ``path`` on one line (the dict protocol is line-based);
    None when it is missing or not JSON."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        log.exception("cannot read %s", path)
        return None
    return json.dumps(data, separators=(",", ":"))


class MetadataDict(DictProxy):
    def __init__(self, config, tokens: TokenStore, notifier: Notifier):
        self.config = config
        self.tokens = tokens
        self.notifier = notifier
        self._local = threading.local()

    def commit(self, txn):
        # the transaction_* hooks need to know who is committing
        self._local.peer = txn.peer
        try:
            return super().commit(txn)
        finally:
            self._local.peer = None

    def from_delivery(self) -> bool:
        peer = getattr(self._local, "peer", None)
        return peer is not None and peer.process in DELIVERY_PROCESSES

    def _domain_config(self, user):
        dc = self.config.for_address(user) if user else None
        return dc or self.config.primary

    def vendor_value(self, name: str, user: str):
        dc = self._domain_config(user)
        if name == "maxsmtprecipients":
            return str(self.config.max_smtp_recipients)
        if name == "turn" and dc.turn_server:
            # turn_secret_file (a systemd credential of this daemon) or turn_secret
            secret = dc.turn_secret_value()
            if not secret:
                return None
            host, port = split_host_port(dc.turn_server, DEFAULT_TURN_PORT)
            tuser, password = turn_credentials(secret)
            return f"{host}:{port}:{tuser}:{password}"
        if name == "irohrelay" and dc.iroh_relay:
            return dc.iroh_relay
        if name == "appversions":
            return read_appversions(APPVERSIONS)
        return None

    def lookup(self, key, user):
        parts = key.split("/", 2)
        if len(parts) != 3:
            return None
        scope, _guid, name = parts
        if scope == "priv" and name == DEVICETOKEN:
            if not user or self.config.for_address(user) is None:
                return None
            tokens = self.tokens.get(user)
            return " ".join(tokens) if tokens else None
        if scope == "shared":
            if name.startswith(SERVER_PREFIX):
                name = name[len(SERVER_PREFIX) :]
            if name.startswith(VENDOR_PREFIX):
                return self.vendor_value(name[len(VENDOR_PREFIX) :], user)
        return None

    def _private_name(self, key):
        parts = key.split("/", 2)
        if len(parts) == 3 and parts[0] == "priv":
            return parts[2]
        return None

    def transaction_set(self, user, key, value):
        name = self._private_name(key)
        if name == DEVICETOKEN:
            value = value.strip()
            if not value or len(value) > MAX_TOKEN_LENGTH or not value.isprintable():
                log.warning("refusing empty, overlong or unprintable device token from %s", user)
                return False
            if any(c.isspace() for c in value) or not value.isascii():
                log.warning("refusing device token with whitespace from %s", user)
                return False
            self.tokens.add(user, value)
            return True
        if name == MESSAGENEW:
            if not self.from_delivery():
                peer = getattr(self._local, "peer", None)
                log.warning(
                    "refusing messagenew of %r from process %r: only deliveries push",
                    user,
                    peer.process if peer else None,
                )
                return False
            if value != "self":
                tokens = self.tokens.get(user)
                if tokens:
                    self.notifier.notify(user, tokens)
            return True
        log.info("set of %r refused", key)
        return False

    def transaction_unset(self, user, key):
        name = self._private_name(key)
        if name == DEVICETOKEN:
            # A client cannot name which of the account's devices it is;
            # tokens only go by expiry or when the gateway rejects them.
            return True
        if name == MESSAGENEW:
            return True
        log.info("unset of %r refused", key)
        return False


def build(config) -> MetadataDict:
    tokens = TokenStore(config, config.push_token_expiry_days)
    notifier = Notifier(
        Path(config.state_dir) / QUEUE_DIRNAME,
        config.push_notification_url,
        config.push_retry_max_seconds,
        remove_token=tokens.remove,
    )
    notifier.start()
    metrics.set_gauge("chatmail_push_queued", notifier.pending)
    return MetadataDict(config, tokens, notifier)


def main(argv=None) -> int:
    return run_dict_daemon("chatmail-metadata", build, argv)


if __name__ == "__main__":
    sys.exit(main())
