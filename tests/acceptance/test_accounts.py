"""Accounts and login (doveauth) on a live relay: ACCEPTANCE.md "Accounts and login"."""

import imaplib
import json
import smtplib
import socket
import ssl
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import CA_MODE, INI
from .util import (
    account,
    https,
    imap_login,
    login_fails,
    new_credentials,
    tls_context,
    user_dir,
)

pytestmark = [pytest.mark.hosts, pytest.mark.acceptance]


def password_file(relay, addr):
    proc = relay.host.exec("cat", f"{user_dir(relay, addr)}/password", check=False)
    return proc.stdout if proc.returncode == 0 else None


def test_first_imap_login_creates_and_password_sticks(relay1):
    addr, password = new_credentials(relay1.domain)
    assert password_file(relay1, addr) is None
    imap_login(relay1.ip, addr, password).logout()
    stored = password_file(relay1, addr)
    assert stored and stored.startswith("{SHA512-CRYPT}$6$")
    imap_login(relay1.ip, addr, password).logout()
    assert login_fails(relay1, addr, password + "wrong")
    assert password_file(relay1, addr) == stored


def test_first_smtp_login_creates(relay1):
    addr, password = new_credentials(relay1.domain)
    with smtplib.SMTP_SSL(relay1.ip, 465, context=tls_context(), timeout=30) as smtp:
        smtp.login(addr, password)
    assert password_file(relay1, addr)
    with smtplib.SMTP(relay1.ip, 587, timeout=30) as smtp:
        smtp.starttls(context=tls_context())
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.login(addr, password + "x")
    imap_login(relay1.ip, addr, password).logout()


def _bad_logins(domain):
    good_local, password = new_credentials(domain)
    local = good_local.split("@")[0]
    return {
        "two-at": (f"{local}@x@{domain}", password),
        "foreign-domain": (f"{local}@example.org", password),
        "other-relay-domain": (f"{local}@acc2.test", password),
        "bad-char": (f"{local[:-1]}+@{domain}", password),
        "too-short": (f"{local[:-1]}@{domain}", password),
        "too-long": (f"{local}a@{domain}", password),
        "short-password": (good_local, "12345678"),
    }


@pytest.mark.parametrize("case", sorted(_bad_logins("acc1.test")))
def test_creation_policy_refuses_without_leaking(relay1, case):
    addr, password = _bad_logins(relay1.domain)[case]
    error = login_fails(relay1, addr, password)
    assert error is not None
    # the same answer as for a wrong password: nothing says which rule failed
    known, known_pw = account(relay1)
    assert error == login_fails(relay1, known, known_pw + "wrong")
    ls = relay1.host.exec("ls", f"/home/vmail/mail/{relay1.domain}").stdout.split()
    assert addr not in ls


def test_kill_switch_blocks_creation_only(relay1):
    existing, existing_pw = account(relay1)
    relay1.host.exec("touch", "/etc/chatmail-nocreate")
    try:
        addr, password = new_credentials(relay1.domain)
        assert login_fails(relay1, addr, password)
        assert password_file(relay1, addr) is None
        imap_login(relay1.ip, existing, existing_pw).logout()
        # /new hands out no credentials that could not log in
        status, _headers, body = https(relay1, "POST", "/new")
        assert status == 503, body
        assert json.loads(body) == {"error": "account creation is disabled on this relay"}
    finally:
        relay1.host.exec("rm", "-f", "/etc/chatmail-nocreate")
    imap_login(relay1.ip, addr, password).logout()


# Resource limits: the relay's chatmail.ini is edited in the host (and restored)
# so that the host counts as short of that resource; doveauth is restarted to
# read it.
RESOURCE_LIMITS = {
    "max_load_1m": "0.0000001",
    "min_available_memory": "100000G",
    "min_free_disk_space": "100000G",
}


def restart_doveauth(relay, addr, password, timeout=30):
    """Restart doveauth and wait until a login through it works again (dovecot's
    first request after the restart may still meet the old, closed socket)."""
    relay.host.exec("systemctl", "restart", "doveauth")
    deadline = time.monotonic() + timeout
    while login_fails(relay, addr, password) and time.monotonic() < deadline:
        time.sleep(0.5)


@pytest.mark.parametrize("key", sorted(RESOURCE_LIMITS))
def test_resource_shortage_blocks_creation(relay1, key):
    existing, existing_pw = account(relay1)
    host = relay1.host
    backup = "/root/chatmail.ini.acceptance"
    host.exec("cp", "-p", INI, backup)
    edit = textwrap.dedent(
        f"""
        import re, sys
        text = open({INI!r}).read()
        line = {key!r} + " = " + {RESOURCE_LIMITS[key]!r}
        text, n = re.subn(r"(?m)^" + {key!r} + r"\\s*=.*$", line, text)
        if not n:
            text = text.replace("[params]", "[params]\\n" + line, 1)
        open({INI!r}, "w").write(text)
        """
    )
    try:
        host.exec("python3", "-c", edit)
        restart_doveauth(relay1, existing, existing_pw)
        if key == "max_load_1m" and float(host.exec("cat", "/proc/loadavg").stdout.split()[0]) == 0:
            pytest.skip("host load average is exactly 0; cannot exceed any limit")
        addr, password = new_credentials(relay1.domain)
        assert "AUTHENTICATIONFAILED" in login_fails(relay1, addr, password)
        assert password_file(relay1, addr) is None
        imap_login(relay1.ip, existing, existing_pw).logout()
        if key != "min_free_disk_space":
            # /new applies the same brakes (the disk one needs the mailbox
            # path, which its user cannot reach: doveauth applies it)
            status, _headers, body = https(relay1, "POST", "/new")
            assert status == 503 and "error" in json.loads(body), body
    finally:
        host.exec("cp", "-p", backup, INI)
        restart_doveauth(relay1, existing, existing_pw)
    imap_login(relay1.ip, addr, password).logout()


def test_parallel_first_logins_and_one_account(relay1):
    creds = [new_credentials(relay1.domain) for _ in range(100)]

    def login(cred):
        imap_login(relay1.ip, *cred).logout()
        return cred[0]

    with ThreadPoolExecutor(max_workers=100) as pool:
        created = list(pool.map(login, creds))
    assert len(created) == 100

    shared = creds[0]
    with ThreadPoolExecutor(max_workers=10) as pool:
        assert len(list(pool.map(login, [shared] * 10))) == 10

    # every password file is complete: one SHA512-CRYPT line
    script = (
        f"cd /home/vmail/mail/{relay1.domain} && for f in */password; do "
        'printf "%s %s\\n" "$(wc -c < "$f")" "$(head -c 17 "$f")"; done'
    )
    lines = relay1.host.sh(script).stdout.splitlines()
    assert len(lines) >= 100
    for line in lines:
        size, head = line.split(" ", 1)
        assert head == "{SHA512-CRYPT}$6$", line
        assert int(size) >= 100, line


def test_new_returns_credentials_and_stores_nothing(relay1):
    status, headers, body = https(relay1, "POST", "/new")
    assert status == 200, body
    data = json.loads(body)
    addr, password = data["email"], data["password"]
    assert addr.endswith("@" + relay1.domain)
    assert len(password) >= 9
    if not CA_MODE:
        # self-signed mode: a dclogin: URL that accepts the certificate
        assert data.get("dclogin_url", "").startswith("dclogin:"), data
        assert "ic=3" in data["dclogin_url"]
    assert password_file(relay1, addr) is None
    imap_login(relay1.ip, addr, password).logout()
    assert password_file(relay1, addr)


def test_imap_capabilities(relay1):
    addr, password = new_credentials(relay1.domain)
    imap = imap_login(relay1.ip, addr, password)
    try:
        _typ, data = imap.capability()
    finally:
        imap.logout()
    caps = set(data[0].decode().upper().split())
    for cap in ("XCHATMAIL", "XDELTAPUSH", "IDLE", "NOTIFY", "QUOTA", "METADATA"):
        assert cap in caps, caps


def test_vrfy_does_not_reveal(relay1):
    existing, _pw = account(relay1)
    unknown, _ = new_credentials(relay1.domain)
    with smtplib.SMTP(relay1.ip, 25, local_hostname="client.test", timeout=30) as smtp:
        smtp.ehlo()
        smtp.starttls(context=tls_context())
        smtp.ehlo()
        known_code, known_text = smtp.verify(existing)
        unknown_code, unknown_text = smtp.verify(unknown)
    assert known_code == unknown_code == 252
    assert known_text.replace(existing.encode(), b"X") == unknown_text.replace(
        unknown.encode(), b"X"
    )


def test_imap_connections_per_account_capped(relay2):
    # relay2's pillar: chatmail:limits:imap_max_userip_connections = 5
    addr, password = account(relay2)
    conns = []
    try:
        for _ in range(5):
            conns.append(imap_login(relay2.ip, addr, password))
        with pytest.raises(imaplib.IMAP4.error) as exc:
            conns.append(imap_login(relay2.ip, addr, password))
        assert "connections" in str(exc.value).lower()
    finally:
        for imap in conns:
            imap.logout()
    imap_login(relay2.ip, addr, password).logout()


SMTP_FLOOD = """
import socket, sys
codes = {}
for i in range(int(sys.argv[2])):
    s = socket.create_connection((sys.argv[1], 587), timeout=10)
    code = s.recv(512)[:3].decode()
    codes[code] = codes.get(code, 0) + 1
    s.close()
print(codes)
"""


def test_smtp_connection_rate_limited(relay1, relay2):
    # relay2 keeps the default smtp_connection_rate_per_minute (60); the burst
    # comes from relay1's address so the CI machine's own budget stays intact.
    out = relay1.host.exec("python3", "-c", SMTP_FLOOD, relay2.ip, "70").stdout
    codes = eval(out.strip(), {})  # a dict literal printed by the script above
    assert codes.get("220", 0) >= 55, codes
    assert codes.get("421", 0) >= 1, codes


IMAP_FLOOD = """
import imaplib, ssl, sys
from concurrent.futures import ThreadPoolExecutor
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
def login(_i):
    try:
        imap = imaplib.IMAP4_SSL(sys.argv[1], 993, ssl_context=ctx, timeout=30)
        imap.login(sys.argv[2], sys.argv[3])
        imap.logout()
        return "ok"
    except imaplib.IMAP4.error as exc:
        return str(exc)[:40]
    except OSError as exc:
        return type(exc).__name__
with ThreadPoolExecutor(10) as pool:
    keys = list(pool.map(login, range(int(sys.argv[4]))))
print(repr({k: keys.count(k) for k in set(keys)}))
"""


def test_imap_login_rate_limited(relay1, relay2):
    # relay2 keeps the default imap_login_rate_per_minute (60); logins come from
    # relay1's address.
    addr, password = new_credentials(relay2.domain)
    out = relay1.host.exec("python3", "-c", IMAP_FLOOD, relay2.ip, addr, password, "75").stdout
    results = eval(out.strip(), {})  # a dict literal printed by the script above
    assert 1 <= results.get("ok", 0) <= 60, results
    assert sum(n for key, n in results.items() if key != "ok") >= 15, results


def test_tls_only_versions(relay1):
    """Submission speaks TLS 1.3 only (clients are Delta Chat)."""
    ctx = tls_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection((relay1.ip, 465), timeout=10) as sock:
        with pytest.raises(ssl.SSLError):
            ctx.wrap_socket(sock, server_hostname=relay1.domain).do_handshake()
