"""The real Delta Chat core (deltachat-rpc-server in the client host) against the relays:
ACCEPTANCE.md "With a real client" and the Delta Chat side of "Accounts and login".

Relays run with self-signed certificates, so accounts are set up through the
`dclogin:` URL (`ic=3`/`sc=3`: accept invalid certificates) that `/new` hands
out in self-signed mode, or through one we build for a first login.
"""

import json
import urllib.parse

import pytest

from .util import https, new_credentials, user_dir

# A Delta Chat test waits for the core's events without a deadline of its
# own: a message the relay refuses shows up as an event that never comes.
# DC_TIMEOUT fails such a test in minutes instead of at the suite's 900 s.
DC_TIMEOUT = pytest.mark.timeout(300)
pytestmark = [pytest.mark.hosts, pytest.mark.acceptance, DC_TIMEOUT]

ERROR_KINDS = {"Error", "ErrorSelfNotInGroup"}


class Events:
    """Waits for events of one account and keeps every error event seen on the way."""

    def __init__(self, account):
        self.account = account
        self.errors = []

    def wait(self, kind, **match):
        while True:
            event = self.account.wait_for_event()
            if event["kind"] in ERROR_KINDS:
                self.errors.append(dict(event))
            if event["kind"] == kind and all(event.get(k) == v for k, v in match.items()):
                return event


def dclogin_url(addr, password):
    domain = addr.split("@", 1)[1]
    query = urllib.parse.urlencode(
        {"p": password, "v": 1, "ih": domain, "ip": 993, "is": "ssl", "ic": 3,
         "sh": domain, "sp": 465, "ss": "ssl", "sc": 3}
    )  # fmt: skip
    return f"dclogin:{addr}?{query}"


def account_via_new(dc, relay):
    status, _headers, body = https(relay, "POST", "/new")
    assert status == 200
    data = json.loads(body)
    acc = dc.add_account()
    # self-signed mode hands out a dclogin: URL; otherwise (private CA, which the
    # client does not trust either) we build the same one
    url = data.get("dclogin_url") or dclogin_url(data["email"], data["password"])
    acc.add_transport_from_qr(url)
    assert acc.get_config("configured_addr") == data["email"]
    return acc


def online(*accounts):
    events = []
    for acc in accounts:
        acc.bring_online()
        events.append(Events(acc))
    return events


def secure_join(joiner, joiner_events, inviter, inviter_events, qr):
    chat = joiner.secure_join(qr)
    inviter_events.wait("SecurejoinInviterProgress", progress=1000)
    joiner_events.wait("SecurejoinJoinerProgress", progress=1000)
    return chat


def receive(acc, events):
    event = events.wait("IncomingMsg")
    return acc.get_message_by_id(event["msg_id"])


def test_account_via_new(dc, relay1):
    acc = account_via_new(dc, relay1)
    addr = acc.get_config("configured_addr")
    assert relay1.host.exec("test", "-s", f"{user_dir(relay1, addr)}/password").returncode == 0


def test_account_via_first_login(dc, relay2):
    addr, password = new_credentials(relay2.domain)
    password_file = f"{user_dir(relay2, addr)}/password"
    assert relay2.host.exec("test", "-e", password_file, check=False).returncode != 0
    acc = dc.add_account()
    acc.add_transport_from_qr(dclogin_url(addr, password))
    assert acc.get_config("configured_addr") == addr
    assert relay2.host.exec("test", "-s", password_file, check=False).returncode == 0


def chat_both_ways(inviter, joiner):
    inv_events, join_events = online(inviter, joiner)
    chat = secure_join(joiner, join_events, inviter, inv_events, inviter.get_qr_code())

    chat.send_text("hello from the joiner")
    msg = receive(inviter, inv_events)
    snap = msg.get_snapshot()
    assert snap.text == "hello from the joiner"
    assert snap.show_padlock

    # read receipt back to the joiner
    msg.mark_seen()
    join_events.wait("MsgRead")

    inviter.get_chat_by_id(snap.chat_id).send_text("hello back")
    reply = receive(joiner, join_events).get_snapshot()
    assert reply.text == "hello back"
    assert reply.show_padlock
    assert inv_events.errors == [] and join_events.errors == []


def test_one_to_one_same_relay(dc, relay1):
    chat_both_ways(account_via_new(dc, relay1), account_via_new(dc, relay1))


def test_one_to_one_across_relays(dc, relay1, relay2):
    chat_both_ways(account_via_new(dc, relay1), account_via_new(dc, relay2))


def test_group_via_secure_join_across_relays(dc, relay1, relay2):
    owner = account_via_new(dc, relay1)
    member = account_via_new(dc, relay2)
    owner_events, member_events = online(owner, member)
    group = owner.create_group("acceptance group")
    secure_join(member, member_events, owner, owner_events, group.get_qr_code())

    group.send_text("hello group")
    while True:
        snap = receive(member, member_events).get_snapshot()
        if snap.text == "hello group":
            break
    assert snap.show_padlock
    member.get_chat_by_id(snap.chat_id).send_text("hello owner")
    while True:
        got = receive(owner, owner_events).get_snapshot()
        if got.text == "hello owner":
            break
    assert got.show_padlock
    assert got.chat_id == group.id
    assert owner_events.errors == [] and member_events.errors == []
