"""doveauth: the real console script on a unix socket, spoken to with the
exact lines Dovecot 2.3's dict passdb/userdb sends."""

import json
import os
import re
import stat
import subprocess
import sys
import threading
import warnings

import pytest
from hypothesis import given
from hypothesis import strategies as st

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt

DOMAIN = "chat.example.org"
HASH_RE = re.compile(r"^\{SHA512-CRYPT\}\$6\$[./0-9A-Za-z]{16}\$[./0-9A-Za-z]{86}$")


def percent_e(text):
    """Dovecot's %E modifier: backslash-escape backslash and both quotes."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("'", "\\'")


def passdb_key(addr, password):
    return f'shared/passdb/{percent_e(password)}"{percent_e(addr)}'


def login(client, addr, password):
    """What dovecot's passdb dict lookup sends; returns (code, parsed json)."""
    code, value = client.lookup(passdb_key(addr, password), user=addr)
    return code, (json.loads(value) if code == "O" else None)


def verify(password, field):
    assert HASH_RE.match(field), field
    stored = field[len("{SHA512-CRYPT}") :]
    return crypt.crypt(password, stored) == stored


@pytest.fixture
def doveauth(make_ini, start_daemon, socket_path, dict_client, tmp_path):
    """Start doveauth for an ini built from the given settings; returns an
    object with .client() and .ini."""

    class Runner:
        def start(self, **ini_args):
            self.ini = make_ini(**ini_args)
            self.path = socket_path(f"auth{id(self)}.socket")
            self.proc = start_daemon(["doveauth", self.ini, self.path], socket=self.path)
            return self

        def client(self, user=""):
            return dict_client(self.path, user=user, dict_name="auth")

        def user_dir(self, addr, domain=DOMAIN):
            return tmp_path / "mailboxes" / domain.strip("[]") / addr

    return Runner()


def test_first_login_creates_account(doveauth):
    client = doveauth.start().client()
    addr = "abcdefghi@" + DOMAIN
    code, reply = login(client, addr, "secret-password")
    assert code == "O"
    home = doveauth.user_dir(addr)
    assert set(reply) == {"password"}
    assert verify("secret-password", reply["password"])
    pwfile = home / "password"
    assert pwfile.read_text().strip() == reply["password"]
    assert stat.S_IMODE(pwfile.stat().st_mode) == 0o600
    assert (home / "enforceE2EEincoming").exists()
    assert not [p for p in home.iterdir() if p.name.endswith(".tmp")]


def test_repeat_and_wrong_password(doveauth):
    client = doveauth.start().client()
    addr = "repeat123@" + DOMAIN
    code, first = login(client, addr, "right-password")
    pwfile = doveauth.user_dir(addr) / "password"
    before = (pwfile.read_bytes(), pwfile.stat().st_mtime_ns, pwfile.stat().st_ino)

    code, again = login(client, addr, "right-password")
    assert code == "O" and again["password"] == first["password"]

    code, wrong = login(client, addr, "wrong-password")
    # dovecot gets the stored hash and rejects the wrong password itself
    assert code == "O" and wrong["password"] == first["password"]
    assert not verify("wrong-password", wrong["password"])
    after = (pwfile.read_bytes(), pwfile.stat().st_mtime_ns, pwfile.stat().st_ino)
    assert after == before


def test_userdb(doveauth):
    client = doveauth.start(max_mailbox_size="100M").client()
    addr = "userdb123@" + DOMAIN
    assert client.lookup(f"shared/userdb/{addr}", user=addr) == ("N", "")
    login(client, addr, "some-password")
    code, value = client.lookup(f"shared/userdb/{addr}", user=addr)
    assert code == "O"
    assert json.loads(value) == {
        "home": str(doveauth.user_dir(addr)),
        "quota_rule": "*:storage=100M",
    }


@pytest.mark.parametrize(
    "addr,password",
    [
        ("abcdefghi", "long-enough"),  # no @
        (f"abc@defghi@{DOMAIN}", "long-enough"),  # two @
        ("abcdefghi@other.example.org", "long-enough"),  # foreign domain
        (f"abcdefghi@{DOMAIN.upper()}", "long-enough"),  # not the served spelling
        (f"ABCDEFGHI@{DOMAIN}", "long-enough"),  # upper case
        (f"abcd+fghi@{DOMAIN}", "long-enough"),  # invalid character
        (f"abcd/fghi@{DOMAIN}", "long-enough"),  # path separator
        (f"..cdefghi@{DOMAIN}", "long-enough"),  # leading dot
        (f"abcdefgh@{DOMAIN}", "long-enough"),  # too short
        (f"abcdefghij@{DOMAIN}", "long-enough"),  # too long
        (f"abcdefghi@{DOMAIN}", "short"),  # password too short
        (f"abcdefghi@{DOMAIN}", "12345678"),  # one below password_min_length
        (f"abcdefghi@{DOMAIN}", "x" * 600),  # absurdly long password
        (f"abcdefghi@{DOMAIN}", "with\0nul-byte"),
    ],
)
def test_creation_policy_refusals(doveauth, tmp_path, addr, password):
    client = doveauth.start().client()
    assert login(client, addr, password) == ("N", None)
    assert not any((tmp_path / "mailboxes").rglob("password"))


def test_exact_length_and_allowed_characters(doveauth):
    client = doveauth.start().client()
    for localpart in ["a.b-c_d.9", "123456789", "abcdefghi"]:
        assert login(client, f"{localpart}@{DOMAIN}", "123456789")[0] == "O"


def test_per_domain_lengths(doveauth):
    other = "other.example.net"
    client = doveauth.start(
        domains=[DOMAIN, other],
        sections={other: {"username_min_length": 3, "username_max_length": 20}},
    ).client()
    assert login(client, "abc@" + other, "123456789")[0] == "O"
    assert login(client, "abc@" + DOMAIN, "123456789")[0] == "N"
    assert (doveauth.user_dir("abc@" + other, other) / "password").exists()


def test_kill_switch(doveauth, tmp_path):
    client = doveauth.start().client()
    existing = "existing1@" + DOMAIN
    assert login(client, existing, "123456789")[0] == "O"
    (tmp_path / "nocreate").touch()
    assert login(client, "newaccnt1@" + DOMAIN, "123456789") == ("N", None)
    assert not (tmp_path / "mailboxes" / DOMAIN / ("newaccnt1@" + DOMAIN)).exists()
    assert login(client, existing, "123456789")[0] == "O"
    (tmp_path / "nocreate").unlink()
    assert login(client, "newaccnt1@" + DOMAIN, "123456789")[0] == "O"


@pytest.mark.parametrize(
    "brake",
    [
        {"max_load_1m": "-1"},
        {"min_available_memory": "1000T"},
        {"min_free_disk_space": "1000T"},
    ],
)
def test_resource_brakes(doveauth, brake):
    from chatmaild.config import read_config
    from chatmaild.user import User, encrypt_password

    runner = doveauth.start(**brake)
    existing = "existing1@" + DOMAIN
    User(read_config(runner.ini), existing).create(encrypt_password("123456789"))
    client = runner.client()
    assert login(client, "brakeacct@" + DOMAIN, "123456789") == ("N", None)
    code, reply = login(client, existing, "123456789")
    assert code == "O" and verify("123456789", reply["password"])


def test_iterate_users_of_all_domains(doveauth):
    other = "other.example.net"
    client = doveauth.start(domains=[DOMAIN, other]).client()
    addrs = [f"user{i:05d}@{DOMAIN}" for i in range(3)] + [f"user{i:05d}@{other}" for i in range(2)]
    for addr in addrs:
        assert login(client, addr, "123456789")[0] == "O"
    # exactly what dovecot's dict userdb iteration sends (doveadm -A)
    rows = client.iterate("shared/userdb/", flags=1 | 8)
    assert sorted(key for key, _ in rows) == sorted(f"shared/userdb/{a}" for a in addrs)
    assert client.iterate("shared/somethingelse/") == []


def test_escaped_passwords(doveauth):
    client = doveauth.start().client()
    for i, password in enumerate(
        ["with\"quote\\and'more", "tab\there\nnewline", "ünïcödé-pässword"]
    ):
        addr = f"escaped{i:02d}@{DOMAIN}"
        code, reply = login(client, addr, password)
        assert code == "O"
        assert verify(password, reply["password"])
        assert login(client, addr, password)[1]["password"] == reply["password"]


def test_ip_domain(doveauth):
    client = doveauth.start(domains=["192.0.2.7"]).client()
    addr = "abcdefghi@[192.0.2.7]"
    code, reply = login(client, addr, "123456789")
    assert code == "O"
    assert (doveauth.user_dir(addr, "192.0.2.7") / "password").exists()
    assert login(client, "otheracct@192.0.2.7", "123456789") == ("N", None)
    rows = client.iterate("shared/userdb/")
    assert [key for key, _ in rows] == [f"shared/userdb/{addr}"]
    code, value = client.lookup(f"shared/userdb/{addr}", user=addr)
    assert code == "O" and json.loads(value)["home"].endswith("/192.0.2.7/" + addr)


def test_malformed_requests_keep_serving(doveauth):
    runner = doveauth.start()
    client = runner.client()
    for line in [
        b"Lshared/passdb/no-separator",
        b"Lshared/passdb/dangling\\",
        b'Lshared/passdb/a"b"c@' + DOMAIN.encode(),
        b"Lshared/whatever/x",
        b"Lprivate/passdb/x",
        b"L",
        b"L\xff\xfe",
        b"Lshared/passdb/" + b"x" * 100000,
    ]:
        client.send_line(line)
        assert client.read_line()[:1] in ("N", "F")
    for line in [b"Q???", b"", b"\x00\x01\x02", b"B", b"S1\tk\tv", b"Hbroken"]:
        client.send_line(line)
    assert login(client, "stillokay@" + DOMAIN, "123456789")[0] == "O"
    assert runner.proc.poll() is None


@pytest.mark.parametrize(
    "localpart",
    ["abcdefgh\n", "abcdefg\n\n", "abcdefgh\r", "abcdefgh\t", "abcdefgh\x00", "abcdefgh\x0b"],
)
def test_control_characters_never_create_an_account(doveauth, tmp_path, localpart):
    """A regex anchored with ``$`` matches before a trailing newline: the
    dict line ``abcdefgh\\n@domain`` (tab-escaped, so it arrives intact)
    created a directory with a newline in its name."""
    runner = doveauth.start()
    client = runner.client()
    addr = f"{localpart}@{DOMAIN}"
    assert login(client, addr, "long-enough-password") == ("N", None)
    assert client.lookup(f"shared/userdb/{addr}", user=addr) == ("N", "")
    assert list((tmp_path / "mailboxes").rglob("*")) == []
    assert login(client, "stillokay@" + DOMAIN, "123456789")[0] == "O"


def run_parallel(n, target):
    errors = []

    def wrap(i):
        try:
            target(i)
        except BaseException as exc:  # noqa: B036 - reported to the test
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]


def test_parallel_first_logins(doveauth, tmp_path):
    runner = doveauth.start()
    clients = [runner.client() for _ in range(100)]
    results = {}

    def first_login(i):
        addr = f"para{i:05d}@{DOMAIN}"
        code, reply = login(clients[i], addr, f"password-{i}")
        assert code == "O"
        results[addr] = reply["password"]

    run_parallel(100, first_login)
    assert len(results) == 100
    for addr, field in sorted(results.items()):
        pwfile = runner.user_dir(addr) / "password"
        assert pwfile.read_text() == field + "\n"
        assert verify(f"password-{int(addr[4:9])}", field)
    assert not list((tmp_path / "mailboxes").rglob("*.tmp"))


def test_parallel_logins_to_one_account(doveauth, tmp_path):
    runner = doveauth.start()
    clients = [runner.client() for _ in range(10)]
    addr = "samebox12@" + DOMAIN
    fields = []

    def same_login(i):
        code, reply = login(clients[i], addr, "shared-password")
        assert code == "O"
        fields.append(reply["password"])

    run_parallel(10, same_login)
    assert len(set(fields)) == 1
    assert verify("shared-password", fields[0])
    assert (runner.user_dir(addr) / "password").read_text() == fields[0] + "\n"
    assert not list((tmp_path / "mailboxes").rglob("*.tmp"))


def test_config_error_exits_2(make_ini, socket_path):
    ini = make_ini(max_mailbox_size="lots")
    proc = subprocess.run(
        ["doveauth", socket_path("x.socket"), ini],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PATH": os.path.dirname(sys.executable) + ":" + os.environ["PATH"]},
    )
    assert proc.returncode == 2
    assert "max_mailbox_size" in proc.stderr


def test_real_dovecot_imap_login(mail_sandbox, dovecot, start_daemon):
    """Dovecot 2.3 itself as the client: IMAP login creates the account,
    a wrong password fails, the quota comes from userdb, the last_login
    plugin records the day and ``doveadm user '*'`` iterates the accounts."""
    import imaplib
    import time

    from chatmaild.user import day_start

    ini = mail_sandbox.write_ini(max_mailbox_size="100M")
    auth = mail_sandbox.socket("auth.socket")
    lastlogin = mail_sandbox.socket("lastlogin.socket")
    argv = mail_sandbox.argv
    start_daemon([*argv("doveauth"), ini, auth], socket=auth, **mail_sandbox.popen)
    start_daemon([*argv("lastlogin"), ini, lastlogin], socket=lastlogin, **mail_sandbox.popen)
    dc = dovecot(auth, lastlogin_socket=lastlogin)
    addr = "imapuser1@" + DOMAIN

    def imap_login(password):
        conn = imaplib.IMAP4("127.0.0.1", dc.port, timeout=30)
        try:
            conn.login(addr, password)
        except imaplib.IMAP4.error:
            conn.shutdown()
            return None
        return conn

    conn = imap_login("first-password")
    assert conn is not None, dc.log.read_text()
    typ, data = conn.getquotaroot("INBOX")
    assert typ == "OK"
    assert b"(STORAGE 0 102400)" in b" ".join(d for d in data[1] if d), data
    conn.logout()

    pwfile = mail_sandbox.base / "mail" / DOMAIN / addr / "password"
    stored = pwfile.read_text()
    assert verify("first-password", stored.strip())
    # the last_login plugin commits asynchronously: wait for it
    deadline = time.monotonic() + 20
    while pwfile.stat().st_mtime != day_start(time.time()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pwfile.stat().st_mtime == day_start(time.time())

    assert imap_login("wrong-password") is None
    assert pwfile.read_text() == stored
    again = imap_login("first-password")
    assert again is not None
    again.logout()

    for bad in ["short@" + DOMAIN, "imapuser2@other.example.org"]:
        conn = imaplib.IMAP4("127.0.0.1", dc.port, timeout=30)
        with pytest.raises(imaplib.IMAP4.error):
            conn.login(bad, "first-password")
        conn.shutdown()

    users = dc.doveadm("user", "*")
    assert users.returncode == 0, users.stderr
    assert users.stdout.split() == [addr]
    info = dc.doveadm("user", addr)
    assert info.returncode == 0, info.stderr
    assert str(pwfile.parent) in info.stdout
    log = dc.log.read_text()
    assert "Error" not in log, log


def test_real_dovecot_multi_domain_and_ip(mail_sandbox, dovecot, start_daemon):
    """Per-domain quota and an IP-literal domain through Dovecot itself."""
    import imaplib

    ini = mail_sandbox.write_ini(
        domains=[DOMAIN, "192.0.2.7"], sections={"192.0.2.7": {"max_mailbox_size": "10M"}}
    )
    auth = mail_sandbox.socket("auth.socket")
    start_daemon([*mail_sandbox.argv("doveauth"), ini, auth], socket=auth, **mail_sandbox.popen)
    dc = dovecot(auth)
    ip_addr = "ipuser123@[192.0.2.7]"
    for addr, kib in [("domainusr@" + DOMAIN, 512000), (ip_addr, 10240)]:
        conn = imaplib.IMAP4("127.0.0.1", dc.port, timeout=30)
        conn.login(addr, "123456789")
        typ, data = conn.getquotaroot("INBOX")
        assert f"(STORAGE 0 {kib})".encode() in b" ".join(d for d in data[1] if d)
        conn.logout()
    users = dc.doveadm("user", "*")
    assert sorted(users.stdout.split()) == sorted(["domainusr@" + DOMAIN, ip_addr])
    assert (mail_sandbox.base / "mail" / "192.0.2.7" / ip_addr / "password").exists()


@given(st.text(), st.text())
def test_percent_e_key_roundtrip(password, addr):
    from chatmaild.doveauth import split_escaped

    assert split_escaped(f'{percent_e(password)}"{percent_e(addr)}') == [password, addr]


def test_syslimit_readers(tmp_path):
    from chatmaild.syslimits import disk_free, load_1m, mem_available

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  1000 kB\nMemAvailable:     2048 kB\n")
    assert mem_available(meminfo) == 2048 * 1024
    meminfo.write_text("garbage\n")
    assert mem_available(meminfo) is None
    assert mem_available(tmp_path / "absent") is None
    # a mailbox dir that does not exist yet is measured on its parent's fs
    assert disk_free(tmp_path / "not" / "yet") > 0
    assert load_1m() >= 0
