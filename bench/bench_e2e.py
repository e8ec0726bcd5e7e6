"""Benchmark: end to end on two relays converged from salt/ (real systemd hosts).

    python bench/bench_e2e.py [--n 100] [--duration 20] [--keep]

Boots two relays (e2eb1.test, e2eb2.test) and a client host on the harness
test network, with the same setup as the acceptance suite (nsd zones from the
relays' own zone fragments, rate limits lifted so the CI machine counts as many
clients), and measures:

* highstate: fresh converge of both hosts in parallel, then a no-op re-run;
* latency with the real Delta Chat core (rpc server in the client host):
  A sends a text, B (IMAP IDLE) shows it; N messages one after the other,
  on one relay and across relays;
* the same path without Delta Chat: smtplib submission of the encrypted
  sample to a receiver waiting in IMAP IDLE (until `EXISTS`).  The tree has
  no switch to bypass filtermail, so there is no "without filtermail" row;
* throughput: 10 and 50 concurrent senders (one account and one SMTP
  connection each) for a bounded time, then every accepted message is
  counted in the recipients' Maildirs (loss must be zero);
* 100 parallel first logins over IMAPS: TLS handshake only, first login
  (account creation by doveauth) and second login of the same accounts.

Prints markdown tables (p50/p95/p99 in milliseconds).  Not part of the tests.
"""

from __future__ import annotations

import argparse
import imaplib
import json
import smtplib
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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


def pct(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def ms_row(label, samples):
    ms = [s * 1000 for s in samples]
    return (
        f"| {label} | {len(ms)} | {pct(ms, 50):.0f} | {pct(ms, 95):.0f} | {pct(ms, 99):.0f} "
        f"| {max(ms):.0f} |"
    )


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


def wait_kind(acc, kind, **match):
    while True:
        event = acc.wait_for_event()
        if event["kind"] == kind and all(event.get(k) == v for k, v in match.items()):
            return event


def dc_latency(client, relay_a, relay_b, n):
    a, b = client.account(relay_a), client.account(relay_b)
    chat = a.secure_join(b.get_qr_code())
    wait_kind(b, "SecurejoinInviterProgress", progress=1000)
    wait_kind(a, "SecurejoinJoinerProgress", progress=1000)
    b.clear_all_events()
    samples = []
    for i in range(n):
        start = time.monotonic()
        chat.send_text(f"bench {i}")
        wait_kind(b, "IncomingMsg")
        samples.append(time.monotonic() - start)
    return samples


# --- SMTP -> IMAP IDLE ----------------------------------------------------------


def idle_latency(relay_send, relay_recv, n):
    sender, sender_pw = new_credentials(relay_send.domain)
    rcpt, rcpt_pw = new_credentials(relay_recv.domain)
    imap = imap_login(relay_recv.ip, rcpt, rcpt_pw)
    imap.select("INBOX")
    msg = encrypted_message(sender, rcpt)
    samples = []
    with smtplib.SMTP(relay_send.ip, 587, timeout=60) as smtp:
        smtp.starttls(context=tls_context())
        smtp.login(sender, sender_pw)
        for _ in range(n):
            tag = imap._new_tag()
            imap.send(tag + b" IDLE\r\n")
            while not imap.readline().startswith(b"+"):
                pass
            start = time.monotonic()
            smtp.sendmail(sender, [rcpt], msg)
            while b"EXISTS" not in imap.readline():
                pass
            samples.append(time.monotonic() - start)
            imap.send(b"DONE\r\n")
            while not imap.readline().startswith(tag):
                pass
    imap.logout()
    return samples


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100, help="messages per latency row")
    parser.add_argument("--duration", type=float, default=20, help="seconds per throughput row")
    parser.add_argument("--keep", action="store_true", help="leave the hosts running")
    args = parser.parse_args(argv)

    ensure_infra()
    client_host = None
    relays = []
    with tempfile.TemporaryDirectory(prefix="cmsalt-bench-") as tmp:
        try:
            relays, rows = converge_fresh(tmp)
            print("### highstate (both hosts converged in parallel)\n")
            print("| host | fresh converge s | states changed | no-op re-run s | changed |")
            print("|---|---:|---:|---:|---:|")
            for relay, fresh, noop, changed, again in rows:
                print(f"| {relay.domain} | {fresh:.1f} | {changed} | {noop:.1f} | {again} |")
            print(flush=True)

            r1, r2 = relays
            print(f"### latency, N={args.n} (ms)\n")
            print("| path | n | p50 | p95 | p99 | max |")
            print("|---|---:|---:|---:|---:|---:|")
            idle_rows = [("same relay", r1, r1), ("relay1 → relay2", r1, r2)]
            for label, sender_relay, rcpt_relay in idle_rows:
                samples = idle_latency(sender_relay, rcpt_relay, args.n)
                print(ms_row(f"SMTP submit → IMAP IDLE EXISTS, {label}", samples), flush=True)
            client_host = hosts.boot(**CLIENT)
            binary = Path(deltachat_rpc_server.__file__).parent / "deltachat-rpc-server"
            docker_cli("cp", str(binary), f"{client_host.name}:{RPC_SERVER}")
            client = DeltaChatClient(client_host, tmp)
            try:
                for label, relay_a, relay_b in idle_rows:
                    samples = dc_latency(client, relay_a, relay_b, args.n)
                    print(ms_row(f"Delta Chat A → B, {label}", samples), flush=True)
            finally:
                client.close()
            print(flush=True)

            print(f"### throughput, {args.duration:.0f} s of sending per row (one relay)\n")
            print("| senders | accepted | refused | delivered | lost | accepted/s | delivered/s |")
            print("|---:|---:|---:|---:|---:|---:|---:|")
            for senders in (10, 50):
                acc, err, dlv, sent_time, all_done = throughput(r1, senders, args.duration)
                print(
                    f"| {senders} | {acc} | {err} | {dlv} | {max(0, acc - dlv)} "
                    f"| {acc / sent_time:.1f} | {dlv / all_done:.1f} |",
                    flush=True,
                )
            print()

            print("### 100 parallel IMAPS connections (one relay)\n")
            print("| what | wall s | per s |")
            print("|---|---:|---:|")
            login_rows = parallel_logins(r1)
            for label, wall in login_rows:
                print(f"| {label} | {wall:.2f} | {100 / wall:.1f} |")
            tls_s, first_s = login_rows[0][1], login_rows[1][1]
            share = max(0.0, first_s - tls_s) / first_s * 100
            print(
                f"\nTLS handshake ≈ {100 - share:.0f} % of the first-login wall time, "
                f"login incl. doveauth account creation ≈ {share:.0f} %."
            )
            print(json.dumps({"relays": [r.domain for r in relays]}), file=sys.stderr)
        finally:
            if not args.keep:
                if client_host:
                    hosts.destroy(client_host)
                ar.down(relays)
    return 0


if __name__ == "__main__":
    sys.exit(main())
