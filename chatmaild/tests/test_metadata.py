"""chatmail-metadata as a real daemon on a unix socket, spoken to with the
dict protocol lines Dovecot 2.3 sends for IMAP METADATA."""

import base64
import hashlib
import hmac
import json
import os
import socket
import subprocess
import time

import pytest
from conftest import script_path

DOMAIN = "chat.example.org"
OTHER = "other.example.net"
ADDR = f"alice1234@{DOMAIN}"
GUID = "43f5f508a7ea0366dff30200c15250e3"
TOKEN_KEY = f"priv/{GUID}/devicetoken"
MESSAGENEW_KEY = f"priv/{GUID}/messagenew"
SERVER = "vendor/vendor.dovecot/pvt/server/"


def vendor_key(name, server=True):
    return f"shared/{GUID}/{SERVER if server else ''}vendor/deltachat/{name}"


def wait_for(cond, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = cond()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def make_account(tmp_path, addr=ADDR):
    acc = tmp_path / "mailboxes" / addr.split("@")[1] / addr
    acc.mkdir(parents=True, exist_ok=True)
    return acc


class MetadataDaemon:
    """Starts chatmail-metadata with a fresh ini and talks to it."""

    def __init__(self, make_ini, start_daemon, dict_client, tmp_path):
        self.make_ini = make_ini
        self.start_daemon = start_daemon
        self.dict_client = dict_client
        self.tmp_path = tmp_path

    def start(self, domains=None, sections=None, **params):
        params.setdefault("push_notification_url", "http://127.0.0.1:9/notify")
        self.ini = self.make_ini(domains=domains, sections=sections, **params)
        self.sock = self.tmp_path / "metadata.socket"
        self.proc = self.start_daemon(["chatmail-metadata", self.ini, self.sock], socket=self.sock)
        self.client = self.dict_client(self.sock, dict_name="metadata")
        return self

    def kill9(self):
        self.proc.kill()
        self.proc.wait(10)

    def set_token(self, token, addr=ADDR, tid=1):
        return self.client.transaction(tid, [("S", TOKEN_KEY, token)], user=addr)

    def tokens(self, addr=ADDR):
        status, value = self.client.lookup(TOKEN_KEY, user=addr)
        return value.split() if status == "O" else []

    def message_new(self, addr=ADDR, tid=7, value=""):
        return self.client.transaction(tid, [("S", MESSAGENEW_KEY, value)], user=addr)

    def log(self):
        return self.proc.logpath.read_text()


@pytest.fixture
def metadata(make_ini, start_daemon, dict_client, tmp_path):
    return MetadataDaemon(make_ini, start_daemon, dict_client, tmp_path)


def test_tokens_of_several_devices(metadata, tmp_path):
    acc = make_account(tmp_path)
    d = metadata.start()
    assert d.tokens() == []
    assert d.set_token("tok-phone") == "O1"
    assert d.set_token("tok-laptop", tid=2) == "O2"
    assert d.set_token("tok-phone", tid=3) == "O3"  # same device again: no duplicate
    assert sorted(d.tokens()) == ["tok-laptop", "tok-phone"]
    data = json.loads((acc / "metadata.json").read_text())
    assert set(data["devicetoken"]) == {"tok-laptop", "tok-phone"}
    assert not [p for p in acc.iterdir() if p.name.endswith(".tmp")]
    # unsetting is accepted but cannot tell devices apart: tokens stay
    assert d.client.transaction(4, [("U", TOKEN_KEY)], user=ADDR) == "O4"
    assert len(d.tokens()) == 2
    # another account sees none of them
    make_account(tmp_path, f"bobby1234@{DOMAIN}")
    assert d.tokens(f"bobby1234@{DOMAIN}") == []


def test_message_new_pushes_unless_self(metadata, tmp_path):
    """Only deliveries of other senders' mail queue a push; the account's
    Maildir is not touched (IMAP IDLE hears of new mail from Dovecot itself)."""
    acc = make_account(tmp_path)
    new = acc / "new"
    new.mkdir()
    queue = tmp_path / "state" / "pending_notifications"
    d = metadata.start()
    assert d.set_token("tok-phone") == "O1"

    before = new.stat().st_mtime_ns
    assert d.message_new(value="self") == "O7"
    assert not queue.exists() or list(queue.iterdir()) == []

    assert d.message_new(tid=8) == "O8"
    wait_for(lambda: queue.exists() and list(queue.iterdir()), timeout=10, what="queued push")
    assert new.stat().st_mtime_ns == before and list(new.iterdir()) == []

    # an address of no served domain: answered, nothing touched
    assert d.message_new(addr="mallory12@elsewhere.example", tid=9, value="self") == "O9"


def test_old_tokens_expire(metadata, tmp_path):
    acc = make_account(tmp_path)
    now = int(time.time())
    (acc / "metadata.json").write_text(
        json.dumps(
            {
                "devicetoken": {
                    "stale": now - 91 * 86400,
                    "recent": now - 89 * 86400,
                    "future": now + 86400,
                },
                "other": "kept",
            }
        )
    )
    d = metadata.start(push_token_expiry_days=90)
    assert d.tokens() == ["recent"]
    data = json.loads((acc / "metadata.json").read_text())
    assert data == {"devicetoken": {"recent": now - 89 * 86400}, "other": "kept"}


def test_old_list_format_is_read(metadata, tmp_path):
    acc = make_account(tmp_path)
    (acc / "metadata.json").write_text(json.dumps({"devicetoken": ["a1", "b2"]}))
    d = metadata.start()
    assert sorted(d.tokens()) == ["a1", "b2"]
    assert isinstance(json.loads((acc / "metadata.json").read_text())["devicetoken"], dict)


def test_vendor_values(metadata, tmp_path):
    secret = "s3cr3t-turn"
    d = metadata.start(
        domains=[DOMAIN, OTHER],
        max_smtp_recipients=77,
        sections={OTHER: {"turn_server": "turn.other.example.net", "turn_secret": secret}},
    )
    assert d.client.lookup(vendor_key("maxsmtprecipients"), user=ADDR) == ("O", "77")
    assert d.client.lookup(vendor_key("maxsmtprecipients", server=False), user="") == ("O", "77")
    assert d.client.lookup(vendor_key("turn"), user=ADDR) == ("N", "")
    assert d.client.lookup(vendor_key("nosuchthing"), user=ADDR) == ("N", "")

    status, value = d.client.lookup(vendor_key("turn"), user=f"bobby1234@{OTHER}")
    assert status == "O"
    host, port, user, password = value.split(":")
    assert (host, port) == ("turn.other.example.net", "3478")
    assert int(user) > time.time()
    expected = hmac.new(secret.encode(), user.encode(), hashlib.sha1).digest()
    assert base64.b64decode(password) == expected


def test_turn_port_from_config(metadata):
    d = metadata.start(turn_server="turn.chat.example.org:5349", turn_secret="x")
    status, value = d.client.lookup(vendor_key("turn"), user=ADDR)
    assert status == "O" and value.startswith("turn.chat.example.org:5349:")


def test_unknown_attributes_are_refused(metadata, tmp_path):
    acc = make_account(tmp_path)
    d = metadata.start()
    assert d.client.transaction(1, [("S", f"priv/{GUID}/comment", "hi")], user=ADDR) == "F1"
    assert d.client.lookup(f"priv/{GUID}/comment", user=ADDR) == ("N", "")
    # a foreign address cannot store anything
    assert d.set_token("x", addr="mallory@evil.example.com", tid=2) == "F2"
    assert d.set_token("../../etc", addr=f"../x@{DOMAIN}", tid=3) == "F3"
    # a token with whitespace would break the space separated answer
    assert d.set_token("a b", tid=4) == "F4"
    assert not (acc / "metadata.json").exists()


def test_malformed_lines_do_not_kill_the_daemon(metadata, tmp_path):
    make_account(tmp_path)
    d = metadata.start()
    c = d.client
    c.send_line("Xgarbage")
    c.send_line("")
    c.send_line("S99\tno\ttransaction")
    c.send_line("L")
    assert c.read_line() == "F"
    c.sock.sendall(b"L\xff\xfe\tbad utf8\n")
    assert c.read_line() == "F"
    c.send_line("C12345")
    assert c.read_line() == "F12345"
    c.send_line("I" + "x" * 10)
    assert c.read_line() == "F"
    assert d.set_token("still-works") == "O1"
    assert d.tokens() == ["still-works"]
    # a client that disconnects in the middle of a line
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(d.sock))
    s.sendall(b"H3\t2\t0\t\tmetadata\nB1\t" + ADDR.encode() + b"\nS1\tpriv/")
    s.close()
    assert d.tokens() == ["still-works"]
    assert d.proc.poll() is None


def test_config_order_and_errors(metadata, tmp_path, start_daemon, dict_client):
    ini = tmp_path / "bad.ini"
    ini.write_text("[params]\nmail_domain = x.example.org\npush_token_expiry_days = never\n")
    res = subprocess.run(
        [script_path("chatmail-metadata"), str(ini), str(tmp_path / "s.sock")],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=30,
    )
    assert res.returncode == 2
    assert "push_token_expiry_days" in res.stderr
    # CONFIG SOCKET order works as well as SOCKET CONFIG
    d = metadata.start()
    sock2 = tmp_path / "second.socket"
    start_daemon(["chatmail-metadata", d.ini, sock2], socket=sock2)
    assert dict_client(sock2).lookup(vendor_key("maxsmtprecipients"), user=ADDR)[0] == "O"
    assert os.path.exists(sock2)
