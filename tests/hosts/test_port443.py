"""Port 443 for restrictive networks (chatmail:alpn) on the session relay:
nginx's stream server reads the ALPN of each TLS connection and hands
"imap" to Dovecot and "smtp" to Postfix (with the client's address in a
PROXY header), everything else to the web server.  A Python ssl client
with ALPN "imap" logs in over IMAP, one with ALPN "smtp" authenticates and
sends a message that arrives; browsers' ALPN (h2, http/1.1) and none at all
still get the web page and POST /new."""

import imaplib
import json
import re
import smtplib
import ssl
import time
import urllib.request

import pytest

from tests.harness import GATEWAY

from .test_relay import DOMAIN, encrypted_message, imap_login, journal_since, mark, new_credentials

pytestmark = pytest.mark.hosts


def alpn_context(*protocols):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if protocols:
        ctx.set_alpn_protocols(list(protocols))
    return ctx


def test_imap_over_443(relay):
    """ALPN "imap": an IMAP login on 443 creates the account as on 993, and
    Dovecot sees the client's own address (PROXY header), not nginx's."""
    addr, password = new_credentials()
    mark(relay, "/root/cur443")
    imap = imaplib.IMAP4_SSL(relay.ip, 443, ssl_context=alpn_context("imap"), timeout=30)
    try:
        assert imap.sock.selected_alpn_protocol() is None  # Dovecot does no ALPN
        assert imap.sock.version() == "TLSv1.3"
        typ, _ = imap.login(addr, password)
        assert typ == "OK"
        typ, data = imap.select("INBOX")
        assert typ == "OK", data
    finally:
        imap.logout()
    # the same account over 993: it was created by the 443 login
    imap_login(relay.ip, addr, password).logout()
    logins = journal_since(relay, "/root/cur443", f"user=<{addr}>")
    assert f"rip={GATEWAY}" in logins, logins
    assert "rip=127.0.0.1" not in logins, logins


def test_smtp_over_443_sends_a_message_that_arrives(relay):
    """ALPN "smtp": SMTP AUTH and a send on 443, as on 465 (filtermail,
    sender = login); the recipient finds the message in its INBOX, and
    Postfix logged the client's own address."""
    sender, sender_pw = new_credentials()
    rcpt, rcpt_pw = new_credentials()
    imap_login(relay.ip, rcpt, rcpt_pw).logout()
    mark(relay, "/root/cur443s")
    message_id = f"alpn.{time.time_ns()}@{DOMAIN}"
    text = encrypted_message(sender, rcpt)
    text = re.sub(r"(?m)^Message-ID: .*$", f"Message-ID: <{message_id}>", text)
    with smtplib.SMTP_SSL(relay.ip, 443, context=alpn_context("smtp"), timeout=30) as smtp:
        code, banner = smtp.ehlo()
        assert code == 250 and b"AUTH" in banner, banner
        smtp.login(sender, sender_pw)
        assert smtp.sendmail(sender, [rcpt], text) == {}
        # cleartext is refused here as on every submission port
        with pytest.raises(smtplib.SMTPDataError) as refused:
            smtp.sendmail(
                sender, [rcpt], f"From: {sender}\r\nTo: {rcpt}\r\nSubject: hi\r\n\r\nhello\r\n"
            )
        assert refused.value.smtp_code == 523

    imap = imap_login(relay.ip, rcpt, rcpt_pw)
    try:
        for _ in range(60):
            imap.select("INBOX")
            typ, data = imap.search(None, "HEADER", "Message-ID", message_id)
            if data[0].split():
                break
            time.sleep(0.5)
        assert len(data[0].split()) == 1, data
    finally:
        imap.logout()
    log = relay.sh(
        'journalctl --no-pager -o cat --after-cursor="$(cat /root/cur443s)"'
        " -t postfix/submissions-alpn/smtpd",
        check=False,
    ).stdout
    assert f"client=unknown[{GATEWAY}]" in log, log
    assert "unknown[127.0.0.1]" not in log, log


@pytest.mark.parametrize("alpn", [("http/1.1",), ()], ids=["http1", "none"])
def test_https_still_served_on_443(relay, alpn):
    """HTTP/1.1 clients and clients without ALPN reach the web server: the
    home page and POST /new (a fresh account) work as before (h2: below)."""
    ctx = alpn_context(*alpn)
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx))
    req = urllib.request.Request(f"https://{relay.ip}/", headers={"Host": DOMAIN})
    with opener.open(req, timeout=30) as resp:
        assert resp.status == 200
        assert DOMAIN in resp.read().decode()
    req = urllib.request.Request(
        f"https://{relay.ip}/new", data=b"", method="POST", headers={"Host": DOMAIN}
    )
    with opener.open(req, timeout=30) as resp:
        body = json.loads(resp.read())
    assert body["email"].endswith("@" + DOMAIN), body


def test_web_server_negotiates_h2_behind_the_stream_server(relay):
    """The web server does the TLS handshake itself (the stream server only
    peeks at the ALPN), so a browser still gets HTTP/2."""
    import socket

    with socket.create_connection((relay.ip, 443), timeout=30) as raw:
        with alpn_context("h2", "http/1.1").wrap_socket(raw, server_hostname=DOMAIN) as tls:
            assert tls.selected_alpn_protocol() == "h2"


def test_stream_server_listens_and_backends_are_loopback_only(relay):
    listening = relay.exec("ss", "-Hltn").stdout
    for port in (8443, 10993, 10465):
        addrs = re.findall(rf"(\S+):{port}\s", listening)
        assert addrs and set(addrs) == {"127.0.0.1"}, (port, listening)
    assert re.search(r"(0\.0\.0\.0|\*):443\s", listening), listening
