"""Benchmark: end to end on relays converged from salt/ (real systemd hosts).

    python bench/bench_e2e.py [--n 200] [--builds patched,debian] [--lost-n 1000]
                              [--gap 1.5] [--duration 60] [--keep]
                              [--parts idle,lost,dc,hibernated,memory,throughput,logins,bypass]
                              [--memory-clients 500] [--dc-pairs same,cross]

Boots a pair of relays per Dovecot build (chatmail:dovecot:source): e2eb1.test
and e2eb2.test with the patched build (the default), e2eb3.test and e2eb4.test
with Debian's own Dovecot, plus a client host on the harness test network, with
the same setup as the acceptance suite (nsd zones from the relays' own zone
fragments, rate limits lifted so the CI machine counts as many clients), and
measures:

* highstate: fresh converge of all relays in parallel, then a no-op re-run;
* latency rows, N messages one after the other per row, for each build, on one
  relay and across relays, in three patterns:
  - "idle ≥ gap": the receiver has been in IMAP IDLE for --gap seconds before
    each send (a phone waiting for mail);
  - "back-to-back": the next message is sent as soon as the previous one was
    seen (it lands in the first milliseconds of the new IDLE);
  - "random 0–3 s": the receiver idles a random 0–3 s (uniform, seeded) before
    each send;
  for
  - smtplib submission of the encrypted sample to a receiver waiting in IMAP
    IDLE, until the untagged `EXISTS`;
  - the real Delta Chat core (rpc server in the client host): A sends a text,
    B's `IncomingMsg` event; its patterns are back-to-back, "1.1 s pace" (one
    message every 1.1 s, or at once when the previous one took longer) and
    random 0–3 s after B received the previous one; back-to-back twice: with
    one sender (which the core itself paces at one message a second after a
    burst of three) and with 12 senders taking turns (B gets each message in
    the first milliseconds of its new IDLE, as in the SMTP row);
* lost announcements (--parts lost): --lost-n messages SMTP → IDLE on one
  relay at random 0–3 s gaps, per build; every message must be announced
  (column "> 2 s": announced, but later than 2 s; "stuck": not within 10 s);
* hibernated (--parts hibernated): the spaced SMTP → IDLE row on the patched
  relay1 with imap:hibernate_timeout 1 s, so every message wakes a hibernated
  session (the cost of hibernation for a client that waited longer than the
  timeout);
* memory (--parts memory): RSS and PSS of all Dovecot processes of the
  patched relay with --memory-clients idle IMAP clients (one account each,
  INBOX selected, in IDLE), hibernation on (the pillar default) and off
  (chatmail:imap:hibernate_timeout 0, one highstate);
* throughput: 10 and 50 concurrent senders (one account and one SMTP
  connection each) for --duration seconds, then every accepted message is
  counted in the recipients' Maildirs (loss must be zero);
* 100 parallel first logins over IMAPS: TLS handshake only, first login
  (account creation by doveauth) and second login of the same accounts;
* filtermail bypassed: relay1's pillar gets the benchmark-only switch
  chatmail:testing:filtermail_bypass, one highstate applies it, and the
  same-relay SMTP → IDLE rows run again without filtermail.

Rows that are mostly waiting run at once on their own accounts: the SMTP →
IDLE rows of one pattern for both builds and both relay pairs, and the lost
rows beside the idle and Delta Chat parts (each row's load column shows what
ran beside it).  The Delta Chat rows share one client and run one by one.

Prints markdown tables (p50/p95/p99 in milliseconds) with the 1-minute load
average of the machine at the end of each row; progress goes to stderr.  Not
part of the tests.
"""

from __future__ import annotations

import argparse
import functools
import imaplib
import json
import os
import random
import re
import smtplib
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from queue import Empty

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import deltachat_rpc_server  # noqa: E402

from bench import progress, release_harness_at_exit  # noqa: E402
from tests.acceptance.test_deltachat import dclogin_url  # noqa: E402
from tests.harness import GATEWAY, dns, ensure_infra, hosts  # noqa: E402
from tests.harness import acceptance_relays as ar  # noqa: E402
from tests.harness.docker import docker as docker_cli  # noqa: E402
from tests.harness.docker import env as docker_env  # noqa: E402
from tests.hosts.test_relay import (  # noqa: E402
    encrypted_message,
    hibernate_timeout,
    imap_login,
    new_credentials,
    tls_context,
)

UNLIMITED = {
    "smtp_connection_rate_per_minute": 100000,
    "smtp_max_connections_per_client": 1000,
    "imap_login_rate_per_minute": 100000,
    "imap_max_userip_connections": 1000,
}
PARAMS = {
    "max_load_1m": 1000,
    "max_user_send_per_minute": 1000000,
    "max_user_send_burst_size": 1000000,
}
BUILDS = {
    # build name: (label in the tables, extra pillar, relay specs)
    "patched": (
        "patched",
        {},
        [
            ar.RelaySpec("cmsalt-e2ebench-1", "e2eb1.test", "auto", PARAMS, UNLIMITED),
            ar.RelaySpec("cmsalt-e2ebench-2", "e2eb2.test", "auto", PARAMS, UNLIMITED),
        ],
    ),
    "debian": (
        "stock",
        {"dovecot": {"source": "debian"}},
        [
            ar.RelaySpec("cmsalt-e2ebench-3", "e2eb3.test", "auto", PARAMS, UNLIMITED),
            ar.RelaySpec("cmsalt-e2ebench-4", "e2eb4.test", "auto", PARAMS, UNLIMITED),
        ],
    ),
}
for _label, _extra, _specs in BUILDS.values():
    for _spec in _specs:
        _spec.extra = dict(_extra)
SPECS = [spec for _label, _extra, specs in BUILDS.values() for spec in specs]
CLIENT = {"name": "cmsalt-e2ebench-client", "fqdn": "e2ebclient.test", "ip": "auto"}
RPC_SERVER = "/usr/local/bin/deltachat-rpc-server"
PUSH_URL = f"http://{GATEWAY}:9/notify"  # nothing listens; pushes are retried and dropped
# A message not seen this long after the send counts as stuck: the receiver is
# nudged (IMAP: DONE; Delta Chat: maybe_network) and the row goes on.
STUCK_S = 10.0
# Announced, but late: counted in the "> 2 s" column.
SLOW_S = 2.0
DC_PACE = 1.1
# Back-to-back Delta Chat rows also run with this many senders taking turns:
# each then sends about once a second, within the core's own rate limit.
DC_TURNS = 12
# gap_fn seeds per Delta Chat pattern (only "random" draws gaps; 12 as before)
DC_SEEDS = {"b2b": 10, "pace": 11, "random": 12}
RANDOM_MAX = 3.0


def pct(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def load1():
    return os.getloadavg()[0]


def ms_row(label, samples, stuck, load, build="patched"):
    """samples: latencies in seconds of the messages seen within STUCK_S."""
    ms = [s * 1000 for s in samples] or [float("nan")]
    slow = sum(1 for s in samples if s > SLOW_S)
    return (
        f"| {label} | {build} | {len(samples) + stuck} | {pct(ms, 50):.0f} | {pct(ms, 95):.0f} "
        f"| {pct(ms, 99):.0f} | {max(ms):.0f} | {slow} | {stuck} | {load:.1f} |"
    )


def gap_fn(pattern, gap, seed):
    """Seconds to wait before each send: spaced (gap), back-to-back (0) or
    random uniform 0..RANDOM_MAX (seeded, so both builds get the same gaps)."""
    if pattern == "random":
        rng = random.Random(seed)
        return lambda: rng.uniform(0, RANDOM_MAX)
    return lambda: gap if pattern == "spaced" else 0.0


def pattern_label(pattern, gap):
    return {
        "spaced": f"idle ≥ {gap:g} s",
        "b2b": "back-to-back",
        "random": f"random 0–{RANDOM_MAX:g} s",
        "pace": f"{DC_PACE:g} s pace",
    }[pattern]


# --- hosts --------------------------------------------------------------------


def converge_fresh(pillar_root):
    def boot(spec):
        pillar = ar.write_pillar(Path(pillar_root) / spec.name, spec, PUSH_URL)
        return hosts.boot(spec.name, spec.domain, ip=spec.ip, pillar_dir=pillar)

    with ThreadPoolExecutor(len(SPECS)) as pool:
        booted = dict(zip([s.name for s in SPECS], pool.map(boot, SPECS), strict=True))
    dns.set_zones({s.domain: ar.bootstrap_zone(s.domain, booted[s.name].ip) for s in SPECS})

    def one(spec):
        host = booted[spec.name]
        start = time.monotonic()
        first = hosts.converge(host)
        fresh = time.monotonic() - start
        start = time.monotonic()
        again = hosts.converge(host)
        noop = time.monotonic() - start
        return ar.Relay(spec, host, first), fresh, noop, len(first.changed), len(again.changed)

    with ThreadPoolExecutor(len(SPECS)) as pool:
        rows = list(pool.map(one, SPECS))
    relays = [r[0] for r in rows]
    for relay in relays:
        if not relay.first.ok:
            raise SystemExit(f"{relay.domain}: highstate failed\n{relay.first.summary()}")
    ar.publish(relays)
    return relays, rows


# --- Delta Chat ---------------------------------------------------------------


class DeltaChatClient:
    def __init__(self, client_host, logdir):
        from deltachat_rpc_client import DeltaChat, Rpc

        self.log = open(Path(logdir) / "rpc-server.log", "wb")
        argv = ["docker", "exec", "-i", "-e", "DC_ACCOUNTS_PATH=/root/dc-bench"]
        argv += [client_host.name, RPC_SERVER]
        self.rpc = Rpc(rpc_server_path=argv, env=docker_env(), stderr=self.log)
        self.rpc.start()
        self.dc = DeltaChat(self.rpc)

    def account(self, relay):
        addr, password = new_credentials(relay.domain)
        acc = self.dc.add_account()
        acc.add_transport_from_qr(dclogin_url(addr, password))
        acc.bring_online()
        return acc

    def close(self):
        self.rpc.close()
        self.log.close()


def wait_kind(acc, kind, timeout=None, **match):
    """The next event of that kind (and fields); None after timeout seconds."""
    queue = acc._rpc.get_queue(acc.id)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return None
        try:
            event = queue.get(timeout=remaining)
        except Empty:
            return None
        if event["kind"] == kind and all(event.get(k) == v for k, v in match.items()):
            return event


def wait_nudged(client, acc, kind, **match):
    """wait_kind with STUCK_S; if stuck, nudge the core's IMAP loop until it comes.
    Returns True if it came without a nudge."""
    if wait_kind(acc, kind, STUCK_S, **match):
        return True
    for _ in range(12):
        client.dc.maybe_network()
        if wait_kind(acc, kind, STUCK_S, **match):
            return False
    raise SystemExit(f"{kind} did not arrive even after nudging the core")


def dc_latency(client, relay_a, relay_b, n, gap, pace=None, senders=1):
    """A → B text messages; before each send wait gap() seconds after B
    received the previous one, or (pace) until `pace` seconds after the
    previous send.  With senders > 1, that many accounts A1..Ak take turns
    (each secure-joined with B): the core paces its own sending at one
    message a second after a burst of three (its Ratelimit(3 s, 3) in
    context.rs), so one sender cannot send back-to-back; k senders in turn
    can.  Returns (latencies of messages seen within STUCK_S, number stuck)."""
    b = client.account(relay_b)
    chats = []
    for _ in range(senders):
        a = client.account(relay_a)
        chats.append(a.secure_join(b.get_qr_code()))
        wait_nudged(client, b, "SecurejoinInviterProgress", progress=1000)
        wait_nudged(client, a, "SecurejoinJoinerProgress", progress=1000)
    samples, stuck = [], 0
    start = None
    for i in range(n):
        if pace is not None and start is not None:
            time.sleep(max(0.0, start + pace - time.monotonic()))
        else:
            time.sleep(gap())
        b.clear_all_events()
        start = time.monotonic()
        chats[i % senders].send_text(f"bench {i}")
        if wait_nudged(client, b, "IncomingMsg"):
            samples.append(time.monotonic() - start)
        else:
            stuck += 1
    return samples, stuck


# --- SMTP -> IMAP IDLE ----------------------------------------------------------


def idle_latency(relay_send, relay_recv, n, gap):
    """smtplib submit → untagged EXISTS in IDLE; the receiver enters IDLE and
    waits gap() seconds before each send (0: back-to-back).  Returns (latencies
    of messages seen within STUCK_S, number stuck: those are fetched by ending
    the IDLE, as a client's IDLE refresh would)."""
    sender, sender_pw = new_credentials(relay_send.domain)
    rcpt, rcpt_pw = new_credentials(relay_recv.domain)
    imap = imap_login(relay_recv.ip, rcpt, rcpt_pw)
    imap.select("INBOX")
    msg = encrypted_message(sender, rcpt)
    samples, stuck = [], 0
    with smtplib.SMTP(relay_send.ip, 587, timeout=60) as smtp:
        smtp.starttls(context=tls_context())
        smtp.login(sender, sender_pw)
        for _ in range(n):
            tag = imap._new_tag()
            imap.send(tag + b" IDLE\r\n")
            while not imap.readline().startswith(b"+"):
                pass
            time.sleep(gap())
            lock = threading.Lock()
            state = {"seen": False, "nudged": False}

            def nudge(lock=lock, state=state):
                with lock:
                    if not state["seen"]:
                        state["nudged"] = True
                        imap.send(b"DONE\r\n")

            timer = threading.Timer(STUCK_S, nudge)
            timer.start()
            start = time.monotonic()
            smtp.sendmail(sender, [rcpt], msg)
            completed = False
            while True:
                line = imap.readline()
                if b"EXISTS" in line:
                    break
                if line.startswith(tag):  # DONE answered before EXISTS
                    completed = True
                    break
            elapsed = time.monotonic() - start
            with lock:
                state["seen"] = True
                nudged = state["nudged"]
            timer.cancel()
            if nudged:
                stuck += 1
            else:
                samples.append(elapsed)
                imap.send(b"DONE\r\n")
            while not completed and not imap.readline().startswith(tag):
                pass
            if completed:
                imap.noop()  # the sync that reports the message
    imap.logout()
    return samples, stuck


def set_bypass(relay, pillar_root, on):
    """Rewrite the relay's pillar with chatmail:testing:filtermail_bypass and
    apply it; returns (seconds, states changed)."""
    spec = relay.spec
    spec.extra = ar._merge(spec.extra, {"testing": {"filtermail_bypass": on}})
    ar.write_pillar(Path(pillar_root) / spec.name, spec, PUSH_URL)
    start = time.monotonic()
    result = hosts.converge(relay.host)
    took = time.monotonic() - start
    if not result.ok:
        raise SystemExit(f"{relay.domain}: highstate with bypass={on} failed\n{result.summary()}")
    master = relay.host.sh("postconf -M submission/inet submissions/inet").stdout
    if ("smtpd_proxy_filter" in master) == on:
        raise SystemExit(f"{relay.domain}: bypass={on} did not reach master.cf:\n{master}")
    return took, len(result.changed)


# --- throughput -------------------------------------------------------------------


def throughput(relay, senders, duration):
    pairs = [(new_credentials(relay.domain), new_credentials(relay.domain)) for _ in range(senders)]
    with ThreadPoolExecutor(min(50, senders * 2)) as pool:
        list(pool.map(lambda c: imap_login(relay.ip, *c).logout(), [c for p in pairs for c in p]))
    counts = [0] * senders
    errors = [0] * senders
    deadline = time.monotonic() + duration

    def send(i):
        (sender, sender_pw), (rcpt, _pw) = pairs[i]
        msg = encrypted_message(sender, rcpt)
        with smtplib.SMTP(relay.ip, 587, timeout=60) as smtp:
            smtp.starttls(context=tls_context())
            smtp.login(sender, sender_pw)
            while time.monotonic() < deadline:
                try:
                    smtp.sendmail(sender, [rcpt], msg)
                    counts[i] += 1
                except smtplib.SMTPException:
                    errors[i] += 1

    start = time.monotonic()
    threads = [threading.Thread(target=send, args=(i,)) for i in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sent_time = time.monotonic() - start
    accepted = sum(counts)
    rcpts = " ".join(f"'{ar_user_dir(relay, p[1][0])}'" for p in pairs)
    delivered = 0
    drain_deadline = time.monotonic() + 180
    while time.monotonic() < drain_deadline:
        out = relay.host.sh(f"find {rcpts} -path '*/new/*' -type f -o -path '*/cur/*' -type f")
        delivered = len(out.stdout.split())
        if delivered >= accepted:
            break
        time.sleep(1)
    all_done = time.monotonic() - start
    return accepted, sum(errors), delivered, sent_time, all_done


def ar_user_dir(relay, addr):
    return f"/home/vmail/mail/{relay.domain}/{addr}"


# --- logins ----------------------------------------------------------------------


def parallel_logins(relay, n=100):
    creds = [new_credentials(relay.domain) for _ in range(n)]

    def tls_only(_cred):
        with socket.create_connection((relay.ip, 993), timeout=60) as sock:
            with tls_context().wrap_socket(sock, server_hostname=relay.domain) as tls:
                tls.recv(256)

    def login(cred):
        imap = imaplib.IMAP4_SSL(relay.ip, 993, ssl_context=tls_context(), timeout=60)
        imap.login(*cred)
        imap.logout()

    rows = []
    for label, func in (
        ("TLS handshake + greeting only", tls_only),
        ("first login (account created)", login),
        ("second login (existing account)", login),
    ):
        start = time.monotonic()
        with ThreadPoolExecutor(n) as pool:
            list(pool.map(func, creds))
        rows.append((label, time.monotonic() - start))
    return rows


# --- memory of idle clients --------------------------------------------------------

# Sums over every Dovecot process of the relay (the master, imap-login, imap,
# imap-hibernate, auth, ...): RSS counts shared pages once per process, PSS
# splits them between the processes that share them (their sum is what the
# processes really occupy).
MEMORY_SCRIPT = r"""
import os, sys, collections
kinds = collections.Counter(); rss = pss = 0
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[0].decode()
        if not (cmd.startswith("dovecot/") or cmd == "/usr/sbin/dovecot"):
            continue
        rollup = open(f"/proc/{pid}/smaps_rollup").read().splitlines()[1:]
        fields = dict(line.split(":", 1) for line in rollup)
    except (OSError, ValueError):
        continue
    kinds[cmd.split()[0]] += 1
    rss += int(fields["Rss"].split()[0]); pss += int(fields["Pss"].split()[0])
print(rss, pss, " ".join(f"{k}={v}" for k, v in sorted(kinds.items())))
"""

INOTIFY_INSTANCES = "/proc/sys/fs/inotify/max_user_instances"


def raise_inotify_instances(minimum):
    """Every IDLE session (live or hibernated) holds an inotify instance of the
    relay's vmail uid; containers share the machine's limit (128 by default),
    beyond which Dovecot polls every 30 s instead.  Returns the old value."""
    old = int(Path(INOTIFY_INSTANCES).read_text())
    if old < minimum:
        Path(INOTIFY_INSTANCES).write_text(f"{minimum}\n")
    return old


def dovecot_memory(relay):
    out = relay.host.exec("python3", "-c", MEMORY_SCRIPT).stdout.split(maxsplit=2)
    return int(out[0]), int(out[1]), out[2].strip() if len(out) > 2 else ""


def hibernated_sessions(relay):
    pids = set(relay.host.sh("pgrep -f '^dovecot/imap-hibernate'", check=False).stdout.split())
    who = relay.host.exec("doveadm", "who", "-1", check=False).stdout
    sessions = re.findall(r"^\S+\s+imap\s+(\d+)\s", who, re.M)
    return sum(1 for pid in sessions if pid in pids), len(sessions)


def idle_clients_memory(relay, n, hibernate_timeout):
    """Open n IMAPS sessions (one new account each) in IDLE, wait until they
    are hibernated (or 20 s when hibernation is off), measure, close them.
    Returns (rss KiB, pss KiB, process kinds, hibernated sessions, sessions)."""
    creds = [new_credentials(relay.domain) for _ in range(n)]

    def open_idle(cred):
        imap = imap_login(relay.ip, *cred)
        imap.select("INBOX")
        imap.send(imap._new_tag() + b" IDLE\r\n")
        assert imap.readline().startswith(b"+")
        return imap

    base = dovecot_memory(relay)
    with ThreadPoolExecutor(25) as pool:
        conns = list(pool.map(open_idle, creds))
    try:
        if hibernate_timeout:
            deadline = time.monotonic() + hibernate_timeout + 120
            while time.monotonic() < deadline:
                hib, total = hibernated_sessions(relay)
                if hib >= n:
                    break
                time.sleep(2)
        else:
            time.sleep(20)
        hib, total = hibernated_sessions(relay)
        rss, pss, kinds = dovecot_memory(relay)
    finally:
        for imap in conns:
            try:
                imap.shutdown()
            except OSError:
                pass
    return base, (rss, pss, kinds), hib, total


def set_hibernation(relay, pillar_root, timeout):
    spec = relay.spec
    spec.extra = ar._merge(spec.extra, {"imap": {"hibernate_timeout": timeout}})
    ar.write_pillar(Path(pillar_root) / spec.name, spec, PUSH_URL)
    result = hosts.converge(relay.host)
    if not result.ok:
        raise SystemExit(f"{relay.domain}: highstate with hibernate_timeout={timeout} failed")
    return len(result.changed)


def row_order(row):
    """Latency rows: SMTP, bypassed, then Delta Chat; same relay before
    across relays; then by pattern; the stock build after the patched."""
    names = ("idle ≥", "back-to-back", "random", "pace")
    pattern = next((i for i, p in enumerate(names) if p in row), 9)
    return (
        "Delta Chat" in row,
        "bypassed" in row,
        "lost" in row,
        "relay1 → relay2" in row,
        pattern,
        "hibernated" in row,
        "| stock |" in row,
    )


PARTS = ("dc", "idle", "lost", "hibernated", "memory", "throughput", "logins", "bypass")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200, help="messages per latency row")
    parser.add_argument("--lost-n", type=int, default=1000, help="messages of the lost row")
    parser.add_argument("--duration", type=float, default=60, help="seconds per throughput row")
    parser.add_argument(
        "--gap", type=float, default=1.5, help="seconds the receiver idles before a spaced send"
    )
    parser.add_argument(
        "--builds", default="patched,debian", help="comma-separated subset of patched,debian"
    )
    parser.add_argument(
        "--dc-pairs", default="same,cross", help="Delta Chat rows: same relay and/or across"
    )
    parser.add_argument("--memory-clients", type=int, default=500)
    parser.add_argument(
        "--parts",
        default="idle,lost,dc,hibernated,memory",
        help=f"comma-separated subset of {','.join(PARTS)}",
    )
    parser.add_argument("--keep", action="store_true", help="leave the hosts running")
    args = parser.parse_args(argv)
    args.parts = set(args.parts.split(","))
    if args.parts - set(PARTS):
        parser.error(f"unknown parts: {', '.join(sorted(args.parts - set(PARTS)))}")
    args.builds = [b for b in args.builds.split(",") if b]
    if set(args.builds) - set(BUILDS) or not args.builds:
        parser.error(f"--builds: a subset of {','.join(BUILDS)}")
    return args


class Run:
    """One benchmark run: its arguments, hosts and the tables it prints.

    ``out`` holds (section title, header lines, rows, notes) in print order;
    ``lat`` is the rows of the latency table (sorted before printing)."""

    def __init__(self, args, tmp):
        self.args = args
        self.builds = args.builds
        self.tmp = tmp
        self.out = []
        self.lat = []
        self.hs = None
        self.relays = []
        self.pairs_of = {}  # build -> (label, [(pair label, sender relay, receiver relay)])
        self.r1 = self.r2 = None
        self.client_host = None

    def table(self, title, header, notes=""):
        section = (title, header, [], [notes] if notes else [])
        self.out.append(section)
        return section[2]

    def record(self, text, samples, stuck, label):
        self.lat.append(ms_row(text, samples, stuck, load1(), label))
        progress(self.lat[-1])

    def print_tables(self, loads):
        if self.lat:
            self.lat.sort(key=row_order)
        for title, header, rows_, notes in self.out:
            if not rows_:
                continue
            print(f"### {title}\n")
            print("\n".join(header + rows_))
            for note in notes:
                print(f"\n{note}")
            print(flush=True)
        fmt = lambda la: " ".join(f"{x:.2f}" for x in la)  # noqa: E731
        print(f"1/5/15-minute load: before {fmt(loads[0])}, after {fmt(loads[-1])}", flush=True)


def converge(run):
    """Boot and converge the relays; the highstate and Dovecot tables."""
    progress(f"booting and converging {len(SPECS)} relays")
    run.relays, rows = converge_fresh(run.tmp)
    run.hs = run.table(
        "highstate (all hosts converged in parallel)",
        ["| host | run | s | states changed |", "|---|---|---:|---:|"],
    )
    for relay, fresh, noop, changed, again in rows:
        run.hs.append(f"| {relay.domain} | fresh converge | {fresh:.1f} | {changed} |")
        run.hs.append(f"| {relay.domain} | no-op re-run | {noop:.1f} | {again} |")
    progress("converged")
    by_domain = {r.domain: r for r in run.relays}
    versions = run.table("Dovecot per relay", ["| relay | build | dovecot-core |", "|---|---|---|"])
    for b in run.builds:
        label, _extra, specs = BUILDS[b]
        ra, rb = (by_domain[s.domain] for s in specs)
        run.pairs_of[b] = (label, [("same relay", ra, ra), ("relay1 → relay2", ra, rb)])
        for r in (ra, rb):
            ver = r.host.exec("dpkg-query", "-W", "-f=${Version}", "dovecot-core").stdout.strip()
            versions.append(f"| {r.domain} | {label} | {ver} |")
    run.r1, run.r2 = run.pairs_of[run.builds[0]][1][1][1:]


def side_by_side(jobs):
    """Run the (label, function) jobs in threads at once; their results in
    order.  Latency rows are mostly waiting (the receiver idles, the relay
    delivers in milliseconds), so rows on separate accounts and relays run
    together: the two builds side by side in the same minutes, as the issue
    asks, and the run fits in an hour."""
    with ThreadPoolExecutor(max_workers=len(jobs) or 1) as pool:
        futures = [pool.submit(function) for _label, function in jobs]
        return [future.result() for future in futures]


def part_idle(run):
    """The SMTP → IDLE rows: one pattern at a time, every build and relay
    pair of it at once (side_by_side)."""
    args = run.args
    for seed, pattern in enumerate(("spaced", "b2b", "random")):
        jobs = []
        for b in run.builds:
            label, pairs = run.pairs_of[b]
            for pair, sender_relay, rcpt_relay in pairs:
                text = f"SMTP submit → IMAP IDLE EXISTS, {pair}, "
                text += pattern_label(pattern, args.gap)
                progress(f"{label}: {text}")
                gap = gap_fn(pattern, args.gap, seed)
                measure = functools.partial(idle_latency, sender_relay, rcpt_relay, args.n, gap)
                jobs.append(((text, label), measure))
        for ((text, label), _f), (samples, stuck) in zip(jobs, side_by_side(jobs), strict=True):
            run.record(text, samples, stuck, label)


def part_lost(run):
    """The 1,000-message rows of every build at once."""
    args = run.args
    text = (
        f"lost announcements: SMTP → IDLE, same relay, random 0–{RANDOM_MAX:g} s, N={args.lost_n}"
    )
    jobs = []
    for b in run.builds:
        label, pairs = run.pairs_of[b]
        _pair, relay_a, _ = pairs[0]
        progress(f"{label}: {text}")
        gap = gap_fn("random", args.gap, 99)
        jobs.append((label, functools.partial(idle_latency, relay_a, relay_a, args.lost_n, gap)))
    for (label, _f), (samples, stuck) in zip(jobs, side_by_side(jobs), strict=True):
        run.record(text, samples, stuck, label)


def part_dc(run):
    args = run.args
    progress("booting the Delta Chat client host")
    run.client_host = hosts.boot(**CLIENT)
    binary = Path(deltachat_rpc_server.__file__).parent / "deltachat-rpc-server"
    docker_cli("cp", str(binary), f"{run.client_host.name}:{RPC_SERVER}")
    client = DeltaChatClient(run.client_host, run.tmp)
    dc_pairs = {"same": "same relay", "cross": "relay1 → relay2"}
    wanted = [dc_pairs[p] for p in args.dc_pairs.split(",") if p]
    try:
        for b in run.builds:
            label, pairs = run.pairs_of[b]
            for pair, relay_a, relay_b in pairs:
                if pair not in wanted:
                    continue
                rows = (("b2b", 1), ("b2b", DC_TURNS), ("pace", 1), ("random", 1))
                for pattern, senders in rows:
                    text = f"Delta Chat A → B, {pair}, "
                    text += pattern_label(pattern, args.gap)
                    if pattern == "b2b":
                        text += f", {senders} sender" if senders == 1 else f", {senders} in turn"
                    progress(f"{label}: {text}")
                    samples, stuck = dc_latency(
                        client,
                        relay_a,
                        relay_b,
                        args.n,
                        gap_fn(pattern, args.gap, DC_SEEDS[pattern]),
                        pace=DC_PACE if pattern == "pace" else None,
                        senders=senders,
                    )
                    run.record(text, samples, stuck, label)
    finally:
        client.close()


def part_hibernated(run):
    # the patched relay1 with a 1 s hibernation timeout: every
    # spaced message wakes a hibernated session
    args = run.args
    for b in run.builds[:1]:
        label, pairs = run.pairs_of[b]
        _pair, relay_a, _ = pairs[0]
        set_hibernation(relay_a, run.tmp, 1)
        text = (
            f"SMTP submit → IMAP IDLE EXISTS, same relay, idle ≥ {args.gap:g} s, "
            "session hibernated (hibernate_timeout 1 s)"
        )
        progress(f"{label}: {text}")
        samples, stuck = idle_latency(relay_a, relay_a, args.n, gap_fn("spaced", args.gap, 0))
        run.record(text, samples, stuck, label)
        set_hibernation(relay_a, run.tmp, 60)


def part_memory(run):
    args = run.args
    relay = run.r1
    old = raise_inotify_instances(4 * args.memory_clients)
    mem = run.table(
        f"memory of Dovecot's processes on {relay.domain} with "
        f"{args.memory_clients} idle IMAP clients (KiB)",
        [
            "| hibernation | sessions hibernated | RSS before | PSS before "
            "| RSS | PSS | PSS per client | processes |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ],
        "RSS sums every process's resident memory (shared pages counted in "
        "each process); PSS divides shared pages among the processes sharing "
        "them. Before: the same relay without the clients. "
        f"fs.inotify.max_user_instances was raised from {old} for the run "
        "(every IDLE session, live or hibernated, holds an inotify instance "
        "of the vmail user; containers share the machine's limit).",
    )
    try:
        timeout = hibernate_timeout(relay.host)
        for hib_label, value in (("on", None), ("off", 0)):
            if value == 0:
                set_hibernation(relay, run.tmp, 0)
                time.sleep(5)
            t = timeout if value is None else 0
            label = f"{hib_label} ({t} s)" if t else hib_label
            progress(f"memory, {args.memory_clients} idle clients, hibernation {label}")
            base, (rss, pss, kinds), hib, total = idle_clients_memory(relay, args.memory_clients, t)
            per = (pss - base[1]) / args.memory_clients
            mem.append(
                f"| {label} | {hib}/{total} | {base[0]} | {base[1]} | {rss} | {pss} "
                f"| {per:.0f} | {kinds} |"
            )
            progress(mem[-1])
    finally:
        Path(INOTIFY_INSTANCES).write_text(f"{old}\n")


def part_logins(run):
    progress("100 parallel IMAPS connections")
    login_rows = parallel_logins(run.r1)
    tls_s, first_s = login_rows[0][1], login_rows[1][1]
    share = max(0.0, first_s - tls_s) / first_s * 100
    lg = run.table(
        "100 parallel IMAPS connections (one relay)",
        ["| what | wall s | per s |", "|---|---:|---:|"],
        f"TLS handshake ≈ {100 - share:.0f} % of the first-login wall time, "
        f"login incl. doveauth account creation ≈ {share:.0f} %.",
    )
    for label, wall in login_rows:
        lg.append(f"| {label} | {wall:.2f} | {100 / wall:.1f} |")


def part_throughput(run):
    args = run.args
    tp = run.table(
        f"throughput, {args.duration:.0f} s of sending per row (one relay)",
        [
            "| senders | accepted | refused | delivered | lost | accepted/s | delivered/s | load |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ],
    )
    for senders in (10, 50):
        progress(f"throughput, {senders} senders")
        acc, err, dlv, sent_time, all_done = throughput(run.r1, senders, args.duration)
        tp.append(
            f"| {senders} | {acc} | {err} | {dlv} | {max(0, acc - dlv)} "
            f"| {acc / sent_time:.1f} | {dlv / all_done:.1f} | {load1():.1f} |"
        )
        progress(tp[-1])
    time.sleep(60)


def part_bypass(run):
    args, r1 = run.args, run.r1
    progress("relay1: filtermail_bypass on, highstate")
    took, changed = set_bypass(r1, run.tmp, True)
    run.hs.append(f"| {r1.domain} | pillar change: filtermail bypass on | {took:.1f} | {changed} |")
    for seed, pattern in enumerate(("spaced", "b2b")):
        text = "SMTP submit → IMAP IDLE EXISTS, same relay, filtermail bypassed, "
        text += pattern_label(pattern, args.gap)
        progress(text)
        samples, stuck = idle_latency(r1, r1, args.n, gap_fn(pattern, args.gap, seed))
        run.record(text, samples, stuck, BUILDS[run.builds[0]][0])


# The parts in the order they run (logins before throughput: the 50 senders
# leave the machine loaded).
PART_FUNCTIONS = (
    ("idle", part_idle),
    ("lost", part_lost),
    ("dc", part_dc),
    ("hibernated", part_hibernated),
    ("memory", part_memory),
    ("logins", part_logins),
    ("throughput", part_throughput),
    ("bypass", part_bypass),
)


def main(argv=None) -> int:
    args = parse_args(argv)
    release_harness_at_exit(keep=args.keep)
    global SPECS
    SPECS = [spec for b in args.builds for spec in BUILDS[b][2]]

    loads = [os.getloadavg()]
    ensure_infra()
    with tempfile.TemporaryDirectory(prefix="cmsalt-bench-") as tmp:
        run = Run(args, tmp)
        try:
            converge(run)
            run.lat = run.table(
                f"latency, N={args.n} per row (ms over the messages seen within "
                f"{STUCK_S:.0f} s; > 2 s = announced later than {SLOW_S:.0f} s; stuck = not "
                f"announced within {STUCK_S:.0f} s; load = 1-minute load average after the row)",
                [
                    "| path | build | n | p50 | p95 | p99 | max | > 2 s | stuck | load |",
                    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
                ],
            )
            # the lost rows (about 25 minutes of random gaps) run in the
            # background beside the idle and Delta Chat rows, on their own
            # accounts; the parts after those wait for them
            background = ThreadPoolExecutor(max_workers=1)
            lost = background.submit(part_lost, run) if "lost" in args.parts else None
            try:
                for name, function in PART_FUNCTIONS:
                    if lost and name not in ("idle", "lost", "dc"):
                        lost.result()
                        lost = None
                    if name in args.parts and name != "lost":
                        function(run)
                if lost:
                    lost.result()
            finally:
                background.shutdown(wait=False)
            print(json.dumps({"relays": [r.domain for r in run.relays]}), file=sys.stderr)
        finally:
            loads.append(os.getloadavg())
            run.print_tables(loads)
            if not args.keep:
                if run.client_host:
                    hosts.destroy(run.client_host)
                ar.down(run.relays)
    return 0


if __name__ == "__main__":
    sys.exit(main())
