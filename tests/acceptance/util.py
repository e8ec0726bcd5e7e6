"""Client-side helpers of the acceptance suite (IMAP polling, METADATA, port 25, DKIM).

Connection helpers shared with the host tests come from tests.hosts.test_relay.
"""

import email
import http.client
import imaplib
import smtplib
import socket
import time
from pathlib import Path

import dkim
import dns.message
import dns.query
import dns.rdatatype

from tests.harness import GATEWAY
from tests.hosts.test_relay import (  # noqa: F401  (re-exported for the test modules)
    encrypted_message,
    imap_login,
    new_credentials,
    submit,
    tls_context,
)

# RFC 5464 commands, unknown to imaplib
for _name in ("GETMETADATA", "SETMETADATA"):
    imaplib.Commands.setdefault(_name, ("AUTH", "SELECTED"))

MAIL_DATA = Path(__file__).resolve().parents[2] / "chatmaild" / "tests" / "mail-data"
MAILBOXES = "/home/vmail/mail"


def sample(name, **fields):
    """A sample mail from chatmaild/tests/mail-data with {placeholders} filled in."""
    text = (MAIL_DATA / name).read_text()
    for key, value in fields.items():
        text = text.replace("{" + key + "}", value)
    return text


def account(relay):
    """A fresh account on relay (created by its first IMAP login)."""
    addr, password = new_credentials(relay.domain)
    imap_login(relay.ip, addr, password).logout()
    return addr, password


def user_dir(relay, addr):
    return f"{MAILBOXES}/{relay.domain}/{addr}"


def wait_messages(relay, addr, password, count=1, timeout=60, folder="INBOX"):
    """Poll the mailbox until it holds `count` messages; returns their raw bytes."""
    imap = imap_login(relay.ip, addr, password)
    try:
        deadline = time.monotonic() + timeout
        while True:
            imap.select(folder)
            _typ, data = imap.search(None, "ALL")
            nums = data[0].split()
            if len(nums) >= count or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        out = []
        for num in nums:
            _typ, fetched = imap.fetch(num, "(RFC822)")
            out.append(fetched[0][1])
        return out
    finally:
        imap.logout()


def parse(raw):
    return email.message_from_bytes(raw)


def imap_command(imap, name, args):
    """Run a command imaplib does not know; returns (typ, untagged data of that name)."""
    typ, data = imap._simple_command(name, args)
    untagged = imap._untagged_response(typ, data, "METADATA")[1]
    return typ, untagged


def set_metadata(imap, mailbox, entry, value):
    quoted = "NIL" if value is None else '"' + value + '"'
    return imap._simple_command("SETMETADATA", f"{mailbox} ({entry} {quoted})")


def get_metadata(imap, mailbox, entry):
    """The raw METADATA untagged responses for one entry (bytes, tuples flattened)."""
    typ, data = imap_command(imap, "GETMETADATA", f"{mailbox} {entry}")
    flat = []
    for item in data:
        if isinstance(item, tuple):
            flat.extend(item)
        elif item is not None:
            flat.append(item)
    return typ, b" ".join(flat).decode("utf-8", "replace")


def mx_session(relay, starttls=True, helo="client.test"):
    """An SMTP session to port 25 of relay (after STARTTLS unless told otherwise)."""
    smtp = smtplib.SMTP(relay.ip, 25, local_hostname=helo, timeout=30)
    smtp.ehlo()
    if starttls:
        smtp.starttls(context=tls_context())
        smtp.ehlo()
    return smtp


def dkim_private_key(relay, selector="opendkim"):
    return relay.host.exec("cat", f"/etc/dkimkeys/{relay.domain}.{selector}.private").stdout


def dkim_sign(message, domain, private_key, selector="opendkim"):
    """The message (str) with a DKIM-Signature by `private_key` prepended."""
    raw = message.replace("\r\n", "\n").replace("\n", "\r\n").encode()
    key = private_key.encode() if isinstance(private_key, str) else private_key
    sig = dkim.sign(
        raw,
        selector.encode(),
        domain.encode(),
        key,
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
    )
    return sig + raw


def nsd_txt(name):
    """TXT records of name as served by the harness nsd (bytes joined per record)."""
    query = dns.message.make_query(name, dns.rdatatype.TXT)
    answer = dns.query.udp(query, GATEWAY, timeout=5)
    out = []
    for rrset in answer.answer:
        for rdata in rrset:
            out.append(b"".join(rdata.strings))
    return out


def dkim_verify(raw):
    """Verify the DKIM signature of raw with keys from the harness nsd."""

    def dnsfunc(name, timeout=5):
        records = nsd_txt(name.decode().rstrip("."))
        return records[0] if records else b""

    return dkim.verify(raw, dnsfunc=dnsfunc)


def https(relay, method, path, host=None, body=None):
    """An HTTPS request to relay's IP with Host/SNI of `host`; returns (status, headers, body)."""
    host = host or relay.domain
    conn = http.client.HTTPConnection(relay.ip, 443, timeout=30)
    sock = socket.create_connection((relay.ip, 443), timeout=30)
    conn.sock = tls_context().wrap_socket(sock, server_hostname=host)
    try:
        conn.request(method, path, body=body, headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def login_fails(relay, addr, password):
    try:
        imap_login(relay.ip, addr, password).logout()
    except imaplib.IMAP4.error as exc:
        return str(exc)
    return None
