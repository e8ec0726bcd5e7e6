"""chatmail-metadata as a real daemon on a unix socket, spoken to with the
dict protocol lines Dovecot 2.3 sends for IMAP METADATA."""

import base64
import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
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


# A dict client in a process whose name is "lmtp", like Dovecot's LMTP
# service that reports deliveries (metadata checks the name of the process
# at the other end of the socket).
DELIVERY_CLIENT = r"""
import socket, sys
path, user, tid, key, value = sys.argv[1:6]
def esc(t):
    return (t.replace("\001", "\0011").replace("\t", "\001t")
            .replace("\r", "\001r").replace("\n", "\001n"))
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(30)
s.connect(path)
s.sendall((f"H3\t2\t0\t{esc(user)}\tmetadata\n"
           f"B{tid}\t{esc(user)}\nS{tid}\t{esc(key)}\t{esc(value)}\nC{tid}\n").encode())
print(s.makefile("rb").readline().decode().strip())
"""


def run_as_process(name, tmp_path, *args) -> str:
    """Run DELIVERY_CLIENT with ``args`` in a Python whose process name
    (``/proc/<pid>/comm``) is ``name``: the kernel takes it from the file
    name executed, here a symlink to the interpreter."""
    exe = tmp_path / "procs" / name
    if not exe.exists():
        exe.parent.mkdir(exist_ok=True)
        exe.symlink_to(os.path.realpath(sys.executable))
    proc = subprocess.run(
        [str(exe), "-I", "-c", DELIVERY_CLIENT, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


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

    def message_new(self, addr=ADDR, tid=7, value="", process="lmtp"):
        """A delivery's messagenew, sent from a process named ``process``."""
        return run_as_process(process, self.tmp_path, self.sock, addr, tid, MESSAGENEW_KEY, value)

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


def test_irohrelay_and_appversions(metadata):
    iroh = "https://iroh.other.example.net"
    d = metadata.start(domains=[DOMAIN, OTHER], sections={OTHER: {"iroh_relay": iroh}})
    # iroh_relay is per domain: advertised only to the domain that names one
    assert d.client.lookup(vendor_key("irohrelay"), user=f"bobby1234@{OTHER}") == ("O", iroh)
    assert d.client.lookup(vendor_key("irohrelay"), user=ADDR) == ("N", "")
    # appversions: the packaged list of client releases, one line of JSON
    for key in (vendor_key("appversions"), vendor_key("appversions", server=False)):
        status, value = d.client.lookup(key, user=ADDR)
        assert status == "O" and "\n" not in value
        client = json.loads(value)["clients"][0]
        assert client["clientId"] == "deltachat"
        assert {"sourceId", "versionInteger", "versionString", "downloadUrl"} <= set(
            client["sources"][0]
        )


def test_read_appversions(tmp_path):
    from chatmaild.metadata import read_appversions

    assert read_appversions(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text("{not json")
    assert read_appversions(tmp_path / "bad.json") is None
    (tmp_path / "ok.json").write_text('{\n  "a": [1, 2]\n}\n')
    assert read_appversions(tmp_path / "ok.json") == '{"a":[1,2]}'


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


def queue_files(tmp_path):
    queue = tmp_path / "state" / "pending_notifications"
    return [p for p in queue.iterdir() if not p.name.endswith(".tmp")] if queue.exists() else []


def test_tokens_per_account_are_bounded(metadata, tmp_path):
    """An IMAP user stored 300 device tokens; each delivery then queued 300
    pushes."""
    from chatmaild.metadata import MAX_TOKEN_LENGTH, MAX_TOKENS

    acc = make_account(tmp_path)
    d = metadata.start()
    for i in range(300):
        assert d.set_token(f"tok-{i:03d}", tid=i + 1) == f"O{i + 1}"
    tokens = d.tokens()
    assert len(tokens) == MAX_TOKENS
    # the newest stay (tokens set within one second tie: all are recent)
    assert "tok-299" in tokens
    stored = json.loads((acc / "metadata.json").read_text())["devicetoken"]
    assert len(stored) == MAX_TOKENS
    assert d.set_token("x" * (MAX_TOKEN_LENGTH + 1), tid=400) == "F400"
    assert d.set_token("bad\x01token", tid=401) == "F401"
    assert len(d.tokens()) == MAX_TOKENS


def test_messagenew_only_from_deliveries(metadata, tmp_path):
    """Three SETMETADATA /private/messagenew without any delivery queued 900
    push files: an IMAP client could make the relay push at will."""
    make_account(tmp_path)
    d = metadata.start()
    for i in range(3):
        assert d.set_token(f"tok-{i}", tid=i + 1) == f"O{i + 1}"
    # the test process itself, and a process named like an IMAP session
    assert d.client.transaction(10, [("S", MESSAGENEW_KEY, "")], user=ADDR) == "F10"
    assert d.message_new(tid=11, process="imap") == "F11"
    assert d.message_new(tid=12, process="lmtpx") == "F12"
    time.sleep(0.3)
    assert queue_files(tmp_path) == []
    assert "refusing messagenew" in d.log()
    assert d.message_new(tid=13, process="lmtp") == "O13"
    wait_for(lambda: len(queue_files(tmp_path)) == 3, timeout=10, what="3 queued pushes")


def test_push_queue_is_coalesced_and_bounded(metadata, tmp_path):
    """Deliveries to an account whose gateway is down: a waiting request per
    token covers later messages, and an account holds at most 32."""
    from chatmaild.notifier import Notifier

    make_account(tmp_path)
    d = metadata.start()  # the gateway (port 9) refuses: requests wait for retries
    for i in range(16):
        assert d.set_token(f"tok-{i:02d}", tid=i + 1) == f"O{i + 1}"
    for i in range(10):
        assert d.message_new(tid=100 + i) == f"O{100 + i}"
    time.sleep(0.5)
    held = len(queue_files(tmp_path))
    assert 16 <= held <= Notifier.max_per_account, held


LMTP_EXTRA = """
protocols = imap lmtp
service lmtp {{
  unix_listener lmtp {{
    mode = 0666
  }}
}}
protocol lmtp {{
  mail_plugins = $mail_plugins mail_lua notify push_notification push_notification_lua
}}
plugin {{
  push_notification_driver = lua:file={lua}
}}
"""


def test_real_dovecot_imap_cannot_push_lmtp_can(mail_sandbox, dovecot, start_daemon):
    """Dovecot itself as the client: SETMETADATA /private/messagenew from an
    IMAP session is refused and queues nothing; a delivery over LMTP (the
    relay's push_notification.lua) queues one push per device token."""
    import imaplib
    import shutil
    import smtplib
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    lua = mail_sandbox.base / "push_notification.lua"
    shutil.copy(repo / "salt/chatmail/dovecot/files/push_notification.lua.jinja", lua)
    lua.chmod(0o644)
    ini = mail_sandbox.write_ini(push_notification_url="http://127.0.0.1:9/notify")
    auth = mail_sandbox.socket("auth.socket")
    meta = mail_sandbox.socket("metadata.socket")
    argv = mail_sandbox.argv
    start_daemon([*argv("doveauth"), ini, auth], socket=auth, **mail_sandbox.popen)
    proc = start_daemon([*argv("metadata"), ini, meta], socket=meta, **mail_sandbox.popen)
    dc = dovecot(auth, metadata_socket=meta, extra=LMTP_EXTRA.format(lua=lua))
    addr = "pushuser1@" + DOMAIN
    queue = mail_sandbox.base / "state" / "pending_notifications"

    def queued():
        return [p for p in queue.iterdir() if not p.name.endswith(".tmp")] if queue.exists() else []

    imaplib.Commands.setdefault("SETMETADATA", ("AUTH", "SELECTED"))
    conn = imaplib.IMAP4("127.0.0.1", dc.port, timeout=30)
    conn.login(addr, "123456789")
    typ, data = conn._simple_command("SETMETADATA", "INBOX", '(/private/devicetoken "tok-one")')
    assert typ == "OK", (data, dc.log.read_text())
    typ, data = conn._simple_command("SETMETADATA", "INBOX", '(/private/messagenew "")')
    assert typ != "OK", data
    time.sleep(0.5)
    assert queued() == []
    conn.logout()
    assert "refusing messagenew" in proc.logpath.read_text()

    lmtp = smtplib.LMTP(str(dc.conf.parent / "run" / "lmtp"), timeout=30)
    try:
        message = f"From: <zoe000001@other.example.net>\r\nTo: <{addr}>\r\n\r\nhi\r\n"
        assert lmtp.sendmail("zoe000001@other.example.net", [addr], message) == {}
    finally:
        lmtp.quit()
    wait_for(lambda: len(queued()) == 1, timeout=20, what="one push queued by the delivery")
    data = json.loads(queued()[0].read_text())
    assert (data["addr"], data["token"]) == (addr, "tok-one")
