"""The fleet's Prometheus (salt/fleet/prometheus.sls) on the first fleet relay:
targets generated from the salt mine, every relay's exporters scraped, its
API answering per-relay queries (accounts, queue), the alert rules loaded.
Runs in the fleet suite's session (same master and relays as test_fleet.py)."""

import json
import time
import urllib.parse
import urllib.request

import pytest

from tests.hosts.test_relay import imap_login, new_credentials

from .conftest import ADDRESSES, MINIONS, PROMETHEUS

EXPORTERS = ["node", "postfix", "mtail", "dovecot"]
RULES = "/etc/prometheus/chatmail-rules.yml"


def api(path, **params):
    url = f"http://{ADDRESSES[PROMETHEUS]}:9090/api/v1/{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=30) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    return body["data"]


def query(expr):
    """{relay: value} of an instant query."""
    result = api("query", query=expr)["result"]
    return {r["metric"].get("relay"): float(r["value"][1]) for r in result}


def wait_for(check, timeout=180, interval=5):
    deadline = time.monotonic() + timeout
    while True:
        try:
            last = check()
            if last is True:
                return
        except (OSError, AssertionError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {last}")
        time.sleep(interval)


@pytest.fixture(scope="module")
def prometheus(master, relays):
    """Fresh mine data from every relay, then the Prometheus host's state:
    the targets of all three relays are in its file_sd files."""
    assert all(master.salt(MINIONS, "mine.update").get(m) is True for m in MINIONS)
    published = master.salt(MINIONS, "chatmail_metrics.targets")
    for minion in MINIONS:
        assert published[minion]["node"] == f"{ADDRESSES[minion]}:9100", published
    # queue: the master's schedule may be running a highstate there right now
    ret = master.salt([PROMETHEUS], "state.apply", "fleet.prometheus", "queue=True", timeout=900)
    ret = ret[PROMETHEUS]
    failed = [k for k, v in ret.items() if not v.get("result")] if isinstance(ret, dict) else ret
    assert not failed, failed
    return relays[PROMETHEUS]


def test_targets_come_from_the_mine(prometheus):
    for kind in EXPORTERS:
        groups = json.loads(prometheus.exec("cat", f"/etc/prometheus/chatmail-targets/{kind}.json")
                            .stdout)  # fmt: skip
        assert sorted(g["labels"]["relay"] for g in groups) == sorted(MINIONS), groups


def test_every_relay_exporter_is_scraped(prometheus):
    def all_up():
        targets = {
            (t["labels"].get("relay"), t["labels"]["job"]): t
            for t in api("targets")["activeTargets"]
        }
        up = {k for k, t in targets.items() if t["health"] == "up" and k[1].startswith("chatmail_")}
        want = {(m, f"chatmail_{k}") for m in MINIONS for k in EXPORTERS}
        errors = {
            k: (targets[k]["health"], targets[k].get("lastError"))
            for k in want - up
            if k in targets
        }
        assert want <= up, errors or sorted(want - up)
        return True

    wait_for(all_up)


def test_api_answers_accounts_and_queue_per_relay(prometheus, relays):
    want = {}
    for minion, host in relays.items():
        addr, password = new_credentials(minion)  # one account and one login more each
        imap_login(host.ip, addr, password).logout()
        host.exec("systemctl", "start", "chatmail-fsreport-metrics.service", timeout=300)
        count = host.sh(f"ls /home/vmail/mail/{minion} | grep -c @ || true").stdout.strip()
        want[minion] = float(count)
    assert all(n >= 1 for n in want.values()), want

    def accounts_match():
        got = query("sum by (relay) (chatmail_accounts)")
        assert got == want, got
        return True

    wait_for(accounts_match)
    queue = query("sum by (relay) (postfix_showq_message_age_seconds_count)")
    assert sorted(queue) == sorted(MINIONS), queue
    assert all(v >= 0 for v in queue.values())
    logins = query("sum by (relay) (dovecot_auth_success_imap_total)")
    assert sorted(logins) == sorted(MINIONS) and all(v >= 1 for v in logins.values()), logins


def test_alert_rules_are_loaded(prometheus):
    check = prometheus.exec("promtool", "check", "rules", RULES, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    groups = api("rules")["groups"]
    rules = {r["name"]: r for g in groups if g["name"] == "chatmail" for r in g["rules"]}
    for name in (
        "ChatmailRelayDown",
        "ChatmailQueueGrowing",
        "ChatmailCertificateExpiresSoon",
        "ChatmailDnsCheckFailing",
        "ChatmailDiskFull",
    ):
        assert rules[name]["health"] == "ok", rules[name]
    # three healthy relays: the availability alert is not firing
    assert rules["ChatmailRelayDown"]["state"] == "inactive", rules["ChatmailRelayDown"]
