"""Outgoing mail through submission and filtermail: ACCEPTANCE.md "Outgoing mail"."""

import random
import smtplib

import pytest

from tests.harness import GATEWAY

from .conftest import SINK_DOMAIN
from .util import (
    account,
    dkim_verify,
    encrypted_message,
    parse,
    sample,
    submit,
    tls_context,
    wait_messages,
)

pytestmark = [pytest.mark.hosts, pytest.mark.acceptance]


@pytest.fixture(scope="module")
def pair(relay1):
    """Sender and recipient accounts on relay1."""
    return account(relay1), account(relay1)


@pytest.mark.parametrize(
    "name", ["encrypted.eml", "encrypted-skesk.eml", "encrypted-partial.eml", "securejoin-vc.eml"]
)
def test_accepted(relay1, name):
    (sender, sender_pw), (rcpt, rcpt_pw) = account(relay1), account(relay1)
    msg = sample(name, from_addr=sender, to_addr=rcpt)
    assert submit(relay1.ip, sender, sender_pw, [rcpt], msg) == {}
    assert len(wait_messages(relay1, rcpt, rcpt_pw)) == 1


def test_securejoin_vg_request_accepted(relay1):
    (sender, sender_pw), (rcpt, rcpt_pw) = account(relay1), account(relay1)
    msg = sample("securejoin-vg.eml", from_addr=sender, to_addr=rcpt)
    submit(relay1.ip, sender, sender_pw, [rcpt], msg)
    assert len(wait_messages(relay1, rcpt, rcpt_pw)) == 1


def test_self_addressed_autocrypt_setup_message_accepted(relay1):
    sender, sender_pw = account(relay1)
    msg = sample("asm.eml", from_addr=sender, to_addr=sender)
    submit(relay1.ip, sender, sender_pw, [sender], msg)
    assert len(wait_messages(relay1, sender, sender_pw)) == 1


@pytest.mark.parametrize(
    "name",
    [
        "plain.eml",
        "literal.eml",
        "truncated.eml",
        "trailing-garbage.eml",
        "armor-version.eml",
        "fake-encrypted.eml",
        "securejoin-vc-fake.eml",
    ],
)
def test_refused_523(relay1, pair, name):
    (sender, sender_pw), (rcpt, _pw) = pair
    msg = sample(name, from_addr=sender, to_addr=rcpt)
    with pytest.raises(smtplib.SMTPDataError) as exc:
        submit(relay1.ip, sender, sender_pw, [rcpt], msg)
    assert exc.value.smtp_code == 523, exc.value


def test_from_header_mismatch_refused(relay1, pair):
    (sender, sender_pw), (rcpt, _pw) = pair
    other, _ = account(relay1)
    msg = encrypted_message(other, rcpt)
    with pytest.raises(smtplib.SMTPDataError) as exc:
        submit(relay1.ip, sender, sender_pw, [rcpt], msg)
    # chatmail/relay's code and text (its online suite looks for "500")
    assert exc.value.smtp_code == 500
    assert b"Invalid FROM" in exc.value.smtp_error


def test_envelope_sender_not_login_553(relay1, pair):
    (sender, sender_pw), (rcpt, _pw) = pair
    other, _ = account(relay1)
    with smtplib.SMTP(relay1.ip, 587, timeout=30) as smtp:
        smtp.starttls(context=tls_context())
        smtp.login(sender, sender_pw)
        with pytest.raises((smtplib.SMTPSenderRefused, smtplib.SMTPRecipientsRefused)) as exc:
            smtp.sendmail(other, [rcpt], encrypted_message(other, rcpt))
    code = getattr(exc.value, "smtp_code", None)
    if code is None:  # postfix may answer at RCPT time
        code = next(iter(exc.value.recipients.values()))[0]
    assert code == 553


def test_send_rate_limit(relay1):
    """Burst of max_user_send_burst_size (10) passes, then 450 4.7.1."""
    (sender, sender_pw), (rcpt, _pw) = account(relay1), account(relay1)
    msg = encrypted_message(sender, rcpt)
    accepted = 0
    with smtplib.SMTP(relay1.ip, 587, timeout=30) as smtp:
        smtp.starttls(context=tls_context())
        smtp.login(sender, sender_pw)
        for _ in range(20):
            try:
                smtp.sendmail(sender, [rcpt], msg)
                accepted += 1
            except smtplib.SMTPDataError as exc:
                assert exc.smtp_code == 450, exc
                assert f"4.7.1: Too much mail from {sender}".encode() in exc.smtp_error
                break
            except smtplib.SMTPRecipientsRefused as exc:
                code, text = next(iter(exc.recipients.values()))
                assert code == 450, exc
                assert f"4.7.1: Too much mail from {sender}".encode() in text
                break
            except smtplib.SMTPSenderRefused as exc:
                assert exc.smtp_code == 450, exc
                assert b"Too much mail" in exc.smtp_error
                break
        else:
            pytest.fail("no rate limit after 20 messages")
    assert 10 <= accepted <= 12, accepted


def test_delivered_signed_and_scrubbed(relay1, sink):
    """What relay1 hands to a remote MX (the sink on the gateway, over STARTTLS)."""
    sender, sender_pw = account(relay1)
    rcpt = f"someone{random.randrange(10**9)}@{SINK_DOMAIN}"
    # What filtermail lets pass of a client's outer headers (docs/security-
    # chatmaild.md) still leaves scrubbed: Thunderbird's "..." subject, a
    # User-Agent, the client's own Received line.
    msg = encrypted_message(sender, rcpt).replace(
        "Subject: [...]",
        "Subject: ...\r\nUser-Agent: Leaky/2\r\nReceived: from laptop (laptop [10.9.9.9])",
        1,
    )
    submit(relay1.ip, sender, sender_pw, [rcpt], msg)
    # a cleartext subject or headers beyond those are refused, not scrubbed
    for extra in (
        "Subject: secret subject",
        "Subject: [...]\r\nX-Mailer: LeakyMailer 1.0",
        f"Subject: [...]\r\nX-Originating-IP: [{GATEWAY}]",
    ):
        leaky = encrypted_message(sender, rcpt).replace("Subject: [...]", extra, 1)
        with pytest.raises(smtplib.SMTPDataError) as refused:
            submit(relay1.ip, sender, sender_pw, [rcpt], leaky)
        assert refused.value.smtp_code == 523, extra
    got = sink.wait(lambda m: rcpt in m[1], timeout=90)
    assert got, "relay1 did not deliver to the sink MX"
    _mail_from, _rcpts, raw, peer, tls = got
    assert peer == relay1.ip
    assert tls
    delivered = parse(raw)
    assert delivered["Subject"] == "[...]"
    for header in ("X-Mailer", "User-Agent", "X-Originating-IP"):
        assert delivered[header] is None, (header, delivered[header])
    # relay1 may add one Received line of its own; nothing from the client's side
    for received in delivered.get_all("Received") or []:
        assert "laptop" not in received and GATEWAY not in received, received
    assert GATEWAY.encode() not in raw
    assert b"10.9.9.9" not in raw
    signatures = delivered.get_all("DKIM-Signature") or []
    assert any(f"d={relay1.domain}" in s.replace(" ", "") for s in signatures), signatures
    assert dkim_verify(raw)


def test_oversized_message_refused_at_smtp_time(relay1, pair):
    (sender, sender_pw), (rcpt, _pw) = pair
    body = encrypted_message(sender, rcpt)
    padding = "X-Padding: " + "a" * 900 + "\r\n"
    big = padding * (31457280 // len(padding) + 10) + body
    assert len(big) > 31457280
    with smtplib.SMTP(relay1.ip, 587, timeout=60) as smtp:
        smtp.starttls(context=tls_context())
        smtp.login(sender, sender_pw)
        smtp.ehlo()
        assert int(smtp.esmtp_features["size"]) == 31457280
        with pytest.raises(smtplib.SMTPSenderRefused) as exc:
            smtp.sendmail(sender, [rcpt], big)  # MAIL FROM ... SIZE=<len>
    assert exc.value.smtp_code == 552
