"""Benchmark: end to end on two relays converged from salt/ (real systemd hosts).

    python bench/bench_e2e.py [--n 100] [--duration 60] [--gap 1.5] [--keep]
                              [--parts dc,throughput,logins,idle,bypass]
                              [--probe-gap 0.7 [--probe-n 20]]

Boots two relays (e2eb1.test, e2eb2.test) and a client host on the harness
test network, with the same setup as the acceptance suite (nsd zones from the
relays' own zone fragments, rate limits lifted so the CI machine counts as many
clients), and measures:

* highstate: fresh converge of both hosts in parallel, then a no-op re-run;
* latency, N messages one after the other per row, on one relay and across
  relays, each row twice: "idle ≥ gap" (the receiver has been in IMAP IDLE for
  at least --gap seconds before each send, like a phone waiting for mail: its
  session is hibernated by then, chatmail:imap:hibernate_timeout) and
  "back-to-back" (the next message is sent as soon as the previous one was
  seen, so it arrives within the first second of the new IDLE, before
  hibernation, and meets the live imap process's 500 ms new-mail debounce);
  - smtplib submission of the encrypted sample to a receiver waiting in IMAP
    IDLE, until the untagged `EXISTS`;
  - the real Delta Chat core (rpc server in the client host): A sends a
    text, B's `IncomingMsg` event; for the spaced rows the next send waits
    --gap seconds after B received the previous message (the core re-enters
    IDLE after fetching);
* throughput: 10 and 50 concurrent senders (one account and one SMTP
  connection each) for --duration seconds, then every accepted message is
  counted in the recipients' Maildirs (loss must be zero);
* 100 parallel first logins over IMAPS: TLS handshake only, first login
  (account creation by doveauth) and second login of the same accounts;
* filtermail bypassed: at the end relay1's pillar gets the benchmark-only
  switch chatmail:testing:filtermail_bypass, one highstate applies it (its
  time is a row of the highstate table), and the same-relay SMTP → IDLE rows
  run again without filtermail on the submission path.  Those rows are
  printed next to the same-relay rows with filtermail, measured minutes
  before on the same relay.

Prints markdown tables (p50/p95/p99 in milliseconds) with the 1-minute load
average of the machine at the end of each row; progress goes to stderr.  Not
part of the tests.
"""

from __future__ import annotations

import argparse
import imaplib
import json
import os
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

from tests.acceptance.test_deltachat import dclogin_url  # noqa: E402
from tests.harness import GATEWAY, dns, ensure_infra, hosts  # noqa: E402
from tests.harness import acceptance_relays as ar  # noqa: E402
from tests.harness.docker import docker as docker_cli  # noqa: E402
from tests.harness.docker import env as docker_env  # noqa: E402
from tests.hosts.test_relay import (  # noqa: E402
    encrypted_message,
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
SPECS = [
    ar.RelaySpec("cmsalt-e2ebench-1", "e2eb1.test", "auto", PARAMS, UNLIMITED),
    ar.RelaySpec("cmsalt-e2ebench-2", "e2eb2.test", "auto", PARAMS, UNLIMITED),
]
CLIENT = {"name": "cmsalt-e2ebench-client", "fqdn": "e2ebclient.test", "ip": "auto"}
RPC_SERVER = "/usr/local/bin/deltachat-rpc-server"
PUSH_URL = f"http://{GATEWAY}:9/notify"  # nothing listens; pushes are retried and dropped
# A message not seen this long after the send counts as stuck: the receiver is
# nudged (IMAP: DONE; Delta Chat: maybe_network) and the row goes on.
STUCK_S = 10.0


def pct(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def load1():
    return os.getloadavg()[0]


def ms_row(label, samples, stuck, load):
    """samples: latencies in seconds of the messages seen within STUCK_S."""
    ms = [s * 1000 for s in samples] or [float("nan")]
    return (
        f"| {label} | {len(samples) + stuck} | {pct(ms, 50):.0f} | {pct(ms, 95):.0f} "
        f"| {pct(ms, 99):.0f} | {max(ms):.0f} | {stuck} | {load:.1f} |"
    )


def progress(text):
    stamp = time.strftime("%H:%M:%S", time.gmtime())
    print(f"[{stamp} load {load1():.1f}] {text}", file=sys.stderr, flush=True)


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


def dc_latency(client, relay_a, relay_b, n, gap):
    """A → B text messages; gap > 0: wait that long after B received one.
    Returns (latencies of messages seen within STUCK_S, number stuck)."""
    a, b = client.account(relay_a), client.account(relay_b)
    chat = a.secure_join(b.get_qr_code())
    wait_nudged(client, b, "SecurejoinInviterProgress", progress=1000)
    wait_nudged(client, a, "SecurejoinJoinerProgress", progress=1000)
    samples, stuck = [], 0
    for i in range(n):
        time.sleep(gap)
        b.clear_all_events()
        start = time.monotonic()
        chat.send_text(f"bench {i}")
        if wait_nudged(client, b, "IncomingMsg"):
            samples.append(time.monotonic() - start)
        else:
            stuck += 1
    return samples, stuck


# --- SMTP -> IMAP IDLE ----------------------------------------------------------


def idle_latency(relay_send, relay_recv, n, gap):
    """smtplib submit → untagged EXISTS in IDLE; the receiver enters IDLE and
    waits gap seconds before each send (0: back-to-back).  Returns (latencies
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
            time.sleep(gap)
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


def row_order(row):
    """Latency rows: SMTP with filtermail, bypassed, then Delta Chat; same
    relay before across relays; spaced before back-to-back."""
    return (
        "Delta Chat" in row,
        "bypassed" in row,
        "relay1 → relay2" in row,
        "back-to-back" in row,
        "hand-off" in row,
    )


PARTS = ("dc", "throughput", "logins", "idle", "bypass")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100, help="messages per latency row")
    parser.add_argument("--duration", type=float, default=60, help="seconds per throughput row")
    parser.add_argument(
        "--gap", type=float, default=1.5, help="seconds the receiver idles before a spaced send"
    )
    parser.add_argument(
        "--probe-gap",
        type=float,
        default=0,
        help="also an SMTP → IDLE row on relay2 whose receiver idles this long before each "
        "send, e.g. 0.7: mail lands while Dovecot's 500 ms debounce is pending and the "
        "session is hibernated at 1 s (0: no such row)",
    )
    parser.add_argument("--probe-n", type=int, default=20, help="messages in the probe row")
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}"
    )
    parser.add_argument("--keep", action="store_true", help="leave the hosts running")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    if parts - set(PARTS):
        parser.error(f"unknown parts: {', '.join(sorted(parts - set(PARTS)))}")

    loads = [os.getloadavg()]
    ensure_infra()
    client_host = None
    relays = []
    lat = []
    out = []  # (section title, header lines, rows, notes) in print order

    def table(title, header, notes=""):
        section = (title, header, [], [notes] if notes else [])
        out.append(section)
        return section[2]

    with tempfile.TemporaryDirectory(prefix="cmsalt-bench-") as tmp:
        try:
            progress("booting and converging two relays")
            relays, rows = converge_fresh(tmp)
            hs = table(
                "highstate (both hosts converged in parallel)",
                ["| host | run | s | states changed |", "|---|---|---:|---:|"],
            )
            for relay, fresh, noop, changed, again in rows:
                hs.append(f"| {relay.domain} | fresh converge | {fresh:.1f} | {changed} |")
                hs.append(f"| {relay.domain} | no-op re-run | {noop:.1f} | {again} |")
            progress("converged")

            r1, r2 = relays
            pairs = [("same relay", r1, r1), ("relay1 → relay2", r1, r2)]
            spacings = [(f"idle ≥ {args.gap:g} s", args.gap), ("back-to-back", 0.0)]
            lat = table(
                f"latency, N={args.n} per row (ms over the messages seen within "
                f"{STUCK_S:.0f} s; stuck = not announced within {STUCK_S:.0f} s; "
                "load = 1-minute load average after the row)",
                [
                    "| path | n | p50 | p95 | p99 | max | stuck | load |",
                    "|---|---:|---:|---:|---:|---:|---:|---:|",
                ],
            )

            if "dc" in parts:
                progress("booting the Delta Chat client host")
                client_host = hosts.boot(**CLIENT)
                binary = Path(deltachat_rpc_server.__file__).parent / "deltachat-rpc-server"
                docker_cli("cp", str(binary), f"{client_host.name}:{RPC_SERVER}")
                client = DeltaChatClient(client_host, tmp)
                try:
                    for spacing, gap in spacings:
                        for label, relay_a, relay_b in pairs:
                            progress(f"Delta Chat {label}, {spacing}")
                            samples, stuck = dc_latency(client, relay_a, relay_b, args.n, gap)
                            lat.append(
                                ms_row(
                                    f"Delta Chat A → B, {label}, {spacing}", samples, stuck, load1()
                                )
                            )
                            progress(lat[-1])
                finally:
                    client.close()

            # logins before throughput: the 50 senders leave the machine loaded
            if "logins" in parts:
                progress("100 parallel IMAPS connections")
                login_rows = parallel_logins(r1)
                tls_s, first_s = login_rows[0][1], login_rows[1][1]
                share = max(0.0, first_s - tls_s) / first_s * 100
                lg = table(
                    "100 parallel IMAPS connections (one relay)",
                    ["| what | wall s | per s |", "|---|---:|---:|"],
                    f"TLS handshake ≈ {100 - share:.0f} % of the first-login wall time, "
                    f"login incl. doveauth account creation ≈ {share:.0f} %.",
                )
                for label, wall in login_rows:
                    lg.append(f"| {label} | {wall:.2f} | {100 / wall:.1f} |")

            if "throughput" in parts:
                tp = table(
                    f"throughput, {args.duration:.0f} s of sending per row (one relay)",
                    [
                        "| senders | accepted | refused | delivered | lost | accepted/s "
                        "| delivered/s | load |",
                        "|---:|---:|---:|---:|---:|---:|---:|---:|",
                    ],
                )
                for senders in (10, 50):
                    progress(f"throughput, {senders} senders")
                    acc, err, dlv, sent_time, all_done = throughput(r1, senders, args.duration)
                    tp.append(
                        f"| {senders} | {acc} | {err} | {dlv} | {max(0, acc - dlv)} "
                        f"| {acc / sent_time:.1f} | {dlv / all_done:.1f} | {load1():.1f} |"
                    )
                    progress(tp[-1])
                # let the 1-minute load of the 50 senders decay before latency rows
                time.sleep(60)

            if "idle" in parts and args.probe_gap:
                progress(f"SMTP → IDLE relay2 only, idle {args.probe_gap:g} s")
                samples, stuck = idle_latency(r2, r2, args.probe_n, args.probe_gap)
                probe = (
                    f"SMTP submit → IMAP IDLE EXISTS, relay2 only, idle {args.probe_gap:g} s "
                    "(mail lands inside the hibernation hand-off)"
                )
                lat.append(ms_row(probe, samples, stuck, load1()))
                progress(lat[-1])

            if "idle" in parts:
                # across relays first: the same-relay rows run right before the
                # bypass rows, so the two are measured under similar load
                for label, sender_relay, rcpt_relay in reversed(pairs):
                    for spacing, gap in spacings:
                        progress(f"SMTP → IDLE {label}, {spacing}")
                        samples, stuck = idle_latency(sender_relay, rcpt_relay, args.n, gap)
                        lat.append(
                            ms_row(
                                f"SMTP submit → IMAP IDLE EXISTS, {label}, {spacing}",
                                samples,
                                stuck,
                                load1(),
                            )
                        )
                        progress(lat[-1])

            if "bypass" in parts:
                progress("relay1: filtermail_bypass on, highstate")
                took, changed = set_bypass(r1, tmp, True)
                hs.append(
                    f"| {r1.domain} | pillar change: filtermail bypass on "
                    f"| {took:.1f} | {changed} |"
                )
                for spacing, gap in spacings:
                    progress(f"SMTP → IDLE same relay, filtermail bypassed, {spacing}")
                    samples, stuck = idle_latency(r1, r1, args.n, gap)
                    lat.append(
                        ms_row(
                            "SMTP submit → IMAP IDLE EXISTS, same relay, "
                            f"filtermail bypassed, {spacing}",
                            samples,
                            stuck,
                            load1(),
                        )  # fmt: skip
                    )
                    progress(lat[-1])
            print(json.dumps({"relays": [r.domain for r in relays]}), file=sys.stderr)
        finally:
            loads.append(os.getloadavg())
            if lat:
                lat.sort(key=row_order)
            for title, header, rows_, notes in out:
                if not rows_:
                    continue
                print(f"### {title}\n")
                print("\n".join(header + rows_))
                for note in notes:
                    print(f"\n{note}")
                print(flush=True)
            fmt = lambda la: " ".join(f"{x:.2f}" for x in la)  # noqa: E731
            print(f"1/5/15-minute load: before {fmt(loads[0])}, after {fmt(loads[-1])}", flush=True)
            if not args.keep:
                if client_host:
                    hosts.destroy(client_host)
                ar.down(relays)
    return 0


if __name__ == "__main__":
    sys.exit(main())
