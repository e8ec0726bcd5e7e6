"""One host serving two chatmail domains, one of them its own IPv4 address (IP-only relay):
ACCEPTANCE.md "Web and DNS" (IP-only relays) and DESIGN.md's per-domain separation."""

import json

import pytest

from tests.harness.hosts import salt_call

from .test_deltachat import DC_TIMEOUT, Events, receive, secure_join
from .util import (
    encrypted_message,
    https,
    imap_login,
    new_credentials,
    submit,
    wait_messages,
)

pytestmark = [pytest.mark.hosts, pytest.mark.acceptance]

MAILBOXES = "/home/vmail/mail"


class IPRelay:
    """relay3 seen through its IP-address domain (for the helpers that take a relay)."""

    def __init__(self, relay):
        self.host = relay.host
        self.ip = relay.ip
        self.domain = f"[{relay.ip}]"


def test_accounts_in_both_domains(relay3):
    named, named_pw = new_credentials(relay3.domain)
    literal, literal_pw = new_credentials(f"[{relay3.ip}]")
    imap_login(relay3.ip, named, named_pw).logout()
    imap_login(relay3.ip, literal, literal_pw).logout()
    found = relay3.host.sh(f"cd {MAILBOXES} && ls -d */*@*").stdout.split()
    assert f"{relay3.domain}/{named}" in found
    assert f"{relay3.ip}/{literal}" in found


def test_files_of_one_domain_never_mention_the_other(relay3):
    ip, name = relay3.ip, relay3.domain
    for domain, other in ((name, ip), (ip, name)):
        hits = relay3.host.sh(
            f"grep -rlF -- '{other}' /var/www/chatmail/{domain} || true"
        ).stdout.split()
        assert hits == [], (domain, hits)
    assert relay3.host.exec("ls", "/etc/chatmail/zones").stdout.split() == [f"{name}.zone"]
    keys = relay3.host.exec("ls", "/etc/dkimkeys").stdout.split()
    assert not any(ip in key for key in keys), keys
    assert any(key.startswith(name) for key in keys), keys


def test_ip_domain_new_hands_out_dclogin(relay3):
    status, _headers, body = https(relay3, "POST", "/new", host=relay3.ip)
    assert status == 200
    data = json.loads(body)
    assert data["email"].endswith(f"@[{relay3.ip}]")
    url = data["dclogin_url"]
    assert url.startswith("dclogin:")
    assert f"ih={relay3.ip}" in url and f"sh={relay3.ip}" in url
    assert "ic=3" in url


def test_ip_domain_page_offers_button_not_dcaccount_qr(relay3):
    status, _headers, body = https(relay3, "GET", "/", host=relay3.ip)
    assert status == 200
    assert b"DCACCOUNT:" not in body.upper()
    assert b'fetch("/new"' in body


def test_ip_domain_dns_check_skipped(relay3):
    status = json.loads(salt_call(relay3.host, "chatmail_dns.status").stdout)["local"]
    assert status[relay3.domain]["ok"], status
    assert status[relay3.ip].get("skipped"), status


def test_ip_domain_mail_between_accounts(relay3):
    relay = IPRelay(relay3)
    sender, sender_pw = new_credentials(relay.domain)
    rcpt, rcpt_pw = new_credentials(relay.domain)
    imap_login(relay.ip, rcpt, rcpt_pw).logout()
    imap_login(relay.ip, sender, sender_pw).logout()
    submit(relay.ip, sender, sender_pw, [rcpt], encrypted_message(sender, rcpt))
    got = wait_messages(relay, rcpt, rcpt_pw)
    assert got
    assert b"DKIM-Signature" not in got[0]


@DC_TIMEOUT
def test_deltachat_on_ip_relay(dc, relay3):
    accounts = []
    for _ in range(2):
        status, _headers, body = https(relay3, "POST", "/new", host=relay3.ip)
        assert status == 200
        acc = dc.add_account()
        acc.add_transport_from_qr(json.loads(body)["dclogin_url"])
        acc.bring_online()
        accounts.append(acc)
    inviter, joiner = accounts
    inv_events, join_events = Events(inviter), Events(joiner)
    chat = secure_join(joiner, join_events, inviter, inv_events, inviter.get_qr_code())
    chat.send_text("hello over an IP-only relay")
    snap = receive(inviter, inv_events).get_snapshot()
    assert snap.text == "hello over an IP-only relay"
    assert snap.show_padlock
    assert inv_events.errors == [] and join_events.errors == []
