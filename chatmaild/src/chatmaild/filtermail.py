"""filtermail: the SMTP filter between Postfix and the mailboxes.

``filtermail CONFIG outgoing`` listens on 127.0.0.1:``filtermail_smtp_port``
as Postfix's before-queue ``smtpd_proxy_filter`` for mail submitted by users;
``filtermail CONFIG incoming`` listens on ``filtermail_smtp_port_incoming``
for mail arriving from other servers.  A mail that passes the checks is
handed, byte for byte and with the same envelope, to Postfix's reinjection
listener (``postfix_reinject_port`` / ``postfix_reinject_port_incoming``) and
Postfix's answer is relayed to the client.

Outgoing: ``From:`` must equal the envelope sender, each sender is rate
limited (GCRA, ``max_user_send_per_minute`` / ``max_user_send_burst_size`` of
the sender's domain), and only OpenPGP/MIME encrypted mail passes, except a
Secure-Join request, a self-addressed Autocrypt Setup Message and mail of
``passthrough_senders`` or to ``passthrough_recipients`` only.

Incoming: a valid DKIM signature whose ``d=`` equals the ``From:`` domain
is required (``filtermail_dkim_check``; an IP-literal sender such as
``user@[192.0.2.7]`` must instead be the client Postfix reports with
XFORWARD), and cleartext is refused when any recipient has the
``enforceE2EEincoming`` marker, except Secure-Join requests and
delivery reports shaped exactly like real ones (:mod:`chatmaild.dsn`).

DKIM keys are looked up with the system resolver, or only at the DNS server
given by ``--dns-server IP:PORT`` or the ``FILTERMAIL_DNS_SERVER`` variable.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import ipaddress
import logging
import os
import re
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from email import message_from_bytes
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

import dkim.util
from aiosmtpd.smtp import SMTP, syntax

from . import metrics
from .address import AddressError, normalize_domain, normalize_recipient
from .config import ConfigError, main_config_error, read_config
from .dsn import bounce_problem
from .filtermail_dkim import (
    MAX_SIGNATURES,
    check_dkim,
    key_name,
    make_async_resolver,
    prefetch_keys,
)
from .filtermail_fastpath import encrypted_sender
from .filtermail_reinject import ReinjectClient
from .openpgp import is_encrypted_armor
from .pgpmime import (
    CONTROL_TYPE,
    DATA_TYPE,
    epilogue_ok,
    from_address,
    outer_headers_problem,
    part_headers_problem,
    preamble_ok,
    unfold,
)

log = logging.getLogger("chatmaild.filtermail")

ENCRYPTION_NEEDED = "523 Encryption Needed: Invalid Unencrypted Mail"
E2EE_MARKER = "enforceE2EEincoming"
DNS_SERVER_ENV = "FILTERMAIL_DNS_SERVER"
SECUREJOIN_REQUESTS = ("vc-request", "vg-request")
# MAIL/RCPT parameters aiosmtpd understands; others (ORCPT, NOTIFY, AUTH...)
# that Postfix may pass through are dropped instead of failing the command.
KNOWN_PARAMS = ("SIZE", "BODY", "SMTPUTF8")
FORWARDED_OPTIONS = ("BODY=8BITMIME", "SMTPUTF8")
SINGLE_HEADERS = ("content-type", "content-transfer-encoding")


class Reject(Exception):
    """A check failed; ``args[0]`` is the SMTP reply for the client,
    ``reason`` the label under which the refusal is counted."""

    def __init__(self, reply: str, reason: str = "other"):
        super().__init__(reply)
        self.reason = reason


MESSAGES = "chatmail_filtermail_messages_total"


def count(direction: str, result: str, reason: str):
    metrics.inc(MESSAGES, direction=direction, result=result, reason=reason)


def safe_reply(reply: str) -> str:
    """One printable ASCII line: mail content quoted in a reply must not be
    able to break the SMTP dialogue."""
    return re.sub(r"[^\x20-\x7e]", "?", reply)[:400]


# --- message structure checks (pure functions on email.message.Message) ---


def parse_message(content: bytes) -> Message:
    return message_from_bytes(content, policy=compat32)


def _payload_text(part: Message) -> str | None:
    if part.is_multipart():
        return None
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return None
    try:
        return payload.decode("ascii")
    except UnicodeDecodeError:
        return None


def _unambiguous(part: Message) -> bool:
    # Readers disagree on which of two Content-Type headers counts.
    return all(len(part.get_all(name) or []) <= 1 for name in SINGLE_HEADERS)


def encryption_problem(msg: Message, allow_armor_headers: bool = False) -> str | None:
    """Why ``msg`` is not RFC 3156 OpenPGP/MIME whose payload is PKESK/SKESK
    + SEIPD with nothing readable beside it (:mod:`chatmaild.pgpmime`);
    None if it is."""
    if msg.get_content_type() != "multipart/encrypted" or not _unambiguous(msg):
        return "not multipart/encrypted"
    protocol = msg.get_param("protocol")
    if not isinstance(protocol, str) or protocol.lower() != "application/pgp-encrypted":
        return "protocol is not application/pgp-encrypted"
    parts = msg.get_payload()
    if not isinstance(parts, list) or len(parts) != 2:
        return "not exactly two parts"
    if msg.defects or any(part.defects for part in parts):
        # The parser repaired something: other readers may see other parts.
        return "malformed MIME structure"
    if not preamble_ok(msg.preamble):
        return "text before the first part"
    if not epilogue_ok(msg.epilogue):
        return "text after the last part"
    control, data = parts
    for part, wanted in ((control, CONTROL_TYPE), (data, DATA_TYPE)):
        if part.is_multipart():
            return "nested multipart"
        problem = part_headers_problem(part.items(), wanted)
        if problem:
            return problem
    text = _payload_text(control)
    if text is None or text.strip() != "Version: 1":
        return "control part is not Version: 1"
    text = _payload_text(data)
    if text is None or not is_encrypted_armor(text, allow_headers=allow_armor_headers):
        return "data part is not an armoured PKESK/SKESK+SEIPD message"
    return None


def is_encrypted(msg: Message, allow_armor_headers: bool = False) -> bool:
    """True for RFC 3156 OpenPGP/MIME with nothing readable beside the
    ciphertext (see :func:`encryption_problem`)."""
    return encryption_problem(msg, allow_armor_headers) is None


def is_securejoin_request(msg: Message) -> bool:
    """A Secure-Join ``vc-request``/``vg-request``: the header, and a body
    that is one text/plain part saying the same (case-insensitive), either
    the whole message (Delta Chat 2.x) or the only part of a multipart/mixed
    (older cores)."""
    kind = str(msg.get("secure-join") or "").strip().lower()
    if kind not in SECUREJOIN_REQUESTS:
        return False
    part = msg
    if msg.get_content_type() == "multipart/mixed":
        parts = msg.get_payload()
        if not isinstance(parts, list) or len(parts) != 1:
            return False
        part = parts[0]
    if part.get_content_type() != "text/plain" or not _unambiguous(part):
        return False
    text = _payload_text(part)
    if text is None:
        return False
    return text.strip().lower() in (f"secure-join: {req}" for req in SECUREJOIN_REQUESTS)


def _account_or_none(addr: str) -> str | None:
    try:
        return normalize_recipient(addr)
    except AddressError:
        return None


def is_autocrypt_setup_message(msg: Message, mail_from: str, rcpt_tos: list[str]) -> bool:
    """A self-addressed Autocrypt Setup Message (Autocrypt Level 1, 4.4):
    every recipient is delivered to the sender's own account."""
    sender = _account_or_none(mail_from)
    if sender is None or not rcpt_tos:
        return False
    if any(_account_or_none(rcpt) != sender for rcpt in rcpt_tos):
        return False
    if str(msg.get("autocrypt-setup-message") or "").strip().lower() != "v1":
        return False
    if msg.get_content_type() != "multipart/mixed":
        return False
    parts = msg.get_payload()
    if not isinstance(parts, list):
        return False
    return any(p.get_content_type() == "application/autocrypt-setup" for p in parts)


def may_leave(msg: Message) -> bool:
    """True for a message filtermail outgoing lets leave without a
    passthrough: OpenPGP/MIME encrypted or a Secure-Join request."""
    return encryption_problem(msg) is None or is_securejoin_request(msg)


def is_bounce(msg: Message, mail_from: str = "", size: int = 0) -> bool:
    """A delivery report a mail server sends about mail an account sent,
    exactly as narrow as real ones are (:func:`chatmaild.dsn.bounce_problem`)."""
    return bounce_problem(msg, mail_from, single_from_address(msg), size, may_leave) is None


def single_from_address(msg: Message) -> str | None:
    """The address of the only ``From:`` header with exactly one mailbox
    (:func:`chatmaild.pgpmime.from_address`)."""
    values = msg.get_all("from") or []
    if len(values) != 1:
        return None
    return from_address(unfold(str(values[0])))


def matches_passthrough(addr: str, entries: list[str]) -> bool:
    """True if ``addr`` is delivered to a passthrough entry: an address or an
    ``@domain``.  Both sides are normalised as delivery does; an address that
    does not normalise (percent hack, bang path, source route...) matches
    nothing, so it cannot name one recipient here and another to Postfix."""
    account = _account_or_none(addr)
    if account is None:
        return False
    domain = account.rsplit("@", 1)[1]
    for entry in entries:
        if entry.startswith("@"):
            try:
                if normalize_domain(entry[1:]) == domain:
                    return True
            except AddressError:
                continue
        elif _account_or_none(entry) == account:
            return True
    return False


# --- rate limiting ---


class SendRateLimiter:
    """GCRA per sender: ``burst`` messages at once, then ``rate`` per minute.

    ``rate`` 0 means no limit.  State is one timestamp (the theoretical
    arrival time) per sender; stale entries are dropped as they expire.
    """

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.tat: dict[str, float] = {}
        self._next_prune = 0.0

    def allow(self, key: str, rate: int, burst: int) -> bool:
        if rate <= 0:
            return True
        now = self.clock()
        if now >= self._next_prune:
            self.tat = {k: v for k, v in self.tat.items() if v > now}
            self._next_prune = now + 60
        interval = 60.0 / rate
        tolerance = interval * max(burst - 1, 0)
        tat = max(self.tat.get(key, now), now)
        if tat - now > tolerance + 1e-9:
            return False
        self.tat[key] = tat + interval
        return True


# --- SMTP handlers ---


class FilterSMTP(SMTP):
    # RFC 5321 allows 1000 octets, but Postfix's proxy passes longer lines of
    # sloppy senders through (it reassembles what it chopped at 2048); keep
    # them intact instead of failing the whole mail.
    line_length_limit = 64 * 1024

    def _getparams(self, params):
        result = super()._getparams(params)
        if result is None:
            return None
        return {k: v for k, v in result.items() if k in KNOWN_PARAMS}

    async def smtp_DATA(self, arg):
        # Counted from DATA until the reply to the message is written: a stop
        # (SIGTERM, see serve) waits for these.  The reinject may already have
        # queued the message; dropping the connection before our 250 would
        # make Postfix refuse it to a sender who then sends it again.
        self.event_handler.in_flight += 1
        try:
            await super().smtp_DATA(arg)
        finally:
            self.event_handler.in_flight -= 1

    @syntax("XFORWARD attribute=value ...")
    async def smtp_XFORWARD(self, arg):
        """Postfix's XFORWARD (sent before MAIL when we advertise it): the
        real client's address, kept in ``session.xforward``."""
        items = (arg or "").split()
        if not items or any("=" not in item for item in items):
            await self.push("501 Syntax: XFORWARD attribute=value ...")
            return
        forwarded = getattr(self.session, "xforward", {})
        for item in items:
            name, _, value = item.partition("=")
            forwarded[name.upper()] = value
        self.session.xforward = forwarded
        await self.push("250 OK")


def forwarded_client_ip(session) -> str | None:
    """The client IP Postfix reported with XFORWARD ADDR, normalised."""
    value = getattr(session, "xforward", {}).get("ADDR", "")
    if value.upper().startswith("IPV6:"):
        value = value[5:]
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


class BaseHandler:
    direction = ""
    # Messages up to this size are checked on the event loop: parsing a few
    # kilobytes takes well under a millisecond, less than handing the work
    # to a thread and back.  Bigger ones go to the executor.
    inline_check_limit = 0

    def __init__(self, config, executor=None):
        self.config = config
        self.executor = executor
        self.in_flight = 0  # sessions between DATA and its reply (FilterSMTP.smtp_DATA)
        self.reinjector = ReinjectClient("127.0.0.1", self.reinject_port)

    @property
    def reinject_port(self) -> int:
        raise NotImplementedError

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        # Ask Postfix (smtpd_proxy_filter) to tell us the real client.
        session.host_name = hostname
        return responses[:-1] + ["250-XFORWARD NAME ADDR PROTO HELO", responses[-1]]

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        # aiosmtpd treats an empty sender as "no MAIL yet"; keep a marker.
        envelope.mail_from = address or "<>"
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def prepare(self, content: bytes) -> dict:
        """Work done on the event loop before :meth:`check` (e.g. DNS
        lookups, which must not occupy the worker threads); returns extra
        keyword arguments for :meth:`check`."""
        return {}

    async def handle_DATA(self, server, session, envelope):
        loop = asyncio.get_running_loop()
        mail_from = "" if envelope.mail_from == "<>" else envelope.mail_from
        content = envelope.original_content
        rcpt_tos = list(envelope.rcpt_tos)
        args = (mail_from, rcpt_tos, content, forwarded_client_ip(session))
        try:
            extra = await self.prepare(content)
            check = functools.partial(self.check, *args, **extra)
            if len(content) <= self.inline_check_limit:
                kind = check()
            else:
                kind = await loop.run_in_executor(self.executor, check)
        except Reject as exc:
            log.info("%s from %r refused: %s", self.direction, mail_from, exc.args[0])
            count(self.direction, "rejected", exc.reason)
            return safe_reply(exc.args[0])
        except Exception:
            log.exception("%s from %r: check failed", self.direction, mail_from)
            count(self.direction, "rejected", "malformed")
            return "554 5.6.0 Malformed message"
        count(self.direction, "accepted", kind or "encrypted")
        options = tuple(o for o in envelope.mail_options if o.upper() in FORWARDED_OPTIONS)
        reply = await self.reinjector.send(mail_from, rcpt_tos, content, options)
        metrics.inc(
            "chatmail_filtermail_reinjected_total",
            direction=self.direction,
            reply=(reply[:1] + "xx") if reply[:1] in "245" and reply else "none",
        )
        # Postfix logs every delivered mail; only trouble is worth a line here.
        level = logging.DEBUG if reply.startswith("2") else logging.WARNING
        log.log(level, "%s from %r reinjected: %s", self.direction, mail_from, reply)
        return reply

    def check(self, mail_from: str, rcpt_tos: list[str], content: bytes, client_ip=None):
        """Raise :class:`Reject` unless the mail may pass; return what let it
        pass (``encrypted``, ``securejoin``, ...: the label it is counted
        under).  ``client_ip`` is the SMTP client Postfix reported
        (XFORWARD), if any."""
        raise NotImplementedError


class OutgoingHandler(BaseHandler):
    direction = "outgoing"
    inline_check_limit = 32 * 1024

    def __init__(self, config, executor=None):
        super().__init__(config, executor)
        self.limiter = SendRateLimiter()

    @property
    def reinject_port(self) -> int:
        return self.config.postfix_reinject_port

    def domain_config(self, addr: str):
        return self.config.for_address(addr) or self.config.primary

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if address.count("@") != 1:
            count(self.direction, "rejected", "sender")
            return safe_reply(f"553 5.1.7 Invalid sender address <{address}>")
        dc = self.domain_config(address)
        key = address.lower()
        if not self.limiter.allow(key, dc.max_user_send_per_minute, dc.max_user_send_burst_size):
            log.info("rate limit hit by %s", address)
            count(self.direction, "rejected", "rate_limit")
            # chatmail/relay's text, colon included: clients and monitoring match it
            return safe_reply(f"450 4.7.1: Too much mail from {address}")
        return await super().handle_MAIL(server, session, envelope, address, mail_options)

    def check(self, mail_from, rcpt_tos, content, client_ip=None):
        fast_from = encrypted_sender(content, outgoing=True)
        if fast_from is not None and fast_from.lower() == mail_from.lower():
            return "encrypted"
        if content.count(b"\r") != content.count(b"\r\n"):
            # A bare CR ends a line for Python's parser but not for others:
            # "--boundary--\r\r\n" closes the multipart here and may not in
            # the recipient's parser (found by the short fuzz run in CI).
            # No chat client writes one.
            raise Reject("523 Encryption Needed: bare CR in the message", "encryption_needed")
        msg = parse_message(content)
        from_addr = single_from_address(msg)
        if from_addr is None or from_addr.lower() != mail_from.lower():
            raise Reject(
                # chatmail/relay's reply (its code 500 included), which its
                # test suite and monitoring look for
                f"500 5.7.1 Invalid FROM {from_addr!r} for <{mail_from}>",
                "from_mismatch",
            )
        if is_encrypted(msg):
            problem = outer_headers_problem(msg.items())
            if problem:
                raise Reject(f"523 Encryption Needed: {problem}", "encryption_needed")
            return "encrypted"
        if is_securejoin_request(msg):
            return "securejoin"
        if is_autocrypt_setup_message(msg, mail_from, rcpt_tos):
            return "autocrypt_setup"
        dc = self.domain_config(mail_from)
        if matches_passthrough(mail_from, dc.passthrough_senders):
            return "passthrough"
        if all(matches_passthrough(r, dc.passthrough_recipients) for r in rcpt_tos):
            return "passthrough"
        raise Reject(ENCRYPTION_NEEDED, "encryption_needed")


class IncomingHandler(BaseHandler):
    direction = "incoming"

    def __init__(self, config, executor=None, dnsfunc=None, resolver=None):
        """``dnsfunc(name, timeout)`` answers DKIM key lookups made in
        :meth:`check` itself (tests; blocking).  The daemon passes an asyncio
        ``resolver`` instead: :meth:`prepare` fetches the keys on the event
        loop within ``filtermail_dkim_dns_budget`` seconds per message."""
        super().__init__(config, executor)
        self.dnsfunc = dnsfunc
        self.resolver = resolver

    async def prepare(self, content: bytes) -> dict:
        if not self.config.filtermail_dkim_check or self.resolver is None:
            return {}
        # the header block only: no copy of a large body on the event loop
        ends = [i for i in (content.find(b"\r\n\r\n"), content.find(b"\n\n")) if i >= 0]
        block = content[: min(ends) + 4] if ends else content[:65536]
        headers = BytesHeaderParser(policy=compat32).parsebytes(block)
        from_addr = single_from_address(headers)
        if from_addr is None:
            return {}
        domain = from_addr.rsplit("@", 1)[1].lower()
        if domain.startswith("["):
            return {}
        names = []
        for value in headers.get_all("dkim-signature") or []:
            try:
                tags = dkim.util.parse_tag_value(str(value).encode("ascii", "replace"))
            except Exception:  # dkimpy raises several types for bad input
                continue
            d = tags.get(b"d", b"").decode("ascii", "replace").strip().lower()
            selector = tags.get(b"s", b"").decode("ascii", "replace").strip()
            if d == domain and selector and b"l" not in tags:
                names.append(key_name(selector, d))
            if len(names) >= MAX_SIGNATURES:
                break
        budget = self.config.filtermail_dkim_dns_budget
        records, timed_out = await prefetch_keys(names, self.resolver, budget)
        return {"dkim_keys": records, "dkim_timed_out": timed_out}

    def check_dkim(self, content, from_addr, client_ip, dkim_keys=None, dkim_timed_out=False):
        if not self.config.filtermail_dkim_check:
            return
        domain = from_addr.rsplit("@", 1)[1]
        if domain.startswith("[") and domain.endswith("]"):
            # IP-only relays cannot sign (no DNS for a key); their address
            # literal must instead be the connecting client's address.
            try:
                literal = str(ipaddress.ip_address(domain[1:-1].removeprefix("IPv6:")))
            except ValueError:
                literal = None
            if literal is None or literal != client_ip:
                raise Reject(
                    f"550 5.7.1 DKIM check failed: sender {domain} is not the client {client_ip}",
                    "dkim",
                )
            return
        dnsfunc = self.dnsfunc
        if dkim_keys is not None:

            def dnsfunc(name, timeout=5):
                return dkim_keys.get(name)

        problem = check_dkim(content, domain, dnsfunc)
        if problem and dkim_timed_out:
            raise Reject("451 4.4.3 DKIM key lookup timed out, try again later", "dkim_timeout")
        if problem:
            raise Reject(f"550 5.7.1 DKIM check failed: {problem}", "dkim")

    @property
    def reinject_port(self) -> int:
        return self.config.postfix_reinject_port_incoming

    def recipient_account(self, rcpt: str) -> str:
        """The account ``rcpt`` is delivered to (see
        :func:`chatmaild.address.normalize_recipient`), or :class:`Reject`:
        mail from other servers is only ever for accounts of this relay."""
        try:
            account = normalize_recipient(rcpt)
        except AddressError as exc:
            raise Reject(f"553 5.1.3 Bad recipient address syntax: {exc}", "recipient") from None
        if self.config.for_address(account) is None:
            raise Reject("550 5.1.2 Recipient domain is not served here", "recipient")
        return account

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        try:
            self.recipient_account(address)
        except Reject as exc:
            log.info("incoming recipient %r refused: %s", address, exc.args[0])
            metrics.inc("chatmail_filtermail_recipients_refused_total", direction=self.direction)
            return safe_reply(exc.args[0])
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    def check(self, mail_from, rcpt_tos, content, client_ip=None, **dkim):
        # Every per-account decision below uses the account Postfix and
        # Dovecot deliver to, never the recipient as spelled.
        accounts = [self.recipient_account(rcpt) for rcpt in rcpt_tos]
        fast_from = encrypted_sender(content)
        if fast_from is not None:
            self.check_dkim(content, fast_from, client_ip, **dkim)
            return "encrypted"
        msg = parse_message(content)
        from_addr = single_from_address(msg)
        if from_addr is None:
            raise Reject("550 5.7.1 Message needs exactly one From address", "from_mismatch")
        self.check_dkim(content, from_addr, client_ip, **dkim)
        if is_encrypted(msg, allow_armor_headers=True):
            return "encrypted"
        if is_securejoin_request(msg):
            return "securejoin"
        if is_bounce(msg, mail_from, len(content)):
            return "bounce"
        for account in accounts:
            try:
                marker = self.config.user_dir(account) / E2EE_MARKER
            except ValueError:
                # Served domain, but no name account creation would allow
                # (an alias such as postmaster is still a valid name).
                raise Reject(f"550 5.1.1 No such account <{account}>", "no_account") from None
            if marker.exists():
                raise Reject(ENCRYPTION_NEEDED, "encryption_needed")
        return "cleartext"


# --- server ---


def make_handler(config, mode: str, executor=None, dnsfunc=None, resolver=None) -> BaseHandler:
    if mode == "outgoing":
        return OutgoingHandler(config, executor)
    if mode == "incoming":
        return IncomingHandler(config, executor, dnsfunc=dnsfunc, resolver=resolver)
    raise ValueError(f"mode must be outgoing or incoming, not {mode!r}")


async def start_server(config, handler: BaseHandler, host="127.0.0.1", port=None):
    """Listen for SMTP; return the asyncio server."""
    if port is None:
        port = (
            config.filtermail_smtp_port
            if isinstance(handler, OutgoingHandler)
            else config.filtermail_smtp_port_incoming
        )
    loop = asyncio.get_running_loop()

    def factory():
        return FilterSMTP(
            handler,
            data_size_limit=config.max_message_size,
            enable_SMTPUTF8=True,
            hostname="localhost",
            ident="chatmail filtermail",
        )

    return await loop.create_server(factory, host=host, port=port)


# Seconds a stop waits for transactions in DATA (below systemd's default
# TimeoutStopSec of 90 s and Postfix's proxy timeout of 100 s).
STOP_GRACE = 30.0


async def serve(config, mode: str, dns_server=None):
    executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="filtermail")
    resolver = make_async_resolver(dns_server) if mode == "incoming" else None
    handler = make_handler(config, mode, executor, resolver=resolver)
    server = await start_server(config, handler)
    addr = server.sockets[0].getsockname()
    log.info("filtermail %s listening on %s:%s", mode, addr[0], addr[1])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    # no new connections; the transactions already in DATA are finished
    # (within STOP_GRACE) before the process exits
    server.close()
    deadline = loop.time() + STOP_GRACE
    while handler.in_flight and loop.time() < deadline:
        await asyncio.sleep(0.02)
    if handler.in_flight:
        log.warning("stopping with %d transactions unfinished", handler.in_flight)
    handler.reinjector.close()
    executor.shutdown(wait=False, cancel_futures=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="filtermail", description="chatmail SMTP filter (outgoing or incoming)"
    )
    parser.add_argument("config", help="path to chatmail.ini")
    parser.add_argument("mode", choices=["outgoing", "incoming"])
    parser.add_argument(
        "--dns-server",
        default=os.environ.get(DNS_SERVER_ENV) or None,
        metavar="IP:PORT",
        help="ask only this DNS server for DKIM keys (default: system resolver;"
        f" env {DNS_SERVER_ENV})",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s"
    )
    # aiosmtpd logs every command at INFO; our own log line per mail suffices.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    try:
        config = read_config(args.config)
    except ConfigError as exc:
        return main_config_error(exc)
    metrics.start(config, f"filtermail-{args.mode}")
    asyncio.run(serve(config, args.mode, args.dns_server))
    return 0


if __name__ == "__main__":
    sys.exit(main())
