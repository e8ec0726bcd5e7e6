"""filtermail, tested as a black box: the real console script on a real port,
a real SMTP sink standing in for Postfix's reinjection listener, smtplib as
the client, and (for DKIM) a real DNS server answering over UDP."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import dkim
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP
from conftest import dkim_keypair

DATA = Path(__file__).parent / "mail-data"
DOMAIN = "chat.example.org"
OTHER = "other.example.net"


def load_mail(name, from_addr, to_addr, extra_headers=b"") -> bytes:
    """A sample mail with addresses filled in, CRLF line ends (as on the wire)."""
    text = (DATA / name).read_text()
    text = text.replace("{from_addr}", from_addr).replace("{to_addr}", to_addr)
    text = text.replace("{from_domain}", from_addr.rsplit("@", 1)[-1])
    raw = text.replace("\r\n", "\n").replace("\n", "\r\n").encode()
    return extra_headers + raw


# --- the Postfix stand-in ---


class SinkHandler:
    def __init__(self):
        self.received = []
        self.refuse_rcpt = {}
        self.peers = set()
        self.data_delay = 0.0  # seconds between taking a message and the reply

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse_rcpt:
            return self.refuse_rcpt[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.peers.add(session.peer)
        self.received.append((envelope.mail_from, envelope.rcpt_tos, envelope.original_content))
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        return "250 2.0.0 Ok: queued as SINK1"


class LongLineSMTP(SMTP):
    line_length_limit = 64 * 1024  # Postfix accepts long lines too


class SinkController(Controller):
    def factory(self):
        return LongLineSMTP(self.handler, **self.SMTP_kwargs)


@pytest.fixture
def sink(free_port):
    handler = SinkHandler()
    controllers = []

    def start(port):
        controller = SinkController(handler, hostname="127.0.0.1", port=port)
        controller.start()
        controllers.append(controller)

    def restart():
        controllers[-1].stop()
        start(handler.port)

    handler.port = free_port()
    handler.restart = restart
    start(handler.port)
    yield handler
    controllers[-1].stop()


# --- a real DNS server for DKIM keys ---


class TxtServer:
    """Answers TXT queries from ``records`` over UDP; NXDOMAIN otherwise."""

    def __init__(self):
        self.records = {}
        # name -> seconds to wait before answering (answers come from a
        # timer thread, so a slow name never holds up the others)
        self.delays = {}
        self.queries = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.running = True
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while self.running:
            try:
                wire, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            query = dns.message.from_wire(wire)
            response = dns.message.make_response(query)
            question = query.question[0]
            name = question.name.to_text().lower()
            self.queries.append(name)
            value = self.records.get(name)
            if value is None or question.rdtype != dns.rdatatype.TXT:
                response.set_rcode(dns.rcode.NXDOMAIN)
            else:
                chunks = [value[i : i + 255] for i in range(0, len(value), 255)]
                txt = " ".join(f'"{c}"' for c in chunks)
                response.answer.append(dns.rrset.from_text(name, 60, "IN", "TXT", txt))
            delay = self.delays.get(name)
            if delay:
                timer = threading.Timer(delay, self._answer, (response.to_wire(), peer))
                timer.daemon = True
                timer.start()
            else:
                self._answer(response.to_wire(), peer)

    def _answer(self, wire, peer):
        try:
            self.sock.sendto(wire, peer)
        except OSError:
            pass

    def close(self):
        self.running = False
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def dns_server():
    server = TxtServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def rsa_key():
    return dkim_keypair()


def publish(dns_server, rsa_key, domain, selector="dkim"):
    dns_server.records[f"{selector}._domainkey.{domain}."] = rsa_key[1]


def dkim_sign(message: bytes, domain, rsa_key, selector="dkim", length=False) -> bytes:
    sig = dkim.sign(
        message,
        selector.encode(),
        domain.encode(),
        rsa_key[0],
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
        length=length,
    )
    return sig.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + message


# --- the daemon under test ---


@pytest.fixture
def filtermail(make_ini, start_daemon, free_port, sink, dns_server):
    """``start(mode, **ini_params)`` -> port of a running filtermail."""

    def start(mode, domains=None, sections=None, **params):
        out_port, in_port = free_port(), free_port()
        values = dict(
            filtermail_smtp_port=out_port,
            filtermail_smtp_port_incoming=in_port,
            postfix_reinject_port=sink.port,
            postfix_reinject_port_incoming=sink.port,
            max_user_send_per_minute=1000,
            max_user_send_burst_size=1000,
        )
        values.update(params)
        if mode == "outgoing":
            values["postfix_reinject_port_incoming"] = free_port()
        else:
            values["postfix_reinject_port"] = free_port()
        ini = make_ini(domains=domains, sections=sections, **values)
        port = out_port if mode == "outgoing" else in_port
        argv = ["filtermail", ini, mode, "--dns-server", f"127.0.0.1:{dns_server.port}"]
        start.proc = start_daemon(argv, port=port)
        return port

    return start


def send(port, mail_from, rcpts, content) -> tuple[int, str]:
    """One SMTP transaction; the first refusal or the DATA reply."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo()
        code, text = client.mail(mail_from)
        if code != 250:
            return code, text.decode()
        for rcpt in rcpts:
            code, text = client.rcpt(rcpt)
            if code != 250:
                return code, text.decode()
        code, text = client.data(content)
        return code, text.decode()


SENDER = f"alice0001@{DOMAIN}"
RCPT = f"bob000001@{OTHER}"


# --- outgoing ---


@pytest.mark.parametrize(
    "name",
    [
        "encrypted.eml",
        "encrypted-skesk.eml",
        "encrypted-partial.eml",
        "securejoin-vc.eml",
        "securejoin-vg.eml",
        "deltachat-2.65-securejoin.eml",
    ],
)
def test_outgoing_accepts_encrypted_byte_identical(filtermail, sink, name):
    port = filtermail("outgoing")
    content = load_mail(name, SENDER, RCPT)
    code, text = send(port, SENDER, [RCPT, f"carol0001@{DOMAIN}"], content)
    assert (code, text) == (250, "2.0.0 Ok: queued as SINK1")
    assert sink.received == [(SENDER, [RCPT, f"carol0001@{DOMAIN}"], content)]


@pytest.mark.parametrize(
    "name",
    [
        "plain.eml",
        "fake-encrypted.eml",
        "literal.eml",
        "truncated.eml",
        "trailing-garbage.eml",
        "armor-version.eml",
        "securejoin-vc-fake.eml",
        "mdn.eml",
        "mailer-daemon.eml",
    ],
)
def test_outgoing_refuses_cleartext(filtermail, sink, name):
    port = filtermail("outgoing")
    code, text = send(port, SENDER, [RCPT], load_mail(name, SENDER, RCPT))
    assert code == 523
    assert text.startswith("Encryption Needed")
    assert sink.received == []


def big_encrypted_mail(sender, size) -> bytes:
    """An OpenPGP/MIME mail whose SEIPD packet has ``size`` random bytes."""
    seipd = b"\x01" + os.urandom(size)
    stream = b"\xc1\x5e\x03" + os.urandom(93) + b"\xd2\xff" + len(seipd).to_bytes(4, "big") + seipd
    b64 = base64.b64encode(stream).decode()
    armor = "\r\n".join(b64[i : i + 76] for i in range(0, len(b64), 76))
    template = load_mail("encrypted.eml", sender, RCPT).decode()
    start = template.index("-----BEGIN PGP MESSAGE-----")
    end = template.index("-----END PGP MESSAGE-----")
    body = "-----BEGIN PGP MESSAGE-----\r\n\r\n" + armor + "\r\n"
    return (template[:start] + body + template[end:]).encode()


def test_outgoing_big_message_checked_off_the_loop(filtermail, sink):
    port = filtermail("outgoing")
    content = big_encrypted_mail(SENDER, 600_000)
    assert len(content) > 800_000
    assert send(port, SENDER, [RCPT], content)[0] == 250
    broken = content.replace(b"-----END PGP MESSAGE-----", b"AAAA\r\n-----END PGP MESSAGE-----")
    assert send(port, SENDER, [RCPT], broken)[0] == 523
    assert [c for _, _, c in sink.received] == [content]


def test_outgoing_autocrypt_setup_message_only_to_self(filtermail, sink):
    port = filtermail("outgoing")
    asm = load_mail("asm.eml", SENDER, SENDER)
    assert send(port, SENDER, [SENDER], asm)[0] == 250
    assert send(port, SENDER, [SENDER.upper()], asm)[0] == 250
    assert send(port, SENDER, [SENDER, RCPT], asm)[0] == 523
    assert send(port, SENDER, [RCPT], asm)[0] == 523
    assert len(sink.received) == 2


def test_outgoing_from_must_match_envelope(filtermail, sink):
    port = filtermail("outgoing")
    content = load_mail("encrypted.eml", f"mallory01@{DOMAIN}", RCPT)
    code, text = send(port, SENDER, [RCPT], content)
    # chatmail/relay's reply: its online tests look for "500"
    assert code == 500 and text.startswith("5.7.1 Invalid FROM")
    content = load_mail("encrypted.eml", SENDER.upper(), RCPT)
    assert send(port, SENDER, [RCPT], content)[0] == 250
    two_from = b"From: <x@y.org>\r\n" + load_mail("encrypted.eml", SENDER, RCPT)
    assert send(port, SENDER, [RCPT], two_from)[0] == 500
    evil = load_mail("encrypted.eml", SENDER, RCPT).replace(
        f"From: <{SENDER}>".encode(), b'From: "x\r\n 250 ok" <a\xff\x01@y.org>'
    )
    code, text = send(port, SENDER, [RCPT], evil)
    assert code == 500 and text.isprintable()
    assert len(sink.received) == 1


def test_outgoing_rate_limit_per_domain(filtermail, sink):
    port = filtermail(
        "outgoing",
        domains=[DOMAIN, OTHER],
        max_user_send_per_minute=60,
        max_user_send_burst_size=3,
        sections={OTHER: {"max_user_send_burst_size": 5, "max_user_send_per_minute": 1}},
    )
    other_sender = f"dave00001@{OTHER}"
    results = [
        send(port, SENDER, [RCPT], load_mail("encrypted.eml", SENDER, RCPT)) for _ in range(4)
    ]
    assert [code for code, _ in results] == [250, 250, 250, 450]
    assert results[3][1] == f"4.7.1: Too much mail from {SENDER}"
    # each sender has its own bucket, with its own domain's burst
    codes = [
        send(port, other_sender, [RCPT], load_mail("encrypted.eml", other_sender, RCPT))[0]
        for _ in range(6)
    ]
    assert codes == [250] * 5 + [450]
    assert len(sink.received) == 8


def test_outgoing_passthrough_per_domain(filtermail, sink):
    port = filtermail(
        "outgoing",
        domains=[DOMAIN, OTHER],
        sections={
            DOMAIN: {"passthrough_senders": SENDER, "passthrough_recipients": "@nowhere.org"},
        },
    )
    plain = load_mail("plain.eml", SENDER, RCPT)
    assert send(port, SENDER, [RCPT], plain)[0] == 250
    # the same local part in the other domain is not a passthrough sender
    other_sender = f"alice0001@{OTHER}"
    other_plain = load_mail("plain.eml", other_sender, RCPT)
    assert send(port, other_sender, [RCPT], other_plain)[0] == 523
    # no default passthrough recipient (chatmail/relay dropped echo@<domain>)
    echo = f"echo@{OTHER}"
    assert send(port, other_sender, [echo], other_plain)[0] == 523
    # passthrough recipients of a domain apply only when ALL recipients match
    carol = f"carol0001@{DOMAIN}"
    carol_plain = load_mail("plain.eml", carol, RCPT)
    assert send(port, carol, ["a@nowhere.org", "b@nowhere.org"], carol_plain)[0] == 250
    assert send(port, carol, ["a@nowhere.org", RCPT], carol_plain)[0] == 523
    assert send(port, carol, [f"echo@{DOMAIN}"], carol_plain)[0] == 523
    assert len(sink.received) == 2


def test_outgoing_dot_lines_long_lines_and_8bit_survive(filtermail, sink):
    port = filtermail("outgoing", passthrough_recipients=f"echo@{DOMAIN}")
    echo = f"echo@{DOMAIN}"
    content = load_mail("plain.eml", SENDER, echo) + (
        ".leading dot\r\n..two dots\r\n.\r\nzwölf Boxkämpfer\r\n".encode()
        + b"long " * 1000
        + b"\r\n"
    )
    assert send(port, SENDER, [echo], content)[0] == 250
    assert sink.received[0][2] == content


def test_outgoing_size_limit(filtermail, sink):
    port = filtermail("outgoing", max_message_size=20000)
    small = load_mail("encrypted.eml", SENDER, RCPT)
    assert send(port, SENDER, [RCPT], small)[0] == 250
    big = b"X-Padding: x\r\n" + (b" " + b"x" * 98 + b"\r\n") * 300 + small
    code, _ = send(port, SENDER, [RCPT], big)
    assert code == 552
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo()
        assert client.esmtp_features["size"] == "20000"
        assert client.mail(SENDER, ["SIZE=30000"])[0] == 552
    assert len(sink.received) == 1


def test_outgoing_relays_reinjection_refusal(filtermail, sink):
    port = filtermail("outgoing")
    sink.refuse_rcpt[RCPT] = "550 5.1.1 no such user here"
    code, text = send(port, SENDER, [RCPT], load_mail("encrypted.eml", SENDER, RCPT))
    assert (code, text) == (550, "5.1.1 no such user here")


def test_outgoing_reinjection_connection_reused_and_renewed(filtermail, sink):
    port = filtermail("outgoing")
    content = load_mail("encrypted.eml", SENDER, RCPT)
    for _ in range(3):
        assert send(port, SENDER, [RCPT], content)[0] == 250
    assert len(sink.peers) == 1
    sink.refuse_rcpt[RCPT] = "550 5.1.1 no such user here"
    assert send(port, SENDER, [RCPT], content)[0] == 550
    del sink.refuse_rcpt[RCPT]
    assert send(port, SENDER, [RCPT], content)[0] == 250
    assert len(sink.peers) == 1
    # Postfix restarted: the cached connection is dead, a new one is used
    sink.restart()
    assert send(port, SENDER, [RCPT], content)[0] == 250
    assert len(sink.peers) == 2
    assert len(sink.received) == 5


def test_outgoing_reinjection_down_is_temporary(filtermail, sink, free_port):
    port = filtermail("outgoing", postfix_reinject_port=free_port())
    code, _ = send(port, SENDER, [RCPT], load_mail("encrypted.eml", SENDER, RCPT))
    assert code == 451


def test_stop_finishes_the_transaction_in_data(filtermail, sink):
    """SIGTERM (a stop, a reboot) while a message is being reinjected:
    filtermail exits only after its 250, so Postfix never refuses a message
    it has queued (the sender would send it again: a duplicate, found by
    tests/faults when the relay rebooted under load)."""
    port = filtermail("outgoing")
    sink.data_delay = 1.5
    result = {}
    content = load_mail("encrypted.eml", SENDER, RCPT)
    client = threading.Thread(target=lambda: result.update(r=send(port, SENDER, [RCPT], content)))
    client.start()
    deadline = time.monotonic() + 20
    while not sink.received and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sink.received, "the message did not reach the reinject stand-in"
    filtermail.proc.send_signal(signal.SIGTERM)
    client.join(30)
    assert result["r"][0] == 250, result
    assert filtermail.proc.wait(10) == 0
    assert len(sink.received) == 1


def test_outgoing_ignores_unknown_rcpt_parameters(filtermail, sink):
    port = filtermail("outgoing")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo()
        assert client.mail(SENDER)[0] == 250
        assert client.rcpt(RCPT, ["NOTIFY=SUCCESS,FAILURE", f"ORCPT=rfc822;{RCPT}"])[0] == 250
        assert client.data(load_mail("encrypted.eml", SENDER, RCPT))[0] == 250


GARBAGE = [
    b"\xff\xfe\x00garbage\x80\x81\r\n\r\n\xc3\x28\xa0\xa1",
    b"From: \xff\xfe\r\nContent-Type: multipart/encrypted; boundary=\r\n\r\n--\r\n\x00\x01",
    b'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted";'
    b' boundary="b"\r\nFrom: <' + SENDER.encode() + b">\r\n\r\n--b\r\nContent-Type: "
    b"application/pgp-encrypted\r\n\r\nVersion: 1\r\n--b\r\nContent-Type: "
    b"application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n\xe4\xf6\xfc==\r\n",
    b"",
]


@pytest.mark.parametrize("junk", GARBAGE)
def test_outgoing_malformed_then_good(filtermail, sink, junk):
    port = filtermail("outgoing")
    code, _ = send(port, SENDER, [RCPT], junk)
    assert 500 <= code < 600
    good = load_mail("encrypted.eml", SENDER, RCPT)
    assert send(port, SENDER, [RCPT], good)[0] == 250
    assert [c for _, _, c in sink.received] == [good]


# --- incoming ---

REMOTE = f"zoe000001@{OTHER}"
LOCAL = f"bob000001@{DOMAIN}"


def enforce_e2ee(tmp_path, addr):
    """Create the marker the way account creation does (conftest's ini path)."""
    from chatmaild.config import read_config

    userdir = read_config(tmp_path / "chatmail.ini").user_dir(addr)
    userdir.mkdir(parents=True, exist_ok=True)
    (userdir / "enforceE2EEincoming").touch()


def test_incoming_dkim_aligned_encrypted(filtermail, sink, dns_server, rsa_key):
    publish(dns_server, rsa_key, OTHER)
    port = filtermail("incoming")
    content = dkim_sign(load_mail("encrypted.eml", REMOTE, LOCAL), OTHER, rsa_key)
    assert send(port, REMOTE, [LOCAL], content)[0] == 250
    assert sink.received == [(REMOTE, [LOCAL], content)]


def test_incoming_dkim_failures(filtermail, sink, dns_server, rsa_key):
    publish(dns_server, rsa_key, OTHER)
    publish(dns_server, rsa_key, "example.net")
    publish(dns_server, rsa_key, "evil.example.org")
    port = filtermail("incoming")
    mail = load_mail("encrypted.eml", REMOTE, LOCAL)
    cases = {
        "missing": mail,
        "unaligned": dkim_sign(mail, "evil.example.org", rsa_key),
        "parent domain": dkim_sign(mail, "example.net", rsa_key),
        "no key in DNS": dkim_sign(mail, OTHER, rsa_key, selector="nokey"),
        "body changed": dkim_sign(mail, OTHER, rsa_key).replace(b"Version: 1", b"Version: 2"),
        "header changed": dkim_sign(mail, OTHER, rsa_key).replace(
            b"Subject: [...]", b"Subject: [..!]"
        ),
    }
    for why, content in cases.items():
        code, text = send(port, REMOTE, [LOCAL], content)
        assert code == 550, why
        assert text.startswith("5.7.1 DKIM"), why
    # one good signature among bad ones is enough
    both = dkim_sign(dkim_sign(mail, OTHER, rsa_key), "evil.example.org", rsa_key)
    assert send(port, REMOTE, [LOCAL], both)[0] == 250
    assert len(sink.received) == 1


def test_incoming_e2ee_marker(filtermail, sink, tmp_path):
    port = filtermail("incoming", filtermail_dkim_check=False)
    strict = f"strict001@{DOMAIN}"
    enforce_e2ee(tmp_path, strict)
    plain = load_mail("plain.eml", REMOTE, LOCAL)
    assert send(port, REMOTE, [LOCAL], plain)[0] == 250
    code, text = send(port, REMOTE, [LOCAL, strict], plain)
    assert code == 523 and text.startswith("Encryption Needed")
    assert send(port, REMOTE, [strict], load_mail("mdn.eml", REMOTE, strict))[0] == 523
    assert send(port, REMOTE, [strict.upper()], plain)[0] == 523
    for name in ["encrypted.eml", "armor-version.eml", "securejoin-vc.eml"]:
        assert send(port, REMOTE, [strict], load_mail(name, REMOTE, strict))[0] == 250, name
    for name in ["literal.eml", "fake-encrypted.eml", "securejoin-vc-fake.eml"]:
        assert send(port, REMOTE, [strict], load_mail(name, REMOTE, strict))[0] == 523, name
    assert len(sink.received) == 4


def test_incoming_bounce_passes_marker(filtermail, sink, tmp_path, dns_server, rsa_key):
    publish(dns_server, rsa_key, OTHER)
    port = filtermail("incoming")
    strict = f"strict001@{DOMAIN}"
    enforce_e2ee(tmp_path, strict)
    bounce = load_mail("mailer-daemon.eml", f"MAILER-DAEMON@{OTHER}", strict)
    signed = dkim_sign(bounce, OTHER, rsa_key)
    assert send(port, "", [strict], signed)[0] == 250
    # aiosmtpd (the sink) spells the null sender "<>"
    assert sink.received == [("<>", [strict], signed)]
    not_auto = signed.replace(b"Auto-Submitted: auto-replied", b"Auto-Submitted: no")
    assert send(port, "", [strict], dkim_sign(not_auto, OTHER, rsa_key))[0] == 523


def test_incoming_malformed_then_good(filtermail, sink, dns_server, rsa_key):
    publish(dns_server, rsa_key, OTHER)
    port = filtermail("incoming")
    good = dkim_sign(load_mail("encrypted.eml", REMOTE, LOCAL), OTHER, rsa_key)
    for junk in GARBAGE + [dkim_sign(GARBAGE[2], OTHER, rsa_key)[:-40]]:
        code, _ = send(port, REMOTE, [LOCAL], junk)
        assert 500 <= code < 600
        assert send(port, REMOTE, [LOCAL], good)[0] == 250
    assert len(sink.received) == len(GARBAGE) + 1


def send_xforward(port, mail_from, rcpts, content, xforward=None) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo()
        assert client.has_extn("xforward")
        if xforward:
            assert client.docmd("XFORWARD", xforward)[0] == 250
        assert client.mail(mail_from)[0] == 250
        for rcpt in rcpts:
            assert client.rcpt(rcpt)[0] == 250
        code, text = client.data(content)
        return code, text.decode()


def test_incoming_ip_literal_sender_must_be_the_client(filtermail, sink):
    """IP-only relays cannot DKIM-sign; Postfix's XFORWARD tells us who connected."""
    port = filtermail("incoming")
    ip_sender = "user00001@[192.0.2.7]"
    mail = load_mail("encrypted.eml", ip_sender, LOCAL)
    ok = send_xforward(port, ip_sender, [LOCAL], mail, "NAME=relay ADDR=192.0.2.7 PROTO=ESMTP")
    assert ok[0] == 250
    code, text = send_xforward(port, ip_sender, [LOCAL], mail, "ADDR=192.0.2.8")
    assert code == 550 and "not the client" in text
    assert send_xforward(port, ip_sender, [LOCAL], mail)[0] == 550
    v6_sender = "user00001@[IPv6:2001:db8::7]"
    v6_mail = load_mail("encrypted.eml", v6_sender, LOCAL)
    assert send_xforward(port, v6_sender, [LOCAL], v6_mail, "ADDR=IPV6:2001:DB8:0::7")[0] == 250
    # a domain sender still needs DKIM, whatever the client address
    assert (
        send_xforward(
            port, REMOTE, [LOCAL], mail.replace(b"[192.0.2.7]", OTHER.encode()), "ADDR=192.0.2.7"
        )[0]
        == 550
    )
    assert len(sink.received) == 2


def test_dns_server_from_environment(make_ini, start_daemon, free_port, sink, dns_server, rsa_key):
    publish(dns_server, rsa_key, OTHER)
    port = free_port()
    ini = make_ini(filtermail_smtp_port_incoming=port, postfix_reinject_port_incoming=sink.port)
    env = {"FILTERMAIL_DNS_SERVER": f"127.0.0.1:{dns_server.port}"}
    start_daemon(["filtermail", ini, "incoming"], port=port, env=env)
    content = dkim_sign(load_mail("encrypted.eml", REMOTE, LOCAL), OTHER, rsa_key)
    assert send(port, REMOTE, [LOCAL], content)[0] == 250


def test_config_error_exits_2(make_ini, tmp_path):
    ini = make_ini(filtermail_smtp_port="not-a-port")
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "filtermail"), str(ini), "outgoing"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "filtermail_smtp_port" in proc.stderr


# --- recipients are checked as the account they are delivered to ---


def send_raw(port, mail_from: bytes, rcpts: list[bytes], content: bytes) -> tuple[int, str]:
    """One SMTP transaction with recipients sent byte for byte (smtplib
    would re-quote them); the first refusal or the DATA reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        rfile = sock.makefile("rb")

        def reply():
            lines = []
            while True:
                line = rfile.readline()
                lines.append(line)
                if line[3:4] != b"-":
                    return int(line[:3]), line[4:].decode("ascii", "replace").strip()

        def cmd(line: bytes):
            sock.sendall(line + b"\r\n")
            return reply()

        reply()
        cmd(b"EHLO client.example.net")
        code, text = cmd(b"MAIL FROM:<" + mail_from + b"> SMTPUTF8")
        if code != 250:
            return code, text
        for rcpt in rcpts:
            code, text = cmd(b"RCPT TO:<" + rcpt + b">")
            if code != 250:
                return code, text
        code, text = cmd(b"DATA")
        if code != 354:
            return code, text
        body = content.replace(b"\r\n.", b"\r\n..")
        sock.sendall(body + (b"" if body.endswith(b"\r\n") else b"\r\n") + b".\r\n")
        return reply()


IP_DOMAIN = "192.0.2.7"
# Each spelling is delivered to the strict account (Postfix unquotes and
# strips routes, Dovecot lower-cases and cuts +detail) and must meet its
# enforceE2EEincoming marker: 523.
MAPPED_SPELLINGS = [
    b"strict001+x@" + DOMAIN.encode(),
    b"strict001+@" + DOMAIN.encode(),
    b"strict001+a+b@" + DOMAIN.encode(),
    b"STRICT001@" + DOMAIN.encode(),
    b"Strict001+Tag@" + DOMAIN.upper().encode(),
    b'"strict001"@' + DOMAIN.encode(),
    b'"strict\\001"@' + DOMAIN.encode(),
    b'"strict001+x"@' + DOMAIN.encode(),
    b"@relay.example.net:strict001@" + DOMAIN.encode(),
    b"@a.example,@b.example:strict001+q@" + DOMAIN.encode(),
    b"ipstrict1@[" + IP_DOMAIN.encode() + b"]",
    b"ipstrict1+x@[" + IP_DOMAIN.encode() + b"]",
    b"IPSTRICT1@[" + IP_DOMAIN.encode() + b"]",
]
# Spellings that could be rewritten by Postfix into an account other than
# the one a check would look at, or name no account at all: refused (5xx)
# before DATA.
REFUSED_SPELLINGS = [
    b"strict001%" + DOMAIN.encode() + b"@localhost",
    b"strict001%" + DOMAIN.encode() + b"@" + DOMAIN.encode(),
    DOMAIN.encode() + b"!strict001@localhost",
    b"strict001@localhost",
    b"strict001@[198.51.100.1]",
    b"strict001@" + DOMAIN.encode() + b"..",
    b"strict001@." + DOMAIN.encode(),
    b"strict001@[" + IP_DOMAIN.encode(),
    b"+x@" + DOMAIN.encode(),
    b".strict001@" + DOMAIN.encode(),
    b'"strict001 "@' + DOMAIN.encode(),
    # aiosmtpd itself refuses a trailing dot (the mapping is tested on
    # IncomingHandler.check below)
    b"strict001@" + DOMAIN.encode() + b".",
    b"STRICT001+x@" + DOMAIN.upper().encode() + b".",
    "strіct001@".encode() + DOMAIN.encode(),  # Cyrillic i
    b"strict001@xn--chat-9cd.example.org",
    "strict001@chаt.example.org".encode(),  # Cyrillic a
]


@pytest.mark.parametrize("rcpt", MAPPED_SPELLINGS, ids=lambda r: r.decode("utf-8", "replace"))
def test_incoming_marker_applies_to_every_spelling(filtermail, sink, tmp_path, rcpt):
    """Cleartext to victim+x@domain was accepted (the marker path was built
    from the raw recipient) and delivered into victim's INBOX."""
    port = filtermail("incoming", domains=[DOMAIN, IP_DOMAIN], filtermail_dkim_check=False)
    enforce_e2ee(tmp_path, f"strict001@{DOMAIN}")
    enforce_e2ee(tmp_path, f"ipstrict1@[{IP_DOMAIN}]")
    plain = load_mail("plain.eml", REMOTE, LOCAL)
    code, text = send_raw(port, REMOTE.encode(), [rcpt], plain)
    assert (code, text[:19]) == (523, "Encryption Needed: "), text
    # the same spelling of a lenient account still gets cleartext
    lenient = re.sub(rb"(?i)strict", b"lenient", rcpt)
    assert send_raw(port, REMOTE.encode(), [lenient], plain)[0] == 250
    encrypted = load_mail("encrypted.eml", REMOTE, LOCAL)
    assert send_raw(port, REMOTE.encode(), [rcpt], encrypted)[0] == 250
    assert [c for _, _, c in sink.received] == [plain, encrypted]


@pytest.mark.parametrize("rcpt", REFUSED_SPELLINGS, ids=lambda r: r.decode("utf-8", "replace"))
def test_incoming_refuses_rewritable_recipients(filtermail, sink, tmp_path, rcpt):
    port = filtermail("incoming", domains=[DOMAIN, IP_DOMAIN], filtermail_dkim_check=False)
    enforce_e2ee(tmp_path, f"strict001@{DOMAIN}")
    for name in ("plain.eml", "encrypted.eml"):
        code, text = send_raw(port, REMOTE.encode(), [rcpt], load_mail(name, REMOTE, LOCAL))
        assert 500 <= code < 600 and code != 523, (code, text)
        assert text.isprintable()
    assert sink.received == []


# --- nothing readable beside the ciphertext ---

PROSE = b"Dear friend, this is cleartext that must never leave the relay.\r\n"
NOTICE = b"This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)\r\n"
BOUNDARY_LINE = b"--xYzEncBoundary42\r\n"
CLOSE_LINE = b"--xYzEncBoundary42--\r\n"


def encrypted_with(old: bytes, new: bytes, sender=SENDER) -> bytes:
    content = load_mail("encrypted.eml", sender, RCPT)
    assert old in content, old
    return content.replace(old, new, 1)


CLEARTEXT_BESIDE_CIPHERTEXT = {
    "preamble 1 MB": (BOUNDARY_LINE, PROSE * 16000 + BOUNDARY_LINE),
    "preamble one line": (BOUNDARY_LINE, PROSE + BOUNDARY_LINE),
    "preamble after notice": (BOUNDARY_LINE, NOTICE + PROSE + BOUNDARY_LINE),
    "epilogue 1 MB": (CLOSE_LINE, CLOSE_LINE + PROSE * 16000),
    "epilogue one line": (CLOSE_LINE, CLOSE_LINE + b"\r\n" + PROSE),
    "part description prose": (
        b"Content-Description: OpenPGP encrypted message",
        b"Content-Description: " + PROSE.strip(),
    ),
    "extra part header": (
        b"Content-Type: application/pgp-encrypted\r\n",
        b"Content-Type: application/pgp-encrypted\r\nX-Note: " + PROSE,
    ),
    "folded prose in part header": (
        b'name="encrypted.asc"\r\n',
        b'name="encrypted.asc";\r\n x-note="' + PROSE.strip().replace(b",", b"") + b'"\r\n',
    ),
    "prose file name": (b'filename="encrypted.asc"', b'filename="dear-friend-call-me.asc"'),
    "control part extra line": (b"Version: 1\r\n", b"Version: 1\r\n" + PROSE),
    "part header block with prose line": (
        b"Content-Type: application/pgp-encrypted\r\n",
        b"Content-Type: application/pgp-encrypted\r\n" + PROSE,
    ),
    "base64 transfer encoding": (
        b"Content-Type: application/pgp-encrypted\r\n",
        b"Content-Type: application/pgp-encrypted\r\nContent-Transfer-Encoding: base64\r\n",
    ),
    "outer X- header": (b"MIME-Version: 1.0\r\n", b"MIME-Version: 1.0\r\nX-Leak: " + PROSE),
    "outer Comments": (b"MIME-Version: 1.0\r\n", b"MIME-Version: 1.0\r\nComments: " + PROSE),
    "outer Keywords": (b"MIME-Version: 1.0\r\n", b"MIME-Version: 1.0\r\nKeywords: " + PROSE),
    "cleartext subject": (b"Subject: [...]", b"Subject: " + PROSE.strip()),
    "display name letter": (b"To: <", b'To: "' + PROSE.strip() * 9 + b'" <'),
    "autocrypt ignorable attribute": (
        b"prefer-encrypt=mutual;",
        b"prefer-encrypt=mutual; _note=" + PROSE.strip().replace(b",", b"") + b";",
    ),
    "message-id prose": (b"Message-ID: <enc.", b"Message-ID: <" + b"dear-friend-" * 30),
}


@pytest.mark.parametrize("case", CLEARTEXT_BESIDE_CIPHERTEXT)
def test_outgoing_refuses_cleartext_beside_ciphertext(filtermail, sink, case):
    """A valid PGP/MIME message with ~1 MB of cleartext in the preamble or
    epilogue passed both the fast and the full path."""
    port = filtermail("outgoing")
    content = encrypted_with(*CLEARTEXT_BESIDE_CIPHERTEXT[case])
    code, text = send(port, SENDER, [RCPT], content)
    assert code == 523 and text.startswith("Encryption Needed"), text
    assert sink.received == []


def delta_chat_outer(sender, rcpt) -> bytes:
    """The outer headers of an encrypted message as Delta Chat core 2.x
    writes them (mimefactory: bare From, hidden recipients, [...] subject,
    Chat-Version, Chat-Is-Post-Message) after Postfix's proxy prepended
    its Received line."""
    content = load_mail("encrypted.eml", sender, rcpt)
    body = content[content.index(b"\r\n\r\n") :]
    head = (
        "Received: from [192.0.2.44] (unknown [192.0.2.44])\r\n"
        "\tby chat.example.org (Postfix) with ESMTPSA id 4XyZ1q2w3e\r\n"
        f"\tfor <{rcpt}>; Sun, 22 Nov 2026 04:00:01 +0000 (UTC)\r\n"
        f"From: <{sender}>\r\n"
        "Date: Thu, 19 Nov 2026 17:12:45 +0000\r\n"
        "Message-ID: <Mr.a1B2c3D4e5F.g6H7i8J9k0L@chat.example.org>\r\n"
        "MIME-Version: 1.0\r\n"
        "Chat-Version: 1.0\r\n"
        "Chat-Is-Post-Message: 1\r\n"
        "Subject: [...]\r\n"
        'To: "hidden-recipients": ;\r\n'
        'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted";\r\n'
        ' boundary="xYzEncBoundary42"'
    )
    return head.encode() + body


def thunderbird_style(sender, rcpt) -> bytes:
    content = load_mail("encrypted.eml", sender, rcpt)
    content = content.replace(
        b"MIME-Version: 1.0\r\n",
        b"MIME-Version: 1.0\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0)"
        b" Gecko/20100101 Thunderbird/128.5.0\r\nContent-Language: en-US\r\n",
    )
    content = content.replace(b"Subject: [...]", b"Subject: ...")
    content = content.replace(b"To: <", b"To: Bob Example <")
    return content.replace(BOUNDARY_LINE, NOTICE + b"\r\n" + BOUNDARY_LINE, 1)


def test_outgoing_accepts_what_clients_write(filtermail, sink):
    port = filtermail("outgoing")
    samples = [
        delta_chat_outer(SENDER, RCPT),
        thunderbird_style(SENDER, RCPT),
        encrypted_with(CLOSE_LINE, CLOSE_LINE + b"\r\n \r\n"),  # blank epilogue
        encrypted_with(BOUNDARY_LINE, b"\r\n\t\r\n" + BOUNDARY_LINE),  # blank preamble
        encrypted_with(b"[...]", b"[...]").replace(
            b"Date: ", b"In-Reply-To: <a@b.c>\r\nReferences: <x@y.z> <a@b.c>\r\nDate: "
        ),
    ]
    for content in samples:
        code, text = send(port, SENDER, [RCPT], content)
        assert code == 250, (text, content[:600])
    assert [c for _, _, c in sink.received] == samples


def test_incoming_refuses_cleartext_beside_ciphertext(filtermail, sink, tmp_path):
    port = filtermail("incoming", filtermail_dkim_check=False)
    strict = f"strict001@{DOMAIN}"
    enforce_e2ee(tmp_path, strict)
    for case in ["preamble 1 MB", "epilogue one line", "part description prose"]:
        old, new = CLEARTEXT_BESIDE_CIPHERTEXT[case]
        content = load_mail("encrypted.eml", REMOTE, strict).replace(old, new, 1)
        assert send(port, REMOTE, [strict], content)[0] == 523, case
    # armour headers (allowed on incoming mail) are bounded
    armored = load_mail("armor-version.eml", REMOTE, strict)
    assert send(port, REMOTE, [strict], armored)[0] == 250
    for chatty in [
        b"Comment: " + PROSE.strip() * 3 + b"\r\n",
        b"Version: GnuPG v2\r\n" * 2 + b"Comment: x\r\n" * 3,
        b"X-Note: " + PROSE,
    ]:
        content = armored.replace(b"Version: GnuPG v2\r\n", chatty)
        assert send(port, REMOTE, [strict], content)[0] == 523, chatty
    assert len(sink.received) == 1


# --- delivery reports: exactly as wide as real ones ---

DAEMON = f"MAILER-DAEMON@{OTHER}"
SPAM = b"Cheap watches! Visit our shop, this text is cleartext spam.\r\n"


def postfix_dsn(to_addr) -> bytes:
    """A bounce generated by a real Postfix 3.7 (a private instance on this
    machine bounced an encrypted sample; see docs/security-chatmaild.md)."""
    return load_mail("postfix-dsn.eml", DAEMON, to_addr)


def postfix_headers_only(to_addr) -> bytes:
    dsn = postfix_dsn(to_addr)
    end = dsn.index(b"\r\n\r\n", dsn.index(b"Return-Path:"))
    head = dsn[: end + 2].replace(b"message/rfc822", b"text/rfc822-headers")
    return head + b"\r\n--4844B216245.1796435565/" + OTHER.encode() + b"--\r\n"


def test_incoming_real_reports_reach_strict_accounts(
    filtermail, sink, tmp_path, dns_server, rsa_key
):
    publish(dns_server, rsa_key, OTHER)
    port = filtermail("incoming")
    strict = f"strict001@{DOMAIN}"
    enforce_e2ee(tmp_path, strict)
    reports = [
        dkim_sign(postfix_dsn(strict), OTHER, rsa_key),
        dkim_sign(load_mail("mailer-daemon.eml", DAEMON, strict), OTHER, rsa_key),
        # Postfix returns headers only for big messages
        dkim_sign(postfix_headers_only(strict), OTHER, rsa_key),
    ]
    for report in reports:
        code, text = send(port, "", [strict], report)
        assert code == 250, text
    assert [c for _, _, c in sink.received] == reports


def fake_bounces(strict):
    dsn = postfix_dsn(strict)
    boundary = b"--4844B216245.1796435565/" + OTHER.encode()
    returned_body = b"\r\n--xYzEncBoundary42\r\nContent-Description: PGP/MIME version"
    return {
        "the sender's domain's own spam text": dsn.replace(
            b"The mail system\r\n", b"The mail system\r\n" + SPAM * 200
        ),
        "an extra part": dsn.replace(
            boundary + b"--",
            boundary
            + b"\r\nContent-Type: text/html\r\n\r\n<b>"
            + SPAM
            + b"</b>\r\n"
            + boundary
            + b"--",
        ),
        "no report-type": dsn.replace(b" report-type=delivery-status;", b""),
        "other report-type": dsn.replace(b"report-type=delivery-status", b"report-type=spam"),
        "prose in the report": dsn.replace(b"Action: failed\r\n", b"Action: failed\r\n\r\n" + SPAM),
        "report without Reporting-MTA": dsn.replace(b"Reporting-MTA:", b"Reporting-Spam:"),
        "prose field in the report": dsn.replace(b"Action: failed", b"Action: " + SPAM.strip()),
        "returned cleartext": dsn.replace(
            b"multipart/encrypted; protocol", b"multipart/mixed; protocol"
        ).replace(b"Version: 1\r\n", SPAM),
        "returned prose header": dsn.replace(
            b"Return-Path:", b"X-Offer: " + SPAM + b"Return-Path:"
        ),
        "returned text part": dsn.replace(
            b"Content-Type: multipart/encrypted; protocol",
            b"Content-Type: text/plain\r\nX-Old-Content-Type: multipart/encrypted; protocol",
        ).replace(returned_body, b"\r\n" + SPAM + returned_body),
        "not from mailer-daemon": dsn.replace(DAEMON.encode(), f"postmaster@{OTHER}".encode()),
        "no Auto-Submitted": dsn.replace(b"Auto-Submitted: auto-replied", b"Auto-Submitted: no"),
        "huge": dsn.replace(b"Content-Description: Notification", b"Content-Description: x")
        + b"\r\n" * (3 * 1024 * 1024),
    }


@pytest.mark.parametrize("case", list(fake_bounces("x@y.z")))
def test_incoming_fake_bounces_do_not_bring_cleartext(filtermail, sink, tmp_path, case):
    """Any domain with a DKIM key could send From: MAILER-DAEMON@its.domain,
    Auto-Submitted, multipart/report with a spam text part, and it reached
    an account enforcing E2EE."""
    port = filtermail("incoming", filtermail_dkim_check=False, max_message_size=8 * 1024 * 1024)
    strict = f"strict001@{DOMAIN}"
    enforce_e2ee(tmp_path, strict)
    content = fake_bounces(strict)[case]
    assert content != postfix_dsn(strict)
    code, text = send(port, "", [strict], content)
    assert code == 523, text
    # a real report with a non-null envelope sender is no report either
    assert send(port, DAEMON, [strict], postfix_dsn(strict))[0] == 523
    assert sink.received == []


# --- DKIM: bounded work, and slow DNS holds up nobody else ---

SLOW = "slow.example.net"


def slow_mail(rsa_key, selectors) -> bytes:
    mail = load_mail("encrypted.eml", f"zoe000001@{SLOW}", LOCAL)
    for selector in selectors:
        mail = dkim_sign(mail, SLOW, rsa_key, selector=selector)
    return mail


def test_incoming_slow_dns_does_not_delay_other_mail(filtermail, sink, dns_server, rsa_key):
    """Every DKIM-Signature was tried with up to ~5 s of DNS wait each on a
    pool of 4 threads: four mails with 3 signatures each delayed a normal
    mail from 0.02 s to 15 s."""
    publish(dns_server, rsa_key, OTHER)
    for selector in ("s1", "s2", "s3"):
        publish(dns_server, rsa_key, SLOW, selector=selector)
        dns_server.delays[f"{selector}._domainkey.{SLOW}."] = 3.0
    port = filtermail("incoming")
    slow = slow_mail(rsa_key, ["s1", "s2", "s3"])
    results = []

    def send_slow():
        started = time.monotonic()
        code = send(port, f"zoe000001@{SLOW}", [LOCAL], slow)[0]
        results.append((code, time.monotonic() - started))

    threads = [threading.Thread(target=send_slow) for _ in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while dns_server.queries.count(f"s1._domainkey.{SLOW}.") < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    normal = dkim_sign(load_mail("encrypted.eml", REMOTE, LOCAL), OTHER, rsa_key)
    started = time.monotonic()
    assert send(port, REMOTE, [LOCAL], normal)[0] == 250
    elapsed = time.monotonic() - started
    for t in threads:
        t.join(60)
    assert elapsed < 1.0, f"a normal mail waited {elapsed:.2f}s behind slow DNS"
    # the slow ones pass too: their three lookups ran at once, not one by one
    assert [code for code, _ in results] == [250] * 4
    assert max(t for _, t in results) < 6.0, results


def test_incoming_dkim_dns_budget_per_message(filtermail, sink, dns_server, rsa_key):
    for selector in ("s1", "s2", "s3"):
        publish(dns_server, rsa_key, SLOW, selector=selector)
        dns_server.delays[f"{selector}._domainkey.{SLOW}."] = 30.0
    port = filtermail("incoming", filtermail_dkim_dns_budget=1.5)
    started = time.monotonic()
    code, text = send(port, f"zoe000001@{SLOW}", [LOCAL], slow_mail(rsa_key, ["s1", "s2", "s3"]))
    elapsed = time.monotonic() - started
    assert code == 451 and "timed out" in text, text
    assert elapsed < 4.0, elapsed
    assert sink.received == []


def test_incoming_only_aligned_signatures_cost_anything(filtermail, sink, dns_server, rsa_key):
    """~30 signatures exceeded Postfix's proxy timeout: each one was looked up."""
    publish(dns_server, rsa_key, OTHER)
    for i in range(30):
        dns_server.delays[f"x{i}._domainkey.{SLOW}."] = 5.0
    port = filtermail("incoming")
    mail = load_mail("encrypted.eml", REMOTE, LOCAL)
    for i in range(30):
        mail = dkim_sign(mail, SLOW, rsa_key, selector=f"x{i}")
    mail = dkim_sign(mail, OTHER, rsa_key)
    started = time.monotonic()
    assert send(port, REMOTE, [LOCAL], mail)[0] == 250
    assert time.monotonic() - started < 2.0
    assert not [q for q in dns_server.queries if SLOW in q]
    # more than three aligned signatures: only the first three are tried
    publish(dns_server, rsa_key, OTHER, selector="good")
    many = load_mail("encrypted.eml", REMOTE, LOCAL)
    many = dkim_sign(many, OTHER, rsa_key, selector="good")
    for i in range(5):
        many = dkim_sign(many, OTHER, rsa_key, selector=f"bad{i}")
    dns_server.queries.clear()
    code, text = send(port, REMOTE, [LOCAL], many)
    assert code == 550 and "DKIM" in text
    assert len([q for q in dns_server.queries if "._domainkey." in q]) == 3


def test_incoming_dkim_body_length_limit_refused(filtermail, sink, dns_server, rsa_key):
    """l= leaves whatever follows the signed length unsigned: cleartext
    appended to a signed encrypted body would pass."""
    publish(dns_server, rsa_key, OTHER)
    port = filtermail("incoming")
    mail = load_mail("encrypted.eml", REMOTE, LOCAL)
    with_l = dkim_sign(mail, OTHER, rsa_key, length=True)
    assert b" l=" in with_l or b";l=" in with_l or b"l=" in with_l.split(b"\r\n\r\n")[0]
    code, text = send(port, REMOTE, [LOCAL], with_l)
    assert code == 550 and "DKIM" in text, text
    appended = with_l + b"\r\nHello, cleartext after the signed length.\r\n"
    assert send(port, REMOTE, [LOCAL], appended)[0] == 550
    # a second signature without l= still counts
    assert send(port, REMOTE, [LOCAL], dkim_sign(with_l, OTHER, rsa_key))[0] == 250
    assert len(sink.received) == 1
