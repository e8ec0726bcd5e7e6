"""Benchmark: nothing lost under faults (issue 15), the whole matrix.

    python bench/bench_faults.py [--rate 25] [--senders 8] [--after 20]
                                 [--outage 600] [--queue-retry 30s]
                                 [--drain-rate 5] [--faults name,name,...] [--keep]

Boots two relays (faultsb1.test, faultsb2.test) converged from salt/ with the
acceptance suite's setup (the harness nsd serving their zones, a stand-in
push gateway, rate limits lifted since the CI machine is every client) and,
for each fault, sends a steady load (--rate messages/s from --senders
accounts on relay 1, over 587 and 465, to fresh accounts on both relays:
one relay and relay to relay at the same time) with tests/faults/load.py,
does the fault a few seconds in, keeps sending for --after seconds, then
waits until every accepted message is delivered and both postfix queues are
empty (or gives up) and counts every message by its Message-ID in the
mailboxes.  The faults are tests/faults/actions.py; the CI subset of them is
tests/faults/test_faults.py.

limits:queue_retry (postfix minimal_backoff_time and queue_run_delay) is
--queue-retry on both relays: postfix's 300 s would make every row that
defers mail wait five minutes or more before the queue drains.

Prints one markdown table row per fault as it finishes (fault, sent,
accepted, delivered, duplicated, refused, unknown outcome, missing, recovery:
from the end of the fault to the first delivery of a message submitted after
it; notes: anything wrong, and units that did not come back).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import progress, release_harness_at_exit  # noqa: E402
from tests.faults import actions  # noqa: E402
from tests.faults.load import (  # noqa: E402
    RELAY_LIMITS,
    RELAY_PARAMS,
    TABLE_HEAD,
    Load,
    Submitter,
    create_recipients,
    queue_size,
    settle,
)
from tests.harness import acceptance_relays as ar  # noqa: E402
from tests.harness import ensure_infra, hosts, network_address  # noqa: E402

INI = "/etc/chatmail/chatmail.ini"
VENV_BIN = "/usr/local/lib/chatmaild/bin"


class Bench:
    def __init__(self, args, r1, r2):
        self.args, self.r1, self.r2 = args, r1, r2
        self.relays = [r1, r2]
        self.recipient_relays = {r1.domain: r1, r2.domain: r2}

    def load(self, recipients=None):
        senders = [Submitter(self.r1, 587 if i % 2 == 0 else 465) for i in range(self.args.senders)]
        if recipients is None:
            half = max(1, self.args.senders // 2)
            recipients = create_recipients(self.r1, half) + create_recipients(self.r2, half)
        return senders, recipients

    def row(self, name, fault, setup=None, teardown=None, settle_timeout=600):
        """setup() before the accounts are made; fault() returns when the fault
        is over (the time recovery is counted from, or None: now)."""
        args = self.args
        progress(f"{name}: accounts")
        notes = []
        try:
            if setup:
                setup()
            senders, recipients = self.load()
            since = time.time()
            load = Load(senders, recipients, args.rate).start()
            try:
                time.sleep(args.warm)
                fault_at = time.time()
                progress(f"{name}: fault")
                recovered_at = fault() or time.time()
                progress(f"{name}: fault over after {recovered_at - fault_at:.0f} s")
                time.sleep(args.after)
            finally:
                load.stop()
            for relay in self.relays:
                try:
                    actions.wait_back(relay.host, timeout=180)
                except TimeoutError as exc:
                    notes.append(f"NOT BACK: {exc}")
            # the time to wait scales with what is still queued (a long outage
            # leaves thousands of messages on relay 1): --drain-rate msgs/s
            backlog = sum(queue_size(relay) for relay in self.relays)
            timeout = max(settle_timeout, 120 + backlog / args.drain_rate)
            progress(
                f"{name}: settling ({len(load.submissions())} sent, {backlog} queued, "
                f"waiting up to {timeout:.0f} s)"
            )
            settle_start = time.monotonic()
            tally = settle(load, self.relays, since, recovered_at, timeout=timeout)
            settled = time.monotonic() - settle_start
            if backlog:
                notes.append(f"{backlog} queued after the load, settled in {settled:.0f} s")
            warm = [s for s in load.submissions() if s.start < fault_at]
            first = min((s.start for s in warm), default=fault_at)
            rate = len(warm) / max(0.001, fault_at - first)
            notes.append(f"{rate:.0f}/s before")
            if tally.connect_failures:
                notes.append(f"{tally.connect_failures} failed connects")
            if tally.unknown_delivered:
                notes.append(f"{tally.unknown_delivered} of the unknown delivered")
            notes += tally.problems()
        finally:
            if teardown:
                teardown()
        line = tally.row(name, "; ".join(notes))
        print(line, flush=True)
        return tally

    # --- faults ---------------------------------------------------------------

    def kill(self, unit, relays):
        def fault():
            for relay in relays:
                actions.kill9(relay.host, unit)

        return fault

    def reboot(self, relay):
        def fault():
            actions.reboot(relay.host)
            return time.time()

        return fault

    def outage(self):
        def fault():
            actions.disconnect(self.r2.host)
            time.sleep(self.args.outage)
            actions.reconnect(self.r2.host)
            return time.time()

        return fault

    def nsd_down(self):
        def fault():
            # relay 1 must ask again: forget what its unbound has of relay 2
            actions.flush_dns(self.r1.host, [self.r2.domain])
            actions.nsd_down()
            time.sleep(self.args.dns_outage)
            actions.nsd_up()
            return time.time()

        return fault

    def unbound_stopped(self):
        def fault():
            self.r1.host.exec("systemctl", "stop", "unbound")
            time.sleep(self.args.dns_outage)
            self.r1.host.exec("systemctl", "start", "unbound")
            return time.time()

        return fault

    def trims(self):
        script = (
            f"systemctl start chatmail-expire.service; "
            f"for d in /home/vmail/mail/*/*/; do runuser -u vmail -- "
            f'{VENV_BIN}/chatmail-quota-expire {INI} 0 "$d" >/dev/null; done'
        )

        def fault():
            end = time.monotonic() + self.args.after
            while time.monotonic() < end:
                for relay in self.relays:
                    relay.host.sh(script, check=False, timeout=300)
            return None

        return fault

    def certificate(self):
        def fault():
            for relay in self.relays:
                actions.replace_certificate(relay.host, relay.domain)

        return fault

    def disk_full(self):
        state = {}
        host = self.r2.host

        def setup():
            state["dir"] = actions.small_mailboxes(host)
            actions.wait_back(host)

        def fault():
            filler = actions.fill(host, state["dir"])
            time.sleep(self.args.disk_full)
            actions.free(host, filler)
            return time.time()

        def teardown():
            actions.unmount_mailboxes(host, state["dir"])
            actions.wait_back(host)

        return setup, fault, teardown

    def matrix(self):
        r1, r2 = self.r1, self.r2
        a = self.args
        rows = [
            ("kill-filtermail", "kill -9 filtermail (relay 1, outgoing)",
             self.kill("filtermail", [r1])),
            ("kill-filtermail-incoming", "kill -9 filtermail-incoming (relay 2)",
             self.kill("filtermail-incoming", [r2])),
            ("kill-doveauth", "kill -9 doveauth (both)", self.kill("doveauth", [r1, r2])),
            ("kill-metadata", "kill -9 chatmail-metadata (both)",
             self.kill("chatmail-metadata", [r1, r2])),
            ("kill-lastlogin", "kill -9 lastlogin (both)", self.kill("lastlogin", [r1, r2])),
            ("kill-postfix", "kill -9 postfix master (both)", self.kill("postfix", [r1, r2])),
            ("kill-dovecot", "kill -9 dovecot master (both)", self.kill("dovecot", [r1, r2])),
            ("reboot-1", "reboot relay 1 (sender)", self.reboot(r1)),
            ("reboot-2", "reboot relay 2 (receiver)", self.reboot(r2)),
            ("nsd-down", f"peer's authoritative DNS down {a.dns_outage:.0f} s",
             self.nsd_down()),
            ("unbound-stopped", f"relay 1 unbound stopped {a.dns_outage:.0f} s",
             self.unbound_stopped()),
            ("trims", "expire + quota trims during delivery", self.trims()),
            ("certificate", "TLS certificates replaced (both)", self.certificate()),
            # the longest row last
            ("outage", f"relay 2 unreachable {a.outage:.0f} s", self.outage()),
        ]  # fmt: skip
        setup, fault, teardown = self.disk_full()
        out = [(key, label, fault, {}) for key, label, fault in rows]
        out.insert(
            7,
            ("disk-full", f"relay 2 mailbox fs full {a.disk_full:.0f} s", fault,
             {"setup": setup, "teardown": teardown}),
        )  # fmt: skip
        return out


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=25.0, help="messages/s offered")
    parser.add_argument("--senders", type=int, default=8, help="sending accounts")
    parser.add_argument("--warm", type=float, default=5.0, help="seconds of load before a fault")
    parser.add_argument("--after", type=float, default=20.0, help="seconds of load after it")
    parser.add_argument("--outage", type=float, default=600.0, help="seconds relay 2 is away")
    parser.add_argument("--dns-outage", type=float, default=60.0, help="seconds DNS is down")
    parser.add_argument("--disk-full", type=float, default=20.0, help="seconds the disk is full")
    parser.add_argument("--queue-retry", default="30s", help="limits:queue_retry of the relays")
    parser.add_argument(
        "--drain-rate",
        type=float,
        default=5.0,
        help="msgs/s a backlog is assumed to drain at at least: the settle time is "
        "120 s + backlog / this (600 s at least)",
    )
    parser.add_argument("--faults", default="", help="comma-separated row keys (default: all)")
    parser.add_argument("--keep", action="store_true", help="keep the relays running")
    return parser.parse_args(argv)


@contextlib.contextmanager
def two_relays(stem, args):
    """Relays cmsalt-<stem>-1/-2 (<stem>1.test, <stem>2.test) converged with
    the fault suite's params and limits (queue retry from --queue-retry) and a
    push gateway stand-in; removed at the end unless --keep.  Shared by the
    fault and intake benches."""
    ensure_infra()
    gateway = ar.PushGateway(network_address(), 0)
    limits = dict(RELAY_LIMITS, queue_retry=args.queue_retry)
    specs = [
        ar.RelaySpec(f"cmsalt-{stem}-{n}", f"{stem}{n}.test", params=RELAY_PARAMS, limits=limits)
        for n in (1, 2)
    ]
    progress("booting and converging two relays")
    try:
        with tempfile.TemporaryDirectory(prefix=f"cmsalt-{stem}-") as tmp:
            relays = ar.up(specs, tmp, gateway.url, keep=args.keep)
            try:
                for relay in relays:
                    if not relay.first.ok:
                        raise SystemExit(
                            f"{relay.domain}: highstate failed\n{relay.first.summary()}"
                        )
                yield relays
            finally:
                if not args.keep:
                    for relay in relays:
                        hosts.destroy(relay.host)
    finally:
        gateway.close()


def main(argv):
    args = parse_args(argv)
    release_harness_at_exit(keep=args.keep)
    with two_relays("faultsb", args) as relays:
        bench = Bench(args, *relays)
        wanted = [k for k in args.faults.split(",") if k]
        matrix = [row for row in bench.matrix() if not wanted or row[0] in wanted]
        print(
            f"{args.rate:g} msgs/s offered from {args.senders} accounts on relay 1 "
            f"(587 and 465) to fresh accounts on relay 1 and relay 2; fault "
            f"{args.warm:g} s in, {args.after:g} s more load after it; "
            f"limits:queue_retry {args.queue_retry}.\n"
        )
        print("\n".join(TABLE_HEAD), flush=True)
        bad = 0
        for _key, label, fault, extra in matrix:
            try:
                tally = bench.row(label, fault, **extra)
                bad += bool(tally.problems())
            except Exception as exc:  # a row that broke: say so, go on
                print(f"| {label} | | | | | | | | | ROW FAILED: {exc!r:.300} |", flush=True)
                bad += 1
        return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
