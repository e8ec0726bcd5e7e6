"""Steady mail load with per-message accounting, for tests/faults and
``./cmsalt bench faults`` (bench/bench_faults.py): one piece of code for both.

Load: sender threads submit the encrypted sample of the host tests
(``encrypted_message``, which passes filtermail) at a fixed total rate, each
with a unique Message-ID ``<fault-...@faults.test>``:

* ``Submitter``: a real account (created by its first SMTP AUTH) on 587
  (STARTTLS) or 465 (TLS from the first byte);
* ``PeerMta``: a foreign MTA on port 25 (STARTTLS), the messages DKIM-signed
  for a peer domain whose key the harness nsd serves, so the relay's
  incoming filtermail sees relay-to-relay mail without a second relay.

Every submission is recorded with the reply to the end of DATA (or to the
first command that refused it): ``accepted`` (250), ``refused`` (a 4xx/5xx
reply, or the connection lost before the message was sent: the sender knows
it did not go), ``unknown`` (the connection was lost after the message was
sent, before the reply).  A sender that loses its connection reconnects after
a short pause, as a client would.  Like a real sender (Delta Chat, a peer's
MTA) it sends a message again, the same bytes on a new connection
``retry_delay`` seconds later, when it was refused with a 4xx or the
connection broke, up to ``attempts`` tries in all; a 5xx is final.  A message
is one submission however often it was tried: its outcome is that of its
last try (``accepted`` if any try got a 250), ``history`` has every try.

Accounting (``count``): a script run on each relay host walks the Maildirs
of the load's accounts and reports, per message id, which mailbox holds it
and whether the file is complete (it ends with the sample's closing MIME
boundary), plus files in Maildir ``tmp/`` and any other file in the load's
mailboxes (a bounce or DSN). ``Tally`` adds the queue (``postqueue -j``)
and sorts every submission: delivered exactly once, duplicated, missing,
delivered to the wrong mailbox, refused (and whether a refused one was
delivered all the same). ``Tally.problems()`` is empty when nothing was
lost, duplicated, half written, bounced or left in a queue.
"""

from __future__ import annotations

import itertools
import json
import smtplib
import threading
import time
import uuid
from dataclasses import dataclass, field

from tests.hosts.test_relay import encrypted_message, imap_login, new_credentials, tls_context

# The relays under fault load (the suite's and the bench's): no load or send
# limits in the way of one machine sending for many clients.
RELAY_PARAMS = {
    "max_load_1m": 1000,
    "max_user_send_per_minute": 1000000,
    "max_user_send_burst_size": 1000000,
    # the disk-full fault makes its accounts on a 48 MB filesystem
    "min_free_disk_space": "1M",
    # exactly once per mailbox although senders retry (off by default)
    "dedupe_period": 86400,
}
RELAY_LIMITS = {
    "smtp_connection_rate_per_minute": 100000,
    "smtp_max_connections_per_client": 1000,
    "imap_login_rate_per_minute": 100000,
    "imap_max_userip_connections": 1000,
}

ID_DOMAIN = "faults.test"
SAMPLE_ID = "<enc.xYzEncBoundary42@example.org>"
# the last line of the sample: a file without it was cut short
END = "--xYzEncBoundary42--"
MAILBOXES = "/home/vmail/mail"


def message(sender, rcpt, msg_id):
    """The encrypted sample from sender to rcpt with Message-ID <msg_id@faults.test> (str)."""
    text = encrypted_message(sender, rcpt)
    assert SAMPLE_ID in text
    return text.replace(SAMPLE_ID, f"<{msg_id}@{ID_DOMAIN}>", 1)


def crlf(text):
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode()


# A refused (4xx) or broken transaction is tried again this many seconds
# later, up to ATTEMPTS tries in all: a real sender retries (Delta Chat
# within seconds, an MTA after minutes), so a message queued although its
# sender was told 4xx arrives a second time unless the relay drops the
# copy (dedupe_period, docs/dovecot.md).
RETRY_DELAY = 3.0
ATTEMPTS = 4


@dataclass
class Submission:
    id: str
    sender: str
    rcpt: str
    via: str  # "587", "465" or "25"
    start: float
    end: float = 0.0
    outcome: str = ""  # accepted | refused | unknown (of the last try)
    code: int | None = None
    reply: str = ""
    history: list = field(default_factory=list)  # [(outcome, code, reply)] of every try

    @property
    def attempts(self):
        return len(self.history)


class Lost(Exception):
    """The connection broke; `sent` says whether the whole message had been sent."""

    def __init__(self, sent, cause):
        super().__init__(str(cause))
        self.sent = sent


def transaction(smtp, sender, rcpt, data):
    """MAIL, RCPT, DATA by hand, so that a broken connection is told apart
    before and after the end of the message. Returns (code, reply)."""
    sent = False
    try:
        smtp.ehlo_or_helo_if_needed()
        code, resp = smtp.mail(sender)
        if code != 250:
            smtp.rset()
            return code, resp
        code, resp = smtp.rcpt(rcpt)
        if code not in (250, 251):
            smtp.rset()
            return code, resp
        smtp.putcmd("data")
        code, resp = smtp.getreply()
        if code != 354:
            return code, resp
        body = smtplib._quote_periods(data)
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        smtp.send(body + b".\r\n")
        sent = True
        return smtp.getreply()
    except (OSError, smtplib.SMTPException) as exc:
        raise Lost(sent, exc) from exc


class Submitter:
    """A chatmail account sending through submission (587 STARTTLS or 465 TLS)."""

    def __init__(self, relay, port=587):
        self.relay, self.port = relay, port
        self.addr, self.password = new_credentials(relay.domain)
        self.via = str(port)

    def connect(self):
        if self.port == 465:
            smtp = smtplib.SMTP_SSL(self.relay.ip, 465, context=tls_context(), timeout=30)
        else:
            smtp = smtplib.SMTP(self.relay.ip, 587, timeout=30)
            smtp.starttls(context=tls_context())
        smtp.login(self.addr, self.password)
        return smtp

    def data(self, rcpt, msg_id):
        return crlf(message(self.addr, rcpt, msg_id))


class PeerMta:
    """A foreign relay delivering to `relay` on port 25 with STARTTLS, its mail
    DKIM-signed for `domain` (see peer_zone)."""

    def __init__(self, relay, domain, private_key, selector="opendkim"):
        self.relay, self.domain, self.key, self.selector = relay, domain, private_key, selector
        self.addr = new_credentials(domain)[0]
        self.via = "25"
        # DKIM signatures by recipient: dkimpy signs in pure Python (tens of
        # milliseconds, under the GIL), too slow for every message at 20/s.
        # The signed headers leave out Message-ID, the one that differs.
        self.signatures = {}

    def connect(self):
        smtp = smtplib.SMTP(self.relay.ip, 25, local_hostname=self.domain, timeout=30)
        smtp.ehlo()
        smtp.starttls(context=tls_context())
        smtp.ehlo()
        return smtp

    def data(self, rcpt, msg_id):
        import dkim

        raw = crlf(message(self.addr, rcpt, msg_id))
        sig = self.signatures.get(rcpt)
        if sig is None:
            sig = self.signatures[rcpt] = dkim.sign(
                raw,
                self.selector.encode(),
                self.domain.encode(),
                self.key,
                include_headers=[b"from", b"to", b"subject", b"date"],
            )
        return sig + raw


def dkim_key():
    """(private key PEM bytes, the TXT record value) of a fresh RSA DKIM key."""
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()


def peer_zone(domain, txt, ip, selector="opendkim"):
    """Zone records of a peer domain: A/MX at ip and its DKIM key (split into
    255-byte strings)."""
    chunks = " ".join(f'"{txt[i : i + 255]}"' for i in range(0, len(txt), 255))
    return [f"@ IN A {ip}", f"@ IN MX 10 {domain}.", f"{selector}._domainkey IN TXT ( {chunks} )"]


def create_recipients(relay, n):
    """n fresh accounts on relay (created by their first IMAP login)."""
    out = []
    for _ in range(n):
        addr, password = new_credentials(relay.domain)
        imap_login(relay.ip, addr, password).logout()
        out.append((relay, addr))
    return out


class Load:
    """Submit at `rate` messages/s in total from `senders` to `recipients`
    ([(relay, addr)], taken in turn) until stop()."""

    def __init__(self, senders, recipients, rate=25.0, attempts=ATTEMPTS, retry_delay=RETRY_DELAY):
        self.senders, self.recipients, self.rate = senders, recipients, rate
        self.attempts, self.retry_delay = attempts, retry_delay
        self.subs: list[Submission] = []
        self.connect_failures = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.tickets = itertools.count()
        self.rcpt_turn = itertools.count()
        self.threads = []
        self.t0 = 0.0
        self.run_id = uuid.uuid4().hex[:8]

    def _next_slot(self):
        with self.lock:
            k = next(self.tickets)
            due = self.t0 + k / self.rate
            now = time.monotonic()
            if due < now - 1.0:
                # more than a second behind (a fault stalled every sender):
                # restart the schedule instead of bursting to catch up
                self.t0 = now - k / self.rate
                due = now
            return due

    def _connect(self, sender):
        """(connection, None), or (None, the error) counted as a failed connect."""
        try:
            return sender.connect(), None
        except (OSError, smtplib.SMTPException) as exc:
            with self.lock:
                self.connect_failures += 1
            return None, exc

    def _run(self, sender):
        smtp = None
        while not self.stopping.is_set():
            if smtp is None:
                smtp, _error = self._connect(sender)
                if smtp is None:
                    self.stopping.wait(0.5)
                    continue
            due = self._next_slot()
            delay = due - time.monotonic()
            if delay > 0 and self.stopping.wait(delay):
                break
            relay, rcpt = self.recipients[next(self.rcpt_turn) % len(self.recipients)]
            msg_id = f"fault-{self.run_id}-{uuid.uuid4().hex[:12]}"
            sub = Submission(msg_id, sender.addr, rcpt, sender.via, time.time())
            data = sender.data(rcpt, msg_id)
            smtp = self._send(sender, smtp, sub, data)
            with self.lock:
                self.subs.append(sub)
        if smtp is not None:
            try:
                smtp.quit()
            except (OSError, smtplib.SMTPException):
                pass

    def _send(self, sender, smtp, sub, data):
        """Try `sub` until it is accepted, refused for good (5xx) or out of
        attempts (also after stop(): a sender finishes its retries); returns
        the connection to go on with (None: broken)."""
        while True:
            code, reply = None, ""
            if smtp is None:
                smtp, error = self._connect(sender)
                if smtp is None:
                    outcome, reply = "refused", f"connect failed: {error}"
            if smtp is not None:
                try:
                    code, raw = transaction(smtp, sender.addr, sub.rcpt, data)
                    reply = raw.decode("utf-8", "replace")
                    outcome = "accepted" if code == 250 else "refused"
                    if code == 421 or outcome == "refused" and 400 <= code < 500:
                        # a new connection for the next try, as clients do
                        smtp = _drop(smtp)
                except Lost as exc:
                    outcome = "unknown" if exc.sent else "refused"
                    reply = f"connection lost: {exc}"
                    smtp = _drop(smtp)
            sub.history.append((outcome, code, reply[:120]))
            sub.outcome, sub.code, sub.reply = outcome, code, reply
            final = outcome == "refused" and code is not None and code >= 500
            if outcome == "accepted" or final or sub.attempts >= self.attempts:
                sub.end = time.time()
                return smtp
            time.sleep(self.retry_delay)

    def start(self):
        self.t0 = time.monotonic()
        self.threads = [
            threading.Thread(target=self._run, args=(s,), daemon=True) for s in self.senders
        ]
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=90 + self.attempts * (self.retry_delay + 60))

    def run(self, seconds):
        time.sleep(seconds)

    def submissions(self):
        with self.lock:
            return list(self.subs)

    def accounts(self):
        """{relay domain: [addresses of the load on that relay]}"""
        out = {}
        for relay, addr in self.recipients:
            out.setdefault(relay.domain, set()).add(addr)
        for sender in self.senders:
            if isinstance(sender, Submitter):
                out.setdefault(sender.relay.domain, set()).add(sender.addr)
        return {domain: sorted(addrs) for domain, addrs in out.items()}


def _drop(smtp):
    try:
        smtp.close()
    except OSError:
        pass
    return None


# Runs in a relay host: stdin {"root": mailboxes dir, "addrs": [...], "end": ...};
# prints {"ids": {id: [[addr, mtime, complete], ...]}, "tmp": [...], "other": [...]}.
COUNT = r"""
import json, os, re, sys
args = json.load(sys.stdin)
ids, tmp, other = {}, [], []
pat = re.compile(rb"^Message-ID: <(fault-[0-9a-z-]+)@", re.M | re.I)
for addr in args["addrs"]:
    home = os.path.join(args["root"], addr.rsplit("@", 1)[1], addr)
    for dirpath, dirnames, filenames in os.walk(home):
        kind = os.path.basename(dirpath)
        if kind not in ("cur", "new", "tmp"):
            continue
        for name in filenames:
            path = os.path.join(dirpath, name)
            if kind == "tmp":
                tmp.append(path)
                continue
            try:
                with open(path, "rb") as f:
                    data = f.read()
                mtime = os.stat(path).st_mtime
            except OSError:
                continue
            head = data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
            m = pat.search(head)
            if not m:
                other.append(path)
                continue
            complete = data.rstrip().endswith(args["end"].encode())
            ids.setdefault(m.group(1).decode(), []).append([addr, mtime, complete])
print(json.dumps({"ids": ids, "tmp": tmp, "other": other}))
"""


def count(relay, addrs, root=MAILBOXES):
    """What the Maildirs of `addrs` on relay hold (see COUNT)."""
    args = json.dumps({"root": root, "addrs": addrs, "end": END})
    proc = relay.host.exec("python3", "-c", COUNT, input=args, timeout=300)
    return json.loads(proc.stdout)


def queue_size(relay):
    """Messages in the relay's postfix queues (postqueue -j: one JSON object a line)."""
    out = relay.host.exec("postqueue", "-j", check=False, timeout=60).stdout
    return sum(1 for line in out.splitlines() if line.strip().startswith("{"))


def bounces(relay, since):
    """postfix log lines of bounced mail (status=bounced) since a time.time()."""
    out = relay.host.sh(
        f"journalctl --no-pager -o cat --since @{int(since) - 1} | grep -F status=bounced",
        check=False,
        timeout=120,
    ).stdout
    return [line for line in out.splitlines() if "status=bounced" in line]


def dropped_copies(relay, since, run_id):
    """Copies of the load's messages LMTP's dedupe script dropped (its
    "discard action" log lines) since a time.time()."""
    out = relay.host.sh(
        f"journalctl --no-pager -o cat --since @{int(since) - 1}"
        f" | grep -F 'discard action' | grep -F '<fault-{run_id}-'",
        check=False,
        timeout=120,
    ).stdout
    return len(out.splitlines())


@dataclass
class Tally:
    sent: int = 0
    accepted: int = 0
    refused: int = 0
    unknown: int = 0
    delivered: int = 0  # accepted and in the right mailbox exactly once
    duplicated: int = 0  # any submission found more than once
    missing: int = 0  # accepted, found nowhere
    misplaced: int = 0  # found in a mailbox that is not its recipient's
    refused_delivered: int = 0  # refused to the sender (last try), delivered all the same
    unknown_delivered: int = 0
    retried: int = 0  # messages tried more than once (4xx or a broken connection)
    retried_accepted: int = 0  # ... and accepted at last: each must be there once
    dropped: int = 0  # second copies the relay's LMTP dropped (dedupe_period)
    partial: int = 0  # files without the sample's end
    tmp_left: int = 0  # files left in Maildir tmp/
    other_files: int = 0  # files in the load's mailboxes that are not load messages
    bounced: int = 0  # status=bounced log lines
    queued: int = 0  # messages still in a postfix queue
    recovery: float | None = None
    connect_failures: int = 0
    examples: dict = field(default_factory=dict)

    def problems(self):
        names = (
            "duplicated", "missing", "misplaced", "refused_delivered", "partial",
            "tmp_left", "other_files", "bounced", "queued",
        )  # fmt: skip
        out = [f"{name}={getattr(self, name)}" for name in names if getattr(self, name)]
        if out and self.examples:
            out.append("examples: " + json.dumps(self.examples)[:3000])
        return out

    def row(self, fault, note=""):
        rec = "–" if self.recovery is None else f"{self.recovery:.1f} s"
        notes = [note] if note else []
        if self.retried:
            notes.append(f"retried {self.retried} ({self.retried_accepted} accepted at last)")
        if self.dropped:
            notes.append(f"{self.dropped} second copies dropped by LMTP")
        note = "; ".join(notes)
        return (
            f"| {fault} | {self.sent} | {self.accepted} | {self.delivered} | {self.duplicated} "
            f"| {self.refused} | {self.unknown} | {self.missing} | {rec} | {note} |"
        )


TABLE_HEAD = [
    "| fault | sent | accepted | delivered | duplicated | refused | unknown | missing "
    "| recovery | notes |",
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
]


def tally(load, relays, since, recovered_at=None):
    """Count everything once (no waiting); see settle() for the waiting."""
    subs = load.submissions()
    accounts = load.accounts()
    found, tmp, other = {}, [], []
    queued = 0
    bounced = []
    dropped = 0
    for relay in relays:
        addrs = accounts.get(relay.domain, [])
        if addrs:
            got = count(relay, addrs)
            for msg_id, hits in got["ids"].items():
                found.setdefault(msg_id, []).extend(hits)
            tmp += got["tmp"]
            other += got["other"]
        queued += queue_size(relay)
        bounced += bounces(relay, since)
        dropped += dropped_copies(relay, since, load.run_id)
    t = Tally(sent=len(subs), connect_failures=load.connect_failures)
    t.tmp_left, t.other_files, t.queued, t.bounced = len(tmp), len(other), queued, len(bounced)
    t.dropped = dropped
    ex = t.examples
    if tmp:
        ex["tmp"] = tmp[:3]
    if other:
        ex["other"] = other[:3]
    if bounced:
        ex["bounced"] = bounced[:3]
    first_after = None
    for sub in subs:
        hits = found.get(sub.id, [])
        t.partial += sum(1 for _addr, _mtime, complete in hits if not complete)
        if sub.attempts > 1:
            t.retried += 1
            t.retried_accepted += sub.outcome == "accepted"
        if len(hits) > 1:
            t.duplicated += 1
            tries = [f"{o} {c or ''} {r[:60]}" for o, c, r in sub.history]
            ex.setdefault("duplicated", []).append([sub.id, len(hits), tries])
        if any(addr != sub.rcpt for addr, _m, _c in hits):
            t.misplaced += 1
        if sub.outcome == "accepted":
            t.accepted += 1
            if not hits:
                t.missing += 1
                ex.setdefault("missing", []).append([sub.id, sub.rcpt])
            elif len(hits) == 1 and hits[0][0] == sub.rcpt:
                t.delivered += 1
            if hits and recovered_at is not None and sub.start >= recovered_at:
                mtime = min(m for _a, m, _c in hits)
                first_after = mtime if first_after is None else min(first_after, mtime)
        elif sub.outcome == "refused":
            t.refused += 1
            if hits:
                t.refused_delivered += 1
                ex.setdefault("refused_delivered", []).append([sub.id, sub.reply[:120]])
        else:
            t.unknown += 1
            if hits:
                t.unknown_delivered += 1
    for key in ("duplicated", "missing", "refused_delivered"):
        if key in ex:
            ex[key] = ex[key][:3]
    if first_after is not None:
        t.recovery = max(0.0, first_after - recovered_at)
    return t


def settle(load, relays, since, recovered_at=None, timeout=180):
    """Wait until every accepted message is in a mailbox and the queues are
    empty (or timeout seconds passed); then the Tally."""
    deadline = time.monotonic() + timeout
    while True:
        t = tally(load, relays, since, recovered_at)
        done = t.missing == 0 and t.queued == 0
        if done or time.monotonic() > deadline:
            return t
        time.sleep(2)
