"""Prometheus metrics of the session relay (chatmail.metrics): after a known
mix of mail (accepted, refused, delivered) and logins (good and bad), every
scraped counter moved by exactly that much; the exporters listen on loopback
only; the textfile timers report accounts, certificates and DNS per domain;
the public /metrics subset appears only when the pillar switches it on."""

import imaplib
import re
import smtplib
import socket
import time

import pytest

from tests.harness import hosts

from .conftest import DOMAINS
from .test_relay import (
    DOMAIN,
    encrypted_message,
    https_get,
    imap_login,
    new_credentials,
    submit,
)

PORTS = {"node": 9100, "postfix": 9154, "mtail": 3903, "dovecot": 9900}
SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)(?: \S+)?$")
LABEL_RE = re.compile(r'([a-zA-Z_]+)="((?:[^"\\]|\\.)*)"')

SCRAPE = (
    "import sys, urllib.request\n"
    "for port in sys.argv[1:]:\n"
    "    url = 'http://127.0.0.1:%s/metrics' % port\n"
    "    sys.stdout.write(urllib.request.urlopen(url, timeout=20).read().decode())\n"
)


def parse(text):
    """{(name, frozenset of labels): value} of Prometheus/OpenMetrics text."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE_RE.match(line)
        if not m:
            continue
        labels = frozenset(LABEL_RE.findall(m.group(2) or ""))
        try:
            out[(m.group(1), labels)] = float(m.group(3))
        except ValueError:
            continue
    return out


def scrape(host, *names):
    """Every sample of the named exporters, scraped inside the relay."""
    ports = [str(PORTS[n]) for n in names or PORTS]
    return parse(host.exec("python3", "-c", SCRAPE, *ports, timeout=120).stdout)


def value(samples, name, **labels):
    """Sum of `name` over the samples carrying at least `labels`."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= lab)


# counter -> labels; the deltas the mix below must produce
def counters():
    return {
        "accounts_created": ("chatmail_accounts_created_total", {"domain": DOMAIN}),
        "out_encrypted": (
            "chatmail_filtermail_messages_total",
            {"direction": "outgoing", "result": "accepted", "reason": "encrypted"},
        ),
        "out_523": (
            "chatmail_filtermail_messages_total",
            {"direction": "outgoing", "result": "rejected", "reason": "encryption_needed"},
        ),
        "lmtp_sent": ("chatmail_postfix_deliveries_total", {"transport": "lmtp", "status": "sent"}),
        "dovecot_delivered": ("dovecot_mail_delivery_total", {}),
        "imap_ok": ("dovecot_auth_success_imap_total", {}),
        "smtp_ok": ("dovecot_auth_success_smtp_total", {}),
        "imap_failed": ("dovecot_auth_failure_imap_total", {}),
        "smtp_failed": ("dovecot_auth_failure_smtp_total", {}),
    }


def snapshot(host):
    samples = scrape(host)
    return {key: value(samples, name, **labels) for key, (name, labels) in counters().items()}


def settled_snapshot(host, timeout=60):
    """A snapshot that no longer moves: the daemons write their counters up to
    5 s late, so what earlier tests did must be in before the mix starts."""
    deadline = time.monotonic() + timeout
    last = snapshot(host)
    while time.monotonic() < deadline:
        time.sleep(6)
        now = snapshot(host)
        if now == last:
            return now
        last = now
    raise AssertionError(f"counters still moving: {last}")


def test_metrics_share_of_the_first_highstate(relay_boot, record_property):
    """What chatmail.metrics adds to a fresh relay's highstate (reported, so
    the CI time it costs stays visible: see the junit properties or -s)."""
    _host, first = relay_boot
    durations = {
        sid: state.get("duration", 0) / 1000.0
        for sid, state in ((s["__id__"], s) for s in first.states.values())
    }
    ours = sum(d for sid, d in durations.items() if sid.startswith("chatmail-metrics-"))
    total = sum(durations.values())
    record_property("metrics_highstate_seconds", round(ours, 1))
    print(f"chatmail.metrics: {ours:.1f} s of {total:.1f} s of state run time")
    assert 0 < ours < total


def test_exporters_answer_on_loopback_only(relay):
    samples = scrape(relay)
    assert value(samples, "postfix_up") == 1  # showq readable
    assert value(samples, "node_textfile_scrape_error") == 0
    for name, port in PORTS.items():
        with socket.socket() as sock:
            sock.settimeout(5)
            assert sock.connect_ex((relay.ip, port)) != 0, f"{name} exporter reachable on {port}"


@pytest.fixture
def quiet_relay(relay):
    """The session relay without its echobot: the counters are relay-wide,
    and the bot's core logs in and sends on its own schedule (it wrote once
    more to test_echobot's user 48 s after that test, which in one CI run
    added a fourth accepted message to the mix below)."""
    relay.exec("systemctl", "stop", "chatmail-echobot")
    try:
        yield relay
    finally:
        relay.exec("systemctl", "start", "chatmail-echobot")


def test_counters_after_a_known_mix_of_mail_and_logins(quiet_relay):
    relay = quiet_relay
    before = settled_snapshot(relay)
    sender, sender_pw = new_credentials()
    rcpt, rcpt_pw = new_credentials()
    imap_login(relay.ip, rcpt, rcpt_pw).logout()  # creates rcpt: 1 IMAP login
    imap_login(relay.ip, sender, sender_pw).logout()  # creates sender: 1 IMAP login
    for i in range(3):  # 3 SMTP logins, 3 accepted, 3 delivered
        text = encrypted_message(sender, rcpt).replace(
            "Message-ID: <", f"Message-ID: <metrics{i}.", 1
        )
        submit(relay.ip, sender, sender_pw, [rcpt], text)
    cleartext = (
        f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: hi\r\n"
        "Message-ID: <metrics.plain@example.org>\r\n\r\nnot encrypted\r\n"
    )
    for _ in range(2):  # 2 SMTP logins, 2 refused with 523
        with pytest.raises(smtplib.SMTPDataError) as exc:
            submit(relay.ip, sender, sender_pw, [rcpt], cleartext)
        assert exc.value.smtp_code == 523
    with pytest.raises(imaplib.IMAP4.error):  # 1 failed IMAP login
        imap_login(relay.ip, rcpt, rcpt_pw + "x")
    with pytest.raises(smtplib.SMTPAuthenticationError):  # 1 failed SMTP login
        submit(relay.ip, sender, sender_pw + "x", [rcpt], cleartext)
    want = {
        "accounts_created": 2,
        "out_encrypted": 3,
        "out_523": 2,
        "lmtp_sent": 3,
        "dovecot_delivered": 3,
        "imap_ok": 2,
        "smtp_ok": 5,
        "imap_failed": 1,
        "smtp_failed": 1,
    }
    # the daemons write their files every 5 s, mtail follows the journal
    deadline = time.monotonic() + 90
    while True:
        after = snapshot(relay)
        delta = {key: after[key] - before[key] for key in want}
        if delta == want or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert delta == want
    # all delivered: the queue is empty again
    samples = scrape(relay, "postfix")
    assert value(samples, "postfix_showq_message_age_seconds_count") == 0


def test_textfile_timers_report_accounts_certificates_and_dns(relay):
    for unit in ("chatmail-fsreport-metrics.service", "chatmail-status-metrics.service"):
        relay.exec("systemctl", "start", unit, timeout=300)
    samples = scrape(relay, "node")
    for domain in DOMAINS:
        accounts = relay.exec(
            "sh", "-c", f"ls /home/vmail/mail/{domain} 2>/dev/null | grep -c @ || true"
        ).stdout.strip()
        assert value(samples, "chatmail_accounts", domain=domain) == int(accounts or 0), domain
        assert value(samples, "chatmail_tls_cert_days_left", domain=domain) > 300, domain
        assert value(samples, "chatmail_tls_cert_ok", domain=domain) == 1, domain
        # the check ran and reported (the session relay's zones are not served)
        assert ("chatmail_dns_check_ok", frozenset({("domain", domain)})) in samples, domain
        assert value(samples, "chatmail_accounts_active", domain=domain, days="1") >= 0
    ups = {lab: v for (n, lab), v in samples.items() if n == "chatmail_service_up"}
    assert ups and all(v == 1 for v in ups.values()), ups
    assert 0 < value(samples, "chatmail_mailbox_disk_used_ratio") < 1
    # the daemons' own files
    for name in ("filtermail-outgoing", "filtermail-incoming", "doveauth", "chatmail-metadata"):
        path = f"/var/lib/chatmail-metrics/{name}.prom"
        assert ("node_textfile_mtime_seconds", frozenset({("file", path)})) in samples, name
    assert ("chatmail_push_queued", frozenset()) in samples


def _get_public(relay, domain=DOMAIN):
    return https_get(relay.ip, domain, "/metrics")


def test_public_account_total_only_when_switched_on(relay):
    assert _get_public(relay)[0] == 404
    override = {"chatmail": {"metrics": {"public": True}}}
    try:
        result = hosts.converge(relay, pillar_override=override)
        assert result.ok, result.summary()
        relay.exec("systemctl", "start", "chatmail-fsreport-metrics.service", timeout=300)
        status, text = _get_public(relay)
        assert status == 200
        samples = parse(text)
        # one number per domain, nothing else
        assert list(samples) == [("chatmail_accounts", frozenset({("domain", DOMAIN)}))]
        assert samples[list(samples)[0]] >= 2
    finally:
        restored = hosts.converge(relay)
    assert restored.ok, restored.summary()
    assert _get_public(relay)[0] == 404
