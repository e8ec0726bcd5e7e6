"""chatmaild.localaccount: the echobot's account, made on the relay with a
localpart shorter than first-login creation allows, then an ordinary account."""

import subprocess
import sys

from chatmaild.doveauth import AuthDictProxy, creation_refusal
from chatmaild.localaccount import ensure, matches
from chatmaild.user import User, encrypt_password

ADDR = "echo@chat.example.org"
SECRET = "k" * 32


def run(ini, addr, password, *flags):
    return subprocess.run(
        [sys.executable, "-m", "chatmaild.localaccount", *flags, str(ini), addr],
        input=password + "\n",
        capture_output=True,
        text=True,
    )


def test_created_then_ok_then_reset(config):
    # first login could not create it: the localpart is too short
    assert "localpart length 4" in creation_refusal(config, ADDR, SECRET)
    assert ensure(config, ADDR, SECRET) == "created"
    user = User(config, ADDR)
    assert matches(user.read_password(), SECRET)
    # like an account made by a first login: E2EE enforced for incoming mail
    assert user.enforce_e2ee_path.exists()
    assert (user.password_path.stat().st_mode & 0o777) == 0o600
    assert ensure(config, ADDR, SECRET) == "ok"
    assert ensure(config, ADDR, "n" * 32) == "reset"
    assert matches(user.read_password(), "n" * 32)
    assert not matches(user.read_password(), SECRET)
    # doveauth hands Dovecot the stored hash to check the login against
    passdb = AuthDictProxy(config).lookup_passdb(ADDR, "n" * 32)
    assert passdb == {"password": user.read_password()}


def test_matches_refuses_other_schemes():
    assert not matches(None, SECRET)
    assert not matches("{PLAIN}" + SECRET, SECRET)
    assert matches(encrypt_password(SECRET), SECRET)


def test_command(chatmail_ini):
    assert run(chatmail_ini, ADDR, SECRET, "--check").returncode == 1
    proc = run(chatmail_ini, ADDR, SECRET)
    assert proc.returncode == 0 and proc.stdout == f"{ADDR}: created\n", proc.stderr
    assert run(chatmail_ini, ADDR, SECRET, "--check").returncode == 0
    assert run(chatmail_ini, ADDR, SECRET).stdout == f"{ADDR}: ok\n"
    assert run(chatmail_ini, ADDR, "x" * 32, "--check").returncode == 1
    # refusals: a short password, an address of another relay
    assert run(chatmail_ini, ADDR, "short").returncode == 2
    assert run(chatmail_ini, "echo@other.example.org", SECRET).returncode == 2
