"""chatmail_status on the converged relay: the report per domain (units,
certificates, accounts, queue, disk) and the chatmail.status health state."""

import json

import pytest

from tests.harness import hosts

from .conftest import DOMAINS
from .test_relay import (
    RELAY_SERVICES,
    encrypted_message,
    imap_login,
    new_credentials,
    submit,
)

# TEST-NET-1: never answers, so a mail for it waits in the Postfix queue
UNREACHABLE = "nobody@[192.0.2.1]"


def status_report(host):
    proc = hosts.salt_call(host, "chatmail_status.report", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)["local"]


def status_state(host):
    proc = hosts.salt_call(host, "state.apply", "chatmail.status", timeout=300)
    result = hosts.parse_state_output(proc.returncode, proc.stdout, proc.stderr)
    (ret,) = json.loads(proc.stdout)["local"].values()
    return result, ret


def test_report_every_domain_healthy(relay):
    rep = status_report(relay)
    assert rep["errors"] == []
    assert sorted(rep["domains"]) == sorted(DOMAINS)
    assert rep["services"] == {unit: "active" for unit in RELAY_SERVICES}
    assert "error" not in rep["queue"] and rep["queue"]["total"] >= 0
    assert rep["disk"]["path"] == rep["mailboxes_dir"] == "/home/vmail/mail"
    assert 0 < rep["disk"]["used_percent"] < 100
    for domain in DOMAINS:
        entry = rep["domains"][domain]
        up = len(RELAY_SERVICES)
        assert entry["services"] == {"up": up, "total": up, "down": []}
        cert = entry["cert"]
        # the certificate Dovecot serves for the domain's SNI is the domain's file
        assert cert["days_left"] > 0, cert
        assert cert["matches_file"] is True, cert
        assert cert["file"]["path"].startswith(f"/etc/chatmail/tls/{domain}/"), cert
        assert isinstance(entry["queue"], int)
        assert entry["disk"]["path"] == f"/home/vmail/mail/{domain}"
    # each domain its own certificate
    served = {rep["domains"][d]["cert"]["served"]["sha256"] for d in DOMAINS}
    assert len(served) == len(DOMAINS)


def test_report_counts_new_account(relay):
    domain = DOMAINS[0]
    before = status_report(relay)["domains"]
    addr, password = new_credentials(domain)
    imap_login(relay.ip, addr, password).logout()
    after = status_report(relay)["domains"]
    assert after[domain]["accounts"] == before[domain]["accounts"] + 1
    assert after[domain]["disk"]["used_bytes"] > 0
    other = DOMAINS[1]
    assert after[other]["accounts"] == before[other]["accounts"]


def _queue_ids(host, sender):
    out = host.exec("postqueue", "-j").stdout
    entries = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [e["queue_id"] for e in entries if e.get("sender") == sender]


def test_report_counts_queued_mail_for_its_domain(relay):
    domain, other = DOMAINS[1], DOMAINS[0]
    addr, password = new_credentials(domain)
    imap_login(relay.ip, addr, password).logout()
    before = status_report(relay)
    submit(relay.ip, addr, password, [UNREACHABLE], encrypted_message(addr, UNREACHABLE))
    try:
        ids = _queue_ids(relay, addr)
        assert len(ids) == 1, relay.exec("postqueue", "-p", check=False).stdout
        after = status_report(relay)
        assert after["domains"][domain]["queue"] == before["domains"][domain]["queue"] + 1
        assert after["domains"][other]["queue"] == before["domains"][other]["queue"]
        assert after["queue"]["total"] == before["queue"]["total"] + 1
    finally:
        for queue_id in _queue_ids(relay, addr):
            relay.exec("postsuper", "-d", queue_id, check=False)
    final = status_report(relay)
    assert final["domains"][domain]["queue"] == before["domains"][domain]["queue"]


def test_status_state_passes_and_changes_nothing(relay):
    result, ret = status_state(relay)
    assert result.ok, ret
    assert ret["changes"] == {}
    assert f"{len(DOMAINS)} domain(s) healthy" in ret["comment"]
    proc = hosts.salt_call(relay, "state.apply", "chatmail.status", "test=True", timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:]


@pytest.mark.parametrize("unit", ["lastlogin"])
def test_status_state_names_stopped_unit(relay, unit):
    relay.exec("systemctl", "stop", unit)
    try:
        result, ret = status_state(relay)
        assert not result.ok
        assert ret["result"] is False and ret["changes"] == {}
        lines = ret["comment"].splitlines()
        assert sorted(line.split(": ", 1)[0] for line in lines) == sorted(DOMAINS)
        assert all(f"unit {unit} is not active" in line for line in lines)
        rep = status_report(relay)
        assert rep["services"][unit] != "active"
        assert all(rep["domains"][d]["services"]["down"] == [unit] for d in DOMAINS)
    finally:
        relay.exec("systemctl", "start", unit)
    assert relay.is_active(unit)
