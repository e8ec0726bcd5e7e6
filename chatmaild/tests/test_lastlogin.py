"""lastlogin: the real console script, fed what Dovecot's last_login plugin sends."""

import os
import time

import pytest
from chatmaild.config import read_config
from chatmaild.user import User, day_start, encrypt_password

DOMAIN = "chat.example.org"


@pytest.fixture
def lastlogin(chatmail_ini, start_daemon, socket_path, dict_client):
    path = socket_path("lastlogin.socket")
    start_daemon(["lastlogin", chatmail_ini, path], socket=path)
    config = read_config(chatmail_ini)

    class Env:
        def account(self, addr):
            user = User(config, addr)
            user.create(encrypt_password("123456789"))
            return user

        def client(self, user=""):
            return dict_client(path, user=user, dict_name="lastlogin")

    return Env()


def record_login(client, tid, addr, timestamp=None, commit="C"):
    """B/S/C exactly like the last_login plugin with last_login_precision=s."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    return client.transaction(
        tid, [("S", f"shared/last-login/{addr}", str(timestamp))], user=addr, commit=commit
    )


def test_login_sets_day_precision_mtime(lastlogin):
    addr = "abcdefghi@" + DOMAIN
    user = lastlogin.account(addr)
    old = day_start(time.time()) - 10 * 86400 + 1234
    os.utime(user.password_path, (old, old))

    client = lastlogin.client(addr)
    assert record_login(client, "1", addr) == "O1"
    mtime = user.password_path.stat().st_mtime
    assert mtime == day_start(time.time())
    assert mtime % 86400 == 0
    # the password itself is untouched
    assert user.read_password().startswith("{SHA512-CRYPT}$6$")
    # readable through the dict as well
    assert client.lookup(f"shared/last-login/{addr}") == ("O", str(int(mtime)))


def test_file_untouched_when_day_unchanged(lastlogin):
    addr = "samedayyy@" + DOMAIN
    user = lastlogin.account(addr)
    client = lastlogin.client(addr)
    assert record_login(client, "1", addr) == "O1"
    ctime = user.password_path.stat().st_ctime_ns
    time.sleep(0.05)
    assert record_login(client, "2", addr, commit="D") == "AO2"
    # no utime call: ctime would have changed
    assert user.password_path.stat().st_ctime_ns == ctime


def test_unknown_and_foreign_accounts(lastlogin, tmp_path):
    client = lastlogin.client()
    assert record_login(client, "1", "nobodyyyy@" + DOMAIN) == "F1"
    assert record_login(client, "2", "someone12@other.example.org") == "F2"
    assert record_login(client, "3", f"../../etc@{DOMAIN}") == "F3"
    assert client.transaction("4", [("S", "shared/other-key", "1")]) == "F4"
    assert not (tmp_path / "mailboxes" / DOMAIN).exists() or not any(
        (tmp_path / "mailboxes" / DOMAIN).iterdir()
    )
    # still serving
    addr = "afterward@" + DOMAIN
    lastlogin.account(addr)
    assert record_login(client, "5", addr) == "O5"


def test_garbage_keeps_serving(lastlogin):
    addr = "garbage12@" + DOMAIN
    lastlogin.account(addr)
    client = lastlogin.client(addr)
    for line in [b"S1\tno-transaction", b"Zzz", b"B\xff", b"S\t\t", b"A1\tx\ty"]:
        client.send_line(line)
    client.send_line(b"C99")
    assert client.read_line() == "F99"
    assert record_login(client, "1", addr) == "O1"
