"""Benchmark: how fast one sending host gets mail into a relay (docs/faults.md).

    python bench/bench_intake.py [--messages 300] [--connections 1,4,8]
                                 [--backlog 1000] [--peer-connection-rate 60]
                                 [--parts mx,mx-new,submission,drain,outage]
                                 [--outage 120] [--rate 20] [--keep]

Boots two relays (intakeb1.test, intakeb2.test) converged from salt/ with the
fault suite's setup (tests/faults: the harness nsd serving their zones, rate
limits lifted since the CI machine is every client) and measures:

* mx: a foreign MTA on this machine (tests/faults/load.py PeerMta: STARTTLS,
  DKIM-signed for a peer domain the harness nsd serves) sends --messages
  encrypted messages to accounts on relay 2's port 25 over 1, 4, 8 ...
  (--connections) persistent connections, each transaction right after the
  previous one;
* mx-new: the same with a new connection (TCP, STARTTLS, EHLO) per message;
* submission: the same over 587 (STARTTLS + login), for comparison;
* drain: relay 1 holds --backlog messages for relay 2 (submitted to relay 1
  while its smtp transport is deferred), then releases them at once
  (postqueue -f): time until relay 1's queue is empty and every message is in
  relay 2's mailboxes, with relay 2 accepting --peer-connection-rate new
  port-25 connections a minute from relay 1 (the pillar default, 60);
* outage (not by default): relay 2 off the network for --outage seconds
  while --rate msgs/s go from relay 1 to it; then when relay 1's deferred
  messages are due (postfix's retry times) and how its queue drains.

Every SMTP phase is timed from the client side (connect up to the greeting,
EHLO, STARTTLS, the EHLO after it, AUTH, MAIL, RCPT, DATA up to 354, the
message up to the reply to its end); the rows give p50/p90 in milliseconds.
The server side is read from the relays' postfix log: the `delays=a/b/c/d` of
the deliveries (lmtp on the receiving relay, smtp on relay 1 for the drain),
p50/p90 in seconds.  Prints markdown tables; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import os
import re
import smtplib
import sys
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import percentile as pct  # noqa: E402
from bench import progress, release_harness_at_exit  # noqa: E402
from bench.bench_faults import two_relays  # noqa: E402
from tests.faults.load import (  # noqa: E402
    RELAY_LIMITS,
    PeerMta,
    Submitter,
    count,
    create_recipients,
    dkim_key,
    peer_zone,
    queue_size,
)
from tests.harness import dns, network_address  # noqa: E402
from tests.hosts.test_relay import tls_context  # noqa: E402

PEER_DOMAIN = "intakepeer.test"
CONN_PHASES = ("connect", "ehlo", "starttls", "ehlo2", "auth")
TX_PHASES = ("mail", "rcpt", "data", "eod")


def ms(values):
    """'p50/p90' in milliseconds."""
    if not values:
        return "–"
    return f"{pct(values, 0.5) * 1000:.0f}/{pct(values, 0.9) * 1000:.0f}"


class Timer:
    def __init__(self):
        self.times = defaultdict(list)
        self.lock = threading.Lock()

    def __call__(self, phase, start):
        now = time.monotonic()
        with self.lock:
            self.times[phase].append(now - start)
        return now


def timed_connect(sender, timer):
    """A connection of `sender` (PeerMta or Submitter), each phase timed."""
    t = time.monotonic()
    if isinstance(sender, PeerMta):
        smtp = smtplib.SMTP(sender.relay.ip, 25, local_hostname=sender.domain, timeout=60)
    else:
        smtp = smtplib.SMTP(sender.relay.ip, sender.port, timeout=60)
    t = timer("connect", t)
    smtp.ehlo()
    t = timer("ehlo", t)
    smtp.starttls(context=tls_context())
    t = timer("starttls", t)
    smtp.ehlo()
    t = timer("ehlo2", t)
    if isinstance(sender, Submitter):
        smtp.login(sender.addr, sender.password)
        timer("auth", t)
    return smtp


def timed_transaction(smtp, sender, rcpt, data, timer):
    """MAIL, RCPT, DATA, the message; returns the reply code to its end
    (or the first refusal)."""
    t = time.monotonic()
    code, _ = smtp.mail(sender)
    t = timer("mail", t)
    if code != 250:
        smtp.rset()
        return code
    code, _ = smtp.rcpt(rcpt)
    t = timer("rcpt", t)
    if code not in (250, 251):
        smtp.rset()
        return code
    smtp.putcmd("data")
    code, _ = smtp.getreply()
    t = timer("data", t)
    if code != 354:
        return code
    body = smtplib._quote_periods(data)
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    smtp.send(body + b".\r\n")
    code, _ = smtp.getreply()
    timer("eod", t)
    return code


def blast(senders, recipients, n, new_connection=False, run=None):
    """n messages from the senders (one thread and connection each) to the
    recipients ([(relay, addr)] in turn), each transaction right after the
    previous one.  Returns (accepted, other replies, seconds, Timer)."""
    timer = Timer()
    tickets = iter(range(n))
    lock = threading.Lock()
    codes = defaultdict(int)
    run = run or uuid.uuid4().hex[:8]

    def work(sender):
        smtp = None
        while True:
            with lock:
                k = next(tickets, None)
            if k is None:
                break
            _relay, rcpt = recipients[k % len(recipients)]
            data = sender.data(rcpt, f"fault-{run}-{k}")
            try:
                if smtp is None:
                    smtp = timed_connect(sender, timer)
                code = timed_transaction(smtp, sender.addr, rcpt, data, timer)
            except (OSError, smtplib.SMTPException) as exc:
                code = f"error {type(exc).__name__}"
                smtp = None
            with lock:
                codes[code] += 1
            if new_connection and smtp is not None:
                try:
                    smtp.quit()
                except (OSError, smtplib.SMTPException):
                    pass
                smtp = None
        if smtp is not None:
            try:
                smtp.quit()
            except (OSError, smtplib.SMTPException):
                pass

    start = time.monotonic()
    threads = [threading.Thread(target=work, args=(s,), daemon=True) for s in senders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.monotonic() - start
    accepted = codes.pop(250, 0)
    return accepted, dict(codes), seconds, timer


DELAYS = re.compile(
    r"postfix/(\w+)\[\d+\]: [0-9A-F]+: to=.* delays=([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+)"
)


def delays(relay, since, service):
    """[(a, b, c, d)] of the deliveries `service` (lmtp, smtp) logged since a time.time()."""
    out = relay.host.sh(
        f"journalctl --no-pager -o short --since @{int(since)} | grep -F ' delays='",
        check=False,
        timeout=120,
    ).stdout
    rows = []
    for m in DELAYS.finditer(out):
        if m.group(1) == service:
            rows.append(tuple(float(m.group(i)) for i in range(2, 6)))
    return rows


def delay_summary(rows):
    """'a b c d' as p50/p90 seconds of each."""
    if not rows:
        return "–"
    cols = list(zip(*rows, strict=True))
    parts = []
    for name, values in zip("abcd", cols, strict=True):
        parts.append(f"{name} {pct(values, 0.5):.2f}/{pct(values, 0.9):.2f}")
    return ", ".join(parts)


HEAD = (
    "| path | conns | sent | accepted | msgs/s | connect | EHLO | STARTTLS | AUTH "
    "| MAIL | RCPT | DATA | end of data | receiver delays s (p50/p90) | load |"
)
RULE = "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"


def row(path, conns, n, result, receiver_delays):
    accepted, other, seconds, timer = result
    t = timer.times
    note = f" ({other})" if other else ""
    return (
        f"| {path}{note} | {conns} | {n} | {accepted} | {accepted / seconds:.1f} "
        f"| {ms(t['connect'])} | {ms(t['ehlo'])} | {ms(t['starttls'])} | {ms(t['auth'])} "
        f"| {ms(t['mail'])} | {ms(t['rcpt'])} | {ms(t['data'])} | {ms(t['eod'])} "
        f"| {delay_summary(receiver_delays)} | {os.getloadavg()[0]:.1f} |"
    )


class Bench:
    def __init__(self, args, r1, r2, peer_key):
        self.args, self.r1, self.r2, self.peer_key = args, r1, r2, peer_key

    def peers(self, relay, k):
        return [PeerMta(relay, PEER_DOMAIN, self.peer_key) for _ in range(k)]

    def measure(self, path, make_senders, recipients, new_connection=False):
        lines = []
        for conns in self.args.conns:
            since = time.time()
            progress(f"{path}: {conns} connection(s), {self.args.messages} messages")
            result = blast(make_senders(conns), recipients, self.args.messages, new_connection)
            time.sleep(3)  # the last deliveries
            line = row(path, conns, self.args.messages, result, delays(self.r2, since, "lmtp"))
            print(line, flush=True)
            lines.append(line)
        return lines

    def mx(self, recipients):
        return self.measure("port 25, STARTTLS", lambda k: self.peers(self.r2, k), recipients)

    def mx_new(self, recipients):
        return self.measure(
            "port 25, new connection per message",
            lambda k: self.peers(self.r2, k),
            recipients,
            new_connection=True,
        )

    def submission(self, recipients):
        return self.measure(
            "587, STARTTLS + login", lambda k: [Submitter(self.r2) for _ in range(k)], recipients
        )

    def drain(self, recipients):
        """relay 1 holds --backlog messages for relay 2, then releases them.
        relay 2 limits new port-25 connections from relay 1 to
        --peer-connection-rate a minute meanwhile (the other rows lift it:
        this machine is every client there)."""
        r1, n = self.r1, self.args.backlog
        rate = self.args.peer_connection_rate
        self.r2.host.sh(
            f"postconf -e smtpd_client_connection_rate_limit={rate} && postfix reload", timeout=60
        )
        r1.host.sh("postconf -e 'defer_transports = smtp' && postfix reload", timeout=60)
        try:
            progress(f"drain: queueing {n} messages on relay 1 for relay 2")
            senders = [Submitter(r1) for _ in range(8)]
            run = uuid.uuid4().hex[:8]
            result = blast(senders, recipients, n, run=run)
            accepted = result[0]
            deadline = time.monotonic() + 120
            while queue_size(r1) < accepted and time.monotonic() < deadline:
                time.sleep(1)
            queued = queue_size(r1)
        finally:
            r1.host.sh("postconf -e 'defer_transports =' && postfix reload", timeout=60)
        since = time.time()
        start = time.monotonic()
        r1.host.exec("postqueue", "-f")
        progress(f"drain: {queued} queued on relay 1, released")
        empty = None
        while time.monotonic() - start < self.args.drain_timeout:
            if queue_size(r1) == 0:
                empty = time.monotonic() - start
                break
            time.sleep(1)
        addrs = sorted({addr for _relay, addr in recipients})
        got = count(self.r2, addrs)
        delivered = sum(1 for i in got["ids"] if i.startswith(f"fault-{run}-"))
        smtp = delays(r1, since, "smtp")
        log = f"journalctl --no-pager -o cat --since @{int(since)}"
        connects = self.r2.host.sh(
            f"{log} | grep -c 'connect from unknown\\[{r1.ip}\\]'", check=False
        ).stdout.strip()
        refused = self.r2.host.sh(
            f"{log} | grep -c 'Connection rate limit exceeded'", check=False
        ).stdout.strip()
        reuse = r1.host.exec("postconf", "-h", "smtp_tls_connection_reuse").stdout.strip()
        msgs = f"{queued / empty:.1f}" if empty else "–"
        took = f"{empty:.0f} s" if empty else f"> {self.args.drain_timeout:.0f} s"
        print(
            "| relay 1 → relay 2 | queued | queue empty after | msgs/s | connections (refused) "
            "| relay 1 smtp delays s (p50/p90) | relay 2 lmtp delays s | load |\n"
            "|---|---:|---:|---:|---:|---|---|---:|\n"
            f"| drain, TLS connection reuse {reuse}, relay 2 accepts {rate} connections/min "
            f"| {queued} | {took} | {msgs} | {connects} ({refused}) | {delay_summary(smtp)} "
            f"| {delay_summary(delays(self.r2, since, 'lmtp'))} | {os.getloadavg()[0]:.1f} |\n"
            f"\n({delivered} of the {accepted} accepted messages in relay 2's mailboxes)",
            flush=True,
        )
        lifted = RELAY_LIMITS["smtp_connection_rate_per_minute"]
        self.r2.host.sh(
            f"postconf -e smtpd_client_connection_rate_limit={lifted} && postfix reload",
            timeout=60,
        )


RETRY_TIMES = (
    "find /var/spool/postfix/deferred -type f -printf '%T@\\n' 2>/dev/null; echo now $(date +%s.%N)"
)


def retry_schedule(relay):
    """Seconds from now until the next attempt of each deferred message
    (postfix keeps it as the queue file's modification time)."""
    lines = relay.host.sh(RETRY_TIMES, check=False, timeout=120).stdout.split()
    now = float(lines[lines.index("now") + 1])
    return [float(t) - now for t in lines[: lines.index("now")]]


def outage_drain(bench, recipients):
    """Mail from relay 1 to relay 2 while relay 2 is off the network for
    --outage seconds; then how relay 1's queue drains."""
    from tests.faults import actions
    from tests.faults.load import Load

    args, r1, r2 = bench.args, bench.r1, bench.r2
    senders = [Submitter(r1, 587 if i % 2 == 0 else 465) for i in range(8)]
    load = Load(senders, recipients, args.rate).start()
    try:
        time.sleep(3)
        progress(f"outage: relay 2 away for {args.outage:.0f} s")
        actions.disconnect(r2.host)
        time.sleep(args.outage)
    finally:
        load.stop()
        actions.reconnect(r2.host)
    since = time.time()
    start = time.monotonic()
    waits = sorted(retry_schedule(r1))
    progress(f"outage over: {len(waits)} deferred on relay 1")
    timeline = []
    empty = None
    while time.monotonic() - start < args.drain_timeout:
        q = queue_size(r1)
        timeline.append((time.monotonic() - start, q))
        if q == 0:
            empty = time.monotonic() - start
            break
        time.sleep(5)
    accepted = sum(1 for s in load.submissions() if s.outcome == "accepted")
    marks = [f"{t:.0f} s: {q}" for t, q in timeline[:: max(1, len(timeline) // 12)]]
    took = f"{empty:.0f} s" if empty is not None else f"> {args.drain_timeout:.0f} s"
    quantiles = "/".join(f"{pct(waits, q):.0f}" for q in (0.1, 0.5, 0.9, 1.0)) if waits else "–"
    print(
        f"relay 2 away {args.outage:.0f} s, {accepted} messages accepted on relay 1 "
        f"({args.rate:g}/s offered).\n\n"
        f"| deferred at the end | next attempt in s (p10/p50/p90/max) | queue empty after "
        f"| queue on relay 1 | relay 1 smtp delays s (p50/p90) | load |\n"
        f"|---:|---|---:|---|---|---:|\n"
        f"| {len(waits)} | {quantiles} "
        f"| {took} | {', '.join(marks)} | {delay_summary(delays(r1, since, 'smtp'))} "
        f"| {os.getloadavg()[0]:.1f} |",
        flush=True,
    )


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=300, help="messages per row")
    parser.add_argument("--connections", default="1,4,8", help="client connections per row")
    parser.add_argument("--backlog", type=int, default=1000, help="messages of the drain row")
    parser.add_argument("--drain-timeout", type=float, default=900.0)
    parser.add_argument(
        "--peer-connection-rate",
        type=int,
        default=60,
        help="relay 2's port-25 connections a minute from relay 1 in the drain row "
        "(default: limits:smtp_connection_rate_per_minute's default)",
    )
    parser.add_argument("--parts", default="mx,mx-new,submission,drain")
    parser.add_argument("--outage", type=float, default=120.0, help="seconds (part outage)")
    parser.add_argument("--rate", type=float, default=20.0, help="msgs/s offered (part outage)")
    parser.add_argument("--queue-retry", default="30s", help="limits:queue_retry of the relays")
    parser.add_argument("--keep", action="store_true", help="keep the relays running")
    args = parser.parse_args(argv)
    args.conns = [int(c) for c in args.connections.split(",") if c]
    args.parts = [p for p in args.parts.split(",") if p]
    return args


def peer_key():
    """The DKIM key of the peer domain whose mail this machine sends to port
    25, its zone published."""
    key, txt = dkim_key()
    dns.set_zone(
        PEER_DOMAIN, dns.zone_text(PEER_DOMAIN, peer_zone(PEER_DOMAIN, txt, network_address()))
    )
    return key


def main(argv):
    args = parse_args(argv)
    release_harness_at_exit(keep=args.keep)
    with two_relays("intakeb", args) as relays:
        bench = Bench(args, *relays, peer_key())
        progress("accounts")
        recipients = create_recipients(bench.r2, 8)
        if {"mx", "mx-new", "submission"} & set(args.parts):
            print(
                f"One sending host (this machine) into relay 2: {args.messages} encrypted "
                f"messages per row to 8 accounts, each connection sending the next "
                f"message as soon as the previous one is answered; p50/p90 ms per SMTP "
                f"phase.\n"
            )
            print(HEAD + "\n" + RULE, flush=True)
        if "mx" in args.parts:
            bench.mx(recipients)
        if "mx-new" in args.parts:
            bench.mx_new(recipients)
        if "submission" in args.parts:
            bench.submission(recipients)
        print(flush=True)
        if "drain" in args.parts:
            bench.drain(recipients)
        if "outage" in args.parts:
            print(flush=True)
            outage_drain(bench, recipients)
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
