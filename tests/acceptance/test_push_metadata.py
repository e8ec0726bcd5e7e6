"""IMAP METADATA device tokens and push notifications: ACCEPTANCE.md "Push and metadata".

The push gateway is a local HTTP server on the test network's gateway address
(pillar push_notification_url of both relays points at it).
"""

import json
import secrets
import time

import pytest

from .util import (
    account,
    encrypted_message,
    get_metadata,
    imap_login,
    set_metadata,
    submit,
    user_dir,
    wait_messages,
)

pytestmark = [pytest.mark.hosts, pytest.mark.acceptance]

TOKEN_ENTRY = "/private/devicetoken"


def token():
    return "tok-" + secrets.token_hex(12)


def register(relay, addr, password, *tokens):
    imap = imap_login(relay.ip, addr, password)
    try:
        for tok in tokens:
            typ, data = set_metadata(imap, "INBOX", TOKEN_ENTRY, tok)
            assert typ == "OK", data
    finally:
        imap.logout()


def stored_tokens(relay, addr, password):
    imap = imap_login(relay.ip, addr, password)
    try:
        typ, text = get_metadata(imap, "INBOX", TOKEN_ENTRY)
        assert typ == "OK", text
        return text
    finally:
        imap.logout()


def send_to(relay, rcpt):
    sender, sender_pw = account(relay)
    submit(relay.ip, sender, sender_pw, [rcpt], encrypted_message(sender, rcpt))


def test_tokens_stored_per_device(relay1):
    addr, password = account(relay1)
    tok1, tok2 = token(), token()
    register(relay1, addr, password, tok1, tok2)
    text = stored_tokens(relay1, addr, password)
    assert tok1 in text and tok2 in text
    data = json.loads(relay1.host.exec("cat", f"{user_dir(relay1, addr)}/metadata.json").stdout)
    assert set(data["devicetoken"]) == {tok1, tok2}


def test_delivery_pushes_every_token(relay1, push_gateway):
    addr, password = account(relay1)
    tok1, tok2 = token(), token()
    register(relay1, addr, password, tok1, tok2)
    send_to(relay1, addr)
    assert push_gateway.wait_for(tok1, timeout=60)
    assert push_gateway.wait_for(tok2, timeout=60)


def test_self_sent_message_does_not_push(relay1, push_gateway):
    addr, password = account(relay1)
    tok = token()
    register(relay1, addr, password, tok)
    submit(relay1.ip, addr, password, [addr], encrypted_message(addr, addr))
    assert wait_messages(relay1, addr, password)
    send_to(relay1, addr)  # a second message from someone else does push
    assert push_gateway.wait_for(tok, timeout=60)
    time.sleep(2)
    assert push_gateway.tokens().count(tok) == 1


def test_gone_token_is_removed(relay1, push_gateway):
    addr, password = account(relay1)
    dead, alive = token(), token()
    push_gateway.gone.add(dead)
    register(relay1, addr, password, dead, alive)
    send_to(relay1, addr)
    assert push_gateway.wait_for(dead, timeout=60)
    deadline = time.monotonic() + 30
    while dead in stored_tokens(relay1, addr, password) and time.monotonic() < deadline:
        time.sleep(0.5)
    text = stored_tokens(relay1, addr, password)
    assert dead not in text and alive in text


def test_expired_token_is_dropped(relay1):
    addr, password = account(relay1)
    old, fresh = token(), token()
    register(relay1, addr, password, old, fresh)
    path = f"{user_dir(relay1, addr)}/metadata.json"
    data = json.loads(relay1.host.exec("cat", path).stdout)
    data["devicetoken"][old] = int(time.time()) - 91 * 86400
    relay1.host.write_file(path, json.dumps(data), mode="0600")
    relay1.host.exec("chown", "vmail:vmail", path)
    text = stored_tokens(relay1, addr, password)
    assert fresh in text and old not in text


def test_push_queue_survives_restart_and_retries(relay1, push_gateway):
    addr, password = account(relay1)
    tok = token()
    push_gateway.failing.add(tok)
    register(relay1, addr, password, tok)
    send_to(relay1, addr)
    try:
        assert push_gateway.wait_for(tok, timeout=60)  # first attempt: 503
        queue = "/var/lib/chatmaild/pending_notifications"
        pending = relay1.host.sh(f"grep -l -- '{tok}' {queue}/* || true").stdout.split()
        assert pending, "the failed push request is not queued on disk"
        relay1.host.exec("systemctl", "restart", "chatmail-metadata")
    finally:
        push_gateway.failing.discard(tok)
    count = push_gateway.tokens().count(tok)
    assert push_gateway.wait_for(tok, timeout=60, count=count + 1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if not relay1.host.sh(f"grep -l -- '{tok}' {queue}/* || true").stdout.split():
            break
        time.sleep(0.5)
    else:
        pytest.fail("push request still queued after a successful retry")


def test_vendor_metadata_advertised(relay1):
    addr, password = account(relay1)
    imap = imap_login(relay1.ip, addr, password)
    try:
        typ, text = get_metadata(imap, '""', "/shared/vendor/deltachat/maxsmtprecipients")
    finally:
        imap.logout()
    assert typ == "OK"
    assert "1000" in text, text
