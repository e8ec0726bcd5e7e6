"""Nothing lost under faults (issue 15): the cheap faults, on one relay under a
steady load of ≥ 20 messages/s (tests/faults/load.py).

Each test: fresh accounts, a few seconds of load, the fault, more load, then
every submission is accounted for: each accepted (250) message in its
recipient's mailbox exactly once and complete, each refused one nowhere, no
file left in Maildir tmp/, no bounce, the postfix queue empty, every chatmail
unit active again by itself, and delivery resumed (recovery: from the fault
to the first delivery of a message submitted after it).  The whole matrix
(postfix/dovecot masters, relay to relay, DNS, expiry, certificate renewal,
a peer outage) is ``./cmsalt bench faults`` (docs/faults.md).
"""

import secrets
import sys
import time

import pytest

from tests.acceptance.util import set_metadata
from tests.hosts.test_relay import new_credentials

from . import actions
from .conftest import PEER_DOMAIN
from .load import (
    Load,
    PeerMta,
    Submitter,
    count,
    create_recipients,
    imap_login,
    queue_size,
    settle,
)

pytestmark = pytest.mark.hosts

RATE = 30.0  # messages/s offered; the issue asks for ≥ 20
MIN_RATE = 20.0
SENDERS = 12  # concurrency to spare: the CI machine is busy
RECIPIENTS = 8
WARM = 4.0  # seconds of load before the fault
AFTER = 10.0  # seconds of load after it


def submitters(relay, n=SENDERS):
    return [Submitter(relay, 587 if i % 2 == 0 else 465) for i in range(n)]


def under_load(relay, fault, senders=None, recipients=None, after=AFTER, settle_timeout=150):
    """Run `fault` (returns when the fault is over: the time recovery is
    counted from) under load; returns (load, Tally)."""
    senders = senders if senders is not None else submitters(relay)
    recipients = recipients or create_recipients(relay, RECIPIENTS)
    since = time.time()
    load = Load(senders, recipients, RATE).start()
    try:
        time.sleep(WARM)
        fault_at = time.time()
        recovered_at = fault() or fault_at
        time.sleep(after)
    finally:
        load.stop()
    actions.wait_back(relay.host)
    tally = settle(load, [relay], since, recovered_at, timeout=settle_timeout)
    warm = [s for s in load.submissions() if s.start < fault_at]
    rate = len(warm) / max(0.001, fault_at - min((s.start for s in warm), default=fault_at))
    print(f"\n{tally.row(fault.__name__, f'{rate:.1f} msgs/s before the fault')}", file=sys.stderr)
    return load, tally, rate


def check(tally, rate):
    """Nothing lost, nothing twice.  The senders retry a 4xx or a broken
    transaction (load.py), so a kill -9 of a before-queue filter (filtermail,
    either direction) between the reinject's 250 and its own -- postfix has
    queued the message but answers the sender "451 4.3.0 Error: queue file
    write error" -- sends it again: each such message, accepted at last,
    must be in its mailbox once (the relay's LMTP drops the second copy:
    dedupe_period, docs/dovecot.md)."""
    assert rate >= MIN_RATE, f"load before the fault was {rate:.1f} msgs/s"
    assert tally.accepted > 0
    assert tally.recovery is not None, "nothing submitted after the fault was delivered"
    problems = tally.problems()
    assert not problems, problems


@pytest.mark.parametrize("unit", ["filtermail", "doveauth", "postfix"])
def test_kill9_daemon_under_submission_load(relay, unit):
    killed = []

    def kill():
        killed.append(actions.kill9(relay.host, unit))

    kill.__name__ = f"kill -9 {unit}"
    _load, tally, rate = under_load(relay, kill)
    # restarted by systemd: a new main process
    assert actions.main_pid(relay.host, unit) not in (0, killed[0])
    check(tally, rate)


def test_kill9_incoming_filtermail_under_mx_load(relay, peer):
    domain, key = peer
    # Load shares its schedule (RATE in all) among its senders: the six peer
    # MTAs get 6/14 of it on port 25 (about 13 msgs/s), the submitters the
    # rest.  That share, not the relay, was the "10-15 msgs/s on port 25"
    # once noted here: one host gets 60-70 msgs/s through port 25
    # (./cmsalt bench intake, docs/faults.md).
    peers = [PeerMta(relay, domain, key) for _ in range(6)]
    senders = peers + submitters(relay, 8)

    killed = []

    def kill():
        killed.append(actions.kill9(relay.host, "filtermail-incoming"))

    kill.__name__ = "kill -9 filtermail-incoming"
    load, tally, rate = under_load(relay, kill, senders=senders)
    assert actions.main_pid(relay.host, "filtermail-incoming") not in (0, killed[0])
    check(tally, rate)
    by_mx = [s for s in load.submissions() if s.via == "25"]
    assert PEER_DOMAIN in peers[0].addr
    # the kill refused some port-25 transactions (tried again: see check)
    refused = [s for s in by_mx if any(o == "refused" for o, _c, _r in s.history)]
    assert len(by_mx) > 50 and refused


def test_push_queued_before_metadata_crash_is_sent_after(relay, push_gateway):
    """A push the gateway refused (503, so it waits in the on-disk queue for a
    retry) is sent by the restarted chatmail-metadata after a kill -9."""
    sender = Submitter(relay)
    addr, password = new_credentials(relay.domain)
    imap = imap_login(relay.ip, addr, password)
    tok = "tok-" + secrets.token_hex(12)
    try:
        typ, data = set_metadata(imap, "INBOX", "/private/devicetoken", tok)
        assert typ == "OK", data
    finally:
        imap.logout()
    push_gateway.failing.add(tok)
    load = Load([sender], [(relay, addr)], rate=1.0).start()
    try:
        assert push_gateway.wait_for(tok, timeout=60), "no push attempt for the new message"
    finally:
        load.stop()
    queued = relay.host.sh("ls /var/lib/chatmaild/pending_notifications | wc -l").stdout
    assert int(queued) >= 1, "the refused push is not in the on-disk queue"
    actions.kill9(relay.host, "chatmail-metadata")
    killed_at = time.time()
    push_gateway.failing.discard(tok)
    actions.wait_back(relay.host, ["chatmail-metadata"])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with push_gateway.cond:
            after = [t for _p, token, t in push_gateway.requests if token == tok and t > killed_at]
        if after:
            break
        time.sleep(0.5)
    assert after, "the queued push was not sent after chatmail-metadata came back"


def test_reboot_under_load(relay):
    def reboot():
        actions.reboot(relay.host)
        return time.time()

    reboot.__name__ = "reboot (container stop/start)"
    _load, tally, rate = under_load(relay, reboot, settle_timeout=240)
    check(tally, rate)


def test_mailbox_filesystem_full(relay):
    """A full mailbox filesystem defers delivery (no bounce, no half-written
    file) until space is freed; then everything is delivered.  While it is
    full nothing is delivered: the mailboxes hold the same messages at the
    start and at the end of the full time, none of them cut short, while the
    messages accepted meanwhile wait in postfix's queue; every one of those
    is delivered once space is freed."""
    host = relay.host
    mailboxes = actions.small_mailboxes(host)
    try:
        actions.wait_back(host)
        senders = submitters(relay)
        recipients = create_recipients(relay, RECIPIENTS)
        addrs = sorted({addr for _relay, addr in recipients})
        # the senders' accounts are made by their first login, before the disk fills
        for s in senders:
            s.connect().quit()
        state = {}

        def disk_full():
            state["filler"] = actions.fill(host, mailboxes)
            # a delivery whose file was written before the disk filled up may
            # still be renamed into new/ in the next moment
            time.sleep(1)
            state["full_from"] = time.time()
            state["at_start"] = count(relay, addrs)
            time.sleep(9)
            state["at_end"] = count(relay, addrs)
            state["queued"] = queue_size(relay)
            state["full_until"] = time.time()
            actions.free(host, state["filler"])
            return time.time()

        disk_full.__name__ = "mailbox filesystem full for 10 s"
        load, tally, rate = under_load(relay, disk_full, senders, recipients)
        check(tally, rate)
        at_start, at_end = state["at_start"]["ids"], state["at_end"]["ids"]
        delivered_while_full = sorted(set(at_end) - set(at_start))
        assert not delivered_while_full, f"delivered to a full filesystem: {delivered_while_full}"
        cut = [i for i, hits in at_end.items() if not all(complete for *_x, complete in hits)]
        assert not cut, f"half-written while the filesystem was full: {cut}"
        held = [
            s.id
            for s in load.submissions()
            if s.outcome == "accepted" and state["full_from"] <= s.end <= state["full_until"]
        ]
        assert held, "nothing was accepted while the filesystem was full"
        assert not [i for i in held if i in at_end], "delivered to a full filesystem"
        assert state["queued"] >= len(held), (state["queued"], len(held))
        # ...and each of them arrived once space was freed (check: nothing missing)
        after = count(relay, addrs)["ids"]
        assert all(len(after.get(i, [])) == 1 for i in held)
    finally:
        actions.unmount_mailboxes(host, mailboxes)
