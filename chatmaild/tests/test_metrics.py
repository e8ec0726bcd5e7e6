"""chatmaild.metrics: the counter registry, its text files, and the counts the
real daemons write (filtermail per reason, doveauth, the push notifier)."""

import os
import re
import stat
import time

import pytest
from chatmaild.notifier import Notifier
from test_doveauth import doveauth, login  # noqa: F401  (fixture)
from test_filtermail import (  # noqa: F401  (fixtures)
    DOMAIN,
    RCPT,
    SENDER,
    dns_server,
    filtermail,
    load_mail,
    send,
    sink,
)
from test_fsreport import build, run

from chatmaild import metrics

SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (-?[0-9.e+]+)$")
LABEL_RE = re.compile(r'([a-z_]+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """{(name, ((label, value), ...)): number} of a Prometheus text file."""
    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) \w+ .+$", line), line
            continue
        m = SAMPLE_RE.match(line)
        assert m, f"bad metrics line {line!r}"
        out[(m.group(1), tuple(sorted(LABEL_RE.findall(m.group(2) or ""))))] = float(m.group(3))
    return out


def test_render_counters_and_gauges():
    reg = metrics.Registry()
    assert reg.render() == ""
    reg.inc(
        "chatmail_filtermail_messages_total",
        direction="outgoing",
        result="accepted",
        reason="encrypted",
    )
    reg.inc(
        "chatmail_filtermail_messages_total",
        2,
        result="rejected",
        direction="outgoing",
        reason='x"y\\z\n',
    )
    reg.set_gauge("chatmail_push_queued", lambda: 7)
    text = reg.render()
    parsed = parse_metrics(text)
    assert parsed[("chatmail_push_queued", ())] == 7
    assert parsed[msg_key("outgoing", "accepted", "encrypted")] == 1
    assert 'reason="x\\"y\\\\z\\n",result="rejected"} 2' in text
    assert "# TYPE chatmail_filtermail_messages_total counter" in text
    assert "# TYPE chatmail_push_queued gauge" in text
    with pytest.raises(KeyError):
        reg.inc("chatmail_no_such_metric_total")


def test_broken_gauge_does_not_break_the_export():
    reg = metrics.Registry()
    reg.inc("chatmail_accounts_created_total", domain="a.org")
    reg.set_gauge("chatmail_push_queued", lambda: 1 / 0)
    assert 'chatmail_accounts_created_total{domain="a.org"} 1' in reg.render()


def test_textfile_writer(tmp_path):
    reg = metrics.Registry()
    writer = metrics.TextfileWriter(tmp_path / "missing", "x", registry=reg)
    reg.inc("chatmail_accounts_created_total", domain="a.org")
    assert writer.write() is False  # metrics switched off: no directory, no error
    writer = metrics.TextfileWriter(tmp_path, "doveauth", registry=reg, interval=0.05).start()
    deadline = time.monotonic() + 10
    path = tmp_path / "doveauth.prom"
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert 'chatmail_accounts_created_total{domain="a.org"} 1' in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # the node exporter reads it
    reg.inc("chatmail_accounts_created_total", domain="a.org")
    writer.stop()  # writes the last values
    assert 'chatmail_accounts_created_total{domain="a.org"} 2' in path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["doveauth.prom"]  # no temporary left


def wait_metrics(path, want, timeout=20):
    """Parse the daemon's text file until every (name, labels) in `want` has its value."""
    deadline = time.monotonic() + timeout
    got = {}
    while time.monotonic() < deadline:
        if path.exists():
            got = parse_metrics(path.read_text())
            if all(got.get(k, 0) == v for k, v in want.items()):
                return got
        time.sleep(0.1)
    raise AssertionError(f"{path}: want {want}, got {got}")


def msg_key(direction, result, reason):
    labels = (("direction", direction), ("reason", reason), ("result", result))
    return ("chatmail_filtermail_messages_total", labels)


def test_filtermail_outgoing_counts_per_reason(filtermail, sink, tmp_path):  # noqa: F811
    mdir = tmp_path / "metrics"
    mdir.mkdir()
    port = filtermail(
        "outgoing", metrics_dir=mdir, max_user_send_per_minute=60, max_user_send_burst_size=6
    )
    encrypted = load_mail("encrypted.eml", SENDER, RCPT)
    for _ in range(3):
        assert send(port, SENDER, [RCPT], encrypted)[0] == 250
    for _ in range(2):
        assert send(port, SENDER, [RCPT], load_mail("plain.eml", SENDER, RCPT))[0] == 523
    assert send(port, SENDER, [RCPT], load_mail("securejoin-vc.eml", SENDER, RCPT))[0] == 250
    # the burst of 6 is used up: the next MAIL is refused by the rate limit
    assert send(port, SENDER, [RCPT], encrypted)[0] == 450
    wait_metrics(
        mdir / "filtermail-outgoing.prom",
        {
            msg_key("outgoing", "accepted", "encrypted"): 3,
            msg_key("outgoing", "accepted", "securejoin"): 1,
            msg_key("outgoing", "rejected", "encryption_needed"): 2,
            msg_key("outgoing", "rejected", "rate_limit"): 1,
            (
                "chatmail_filtermail_reinjected_total",
                (("direction", "outgoing"), ("reply", "2xx")),
            ): 4,
        },
    )


def test_filtermail_incoming_counts_dkim_refusals(filtermail, sink, tmp_path):  # noqa: F811
    mdir = tmp_path / "metrics"
    mdir.mkdir()
    port = filtermail("incoming", metrics_dir=mdir)
    sender, rcpt = "alice@unsigned.example", f"bob000001@{DOMAIN}"
    for _ in range(2):
        assert send(port, sender, [rcpt], load_mail("encrypted.eml", sender, rcpt))[0] == 550
    assert send(port, sender, ["x@not-served.example"], b"")[0] == 550
    wait_metrics(
        mdir / "filtermail-incoming.prom",
        {
            msg_key("incoming", "rejected", "dkim"): 2,
            ("chatmail_filtermail_recipients_refused_total", (("direction", "incoming"),)): 1,
        },
    )
    assert sink.received == []


def test_doveauth_counts_created_accounts(doveauth, tmp_path):  # noqa: F811
    mdir = tmp_path / "metrics"
    mdir.mkdir()
    client = doveauth.start(metrics_dir=mdir).client()
    for i in range(3):
        assert login(client, f"created{i:02d}@{DOMAIN}", "secret-password")[0] == "O"
    assert login(client, f"created00@{DOMAIN}", "secret-password")[0] == "O"  # not new
    login(client, f"short@{DOMAIN}", "secret-password")  # name too short: refused
    wait_metrics(
        mdir / "doveauth.prom",
        {
            ("chatmail_accounts_created_total", (("domain", DOMAIN),)): 3,
            ("chatmail_account_creations_refused_total", ()): 1,
        },
    )


class FakeGateway(Notifier):
    """A notifier whose gateway answers from a list of HTTP statuses."""

    def __init__(self, queue_dir, statuses):
        super().__init__(queue_dir, "http://127.0.0.1:9/notify", 3600)
        self.statuses = list(statuses)
        self.base_delay = 0.01

    def post(self, token):
        return self.statuses.pop(0)


def test_notifier_counts_push_outcomes(tmp_path):
    metrics.REGISTRY.reset()
    notifier = FakeGateway(tmp_path / "q", [200, 500, 200, 410])
    os.makedirs(notifier.queue_dir, exist_ok=True)
    metrics.set_gauge("chatmail_push_queued", notifier.pending)
    notifier.start()
    try:
        notifier.notify("a@x.org", ["t1"])
        notifier.notify("b@x.org", ["t2"])
        notifier.notify("c@x.org", ["t3"])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (
            metrics.REGISTRY.value("chatmail_push_requests_total", result="sent") < 2
            or metrics.REGISTRY.value("chatmail_push_requests_total", result="gone") < 1
        ):
            time.sleep(0.02)
    finally:
        notifier.stop()
    got = parse_metrics(metrics.REGISTRY.render())
    push = "chatmail_push_requests_total"
    assert got[(push, (("result", "queued"),))] == 3
    assert got[(push, (("result", "sent"),))] == 2
    assert got[(push, (("result", "retried"),))] == 1
    assert got[(push, (("result", "gone"),))] == 1
    assert got[("chatmail_push_queued", ())] == 0
    metrics.REGISTRY.reset()


def test_fsreport_public_subset_and_quiet(make_ini, tmp_path):
    ini = build(tmp_path, make_ini)
    public = tmp_path / "public"
    public.mkdir()
    res = run(ini, "--quiet", "--public-dir", public, "--textfile", tmp_path / "all.prom")
    assert res.returncode == 0, res.stderr
    assert res.stdout == ""
    text = (public / f"{DOMAIN}.prom").read_text()
    # account totals only: nothing per account, no activity, no sizes
    assert parse_metrics(text) == {("chatmail_accounts", (("domain", DOMAIN),)): 5.0}
    assert "chatmail_mailbox_bytes" in (tmp_path / "all.prom").read_text()
