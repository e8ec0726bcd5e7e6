"""The echobot (chatmail:echobot, on in tests/hosts/pillar) on the shared
session relay: its sandboxed unit, its accounts and passwords, and a real
Delta Chat client (the core in a bare client host) that joins the bot by its
invite link, writes to echo@<domain> and gets its message back, encrypted."""

import os
import re
import urllib.parse

import pytest

from tests.harness import deltachat

from .conftest import DOMAINS, KEEP, REUSE
from .test_relay import https_get, new_credentials

# an event that never comes fails the test in minutes, not at the suite's 900 s
pytestmark = [pytest.mark.hosts, pytest.mark.timeout(300)]

UNIT = "chatmail-echobot"
CLIENT_NAME = "cmsalt-echobot-client"
PASSWORDS = "/etc/chatmail/echobot"
MAILBOXES = "/home/vmail/mail"


client, dc = deltachat.module_fixtures(CLIENT_NAME, "echobot-client.test", KEEP, REUSE)


def invite(relay, domain):
    return relay.exec("cat", f"/run/chatmail-echobot/{domain}.txt").stdout.strip()


def user_account(dc, relay, domain):
    """A fresh account on `domain`, reached at the relay's address (the
    shared relay's domains are not in the test DNS) with its self-signed
    certificate accepted, as a dclogin: URL from /new would."""
    addr, password = new_credentials(domain)
    query = urllib.parse.urlencode(
        {"p": password, "v": 1, "ih": relay.ip, "ip": 993, "is": "ssl", "ic": 3,
         "sh": relay.ip, "sp": 465, "ss": "ssl", "sc": 3}
    )  # fmt: skip
    acc = dc.add_account()
    acc.add_transport_from_qr(f"dclogin:{addr}?{query}")
    return acc


def wait(acc, kind, **match):
    while True:
        event = acc.wait_for_event()
        if event["kind"] == kind and all(event.get(k) == v for k, v in match.items()):
            return event


def test_unit_runs_sandboxed(relay):
    assert relay.is_active(UNIT), relay.exec(
        "journalctl", "-u", UNIT, "-n", "50", "--no-pager", check=False
    ).stdout
    keys = ["User", "NoNewPrivileges", "ProtectSystem", "ProtectHome", "CapabilityBoundingSet"]
    out = relay.exec("systemctl", "show", UNIT, *(f"--property={k}" for k in keys)).stdout
    props = dict(line.split("=", 1) for line in out.splitlines())
    assert props == {
        "User": "echobot",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "CapabilityBoundingSet": "",
    }, props
    # systemd's own rating, as the chatmaild units (test_relay.py)
    out = relay.exec("systemd-analyze", "security", "--no-pager", UNIT).stdout
    score = float(re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out).group(1))
    assert score <= 2.0, out[-2000:]
    # the core runs as the bot's user
    pids = relay.exec("pgrep", "-u", "echobot", "-f", "deltachat-rpc-server", check=False)
    assert pids.stdout.split(), "no deltachat-rpc-server running as echobot"


@pytest.mark.parametrize("domain", DOMAINS)
def test_account_and_password(relay, domain):
    addr = f"echo@{domain}"
    # the password: generated on the host, for root and the bot's group only
    assert relay.exec("stat", "-c", "%U:%G %a", PASSWORDS).stdout.split() == ["root:echobot", "750"]
    secret = f"{PASSWORDS}/{domain}"
    assert relay.exec("stat", "-c", "%U:%G %a", secret).stdout.split() == ["root:echobot", "640"]
    password = relay.exec("cat", secret).stdout.strip()
    assert len(password) == 48
    assert password not in relay.exec("systemctl", "cat", UNIT).stdout
    assert password not in relay.exec("ps", "-eo", "args").stdout
    # an ordinary account: a password hash in its mailbox, owned by vmail
    stored = f"{MAILBOXES}/{domain}/{addr}/password"
    assert relay.exec("stat", "-c", "%U %a", stored).stdout.split() == ["vmail", "600"]
    assert relay.exec("cat", stored).stdout.startswith("{SHA512-CRYPT}$6$")
    # its invite link: what a user opens or scans to reach the bot encrypted,
    # also on the domain's web server
    link = invite(relay, domain)
    assert link.startswith(("https://i.delta.chat/#", "OPENPGP4FPR:")), link
    assert https_get(relay.ip, domain, "/echobot.txt") == (200, link + "\n")


def test_echo_comes_back_encrypted(dc, relay):
    domain = DOMAINS[0]
    acc = user_account(dc, relay, domain)
    acc.bring_online()
    chat = acc.secure_join(invite(relay, domain))
    wait(acc, "SecurejoinJoinerProgress", progress=1000)
    text = f"hello echo {os.urandom(4).hex()}"
    chat.send_text(text)
    event = wait(acc, "IncomingMsg", chat_id=chat.id)
    msg = acc.get_message_by_id(event["msg_id"]).get_snapshot()
    assert msg.text == text
    assert msg.show_padlock, msg
    assert msg.sender.get_snapshot().address == f"echo@{domain}"
