"""A relay whose only chatmail domain is its own IPv4 address, on a host whose
name is that address (what `./cmsalt up --domain <IPv4>` makes): the package
installation must not depend on the host name (Postfix's own configuration
refuses a numeric myhostname, see salt/chatmail/postfix/package.sls), the
relay converges, a second highstate changes nothing, the real Delta Chat
core logs in with the `dclogin:` URL that /new hands out, two such accounts
chat end-to-end encrypted after a secure join, and VRFY reveals nothing.  Its
web pages are checked in headless Chromium: the QR code that "Create
account" shows, decoded from a screenshot, is the link the page shows, and
Delta Chat logs in with what was decoded.

chatmail/relay's own online test suite runs against this relay, with a second
IP-only relay converged beside it for its two-relay tests, where its source is
at hand (tests/harness/refsuite, docs/compat.md); elsewhere that test is
skipped and the second relay is not booted.

CMSALT_KEEP_HOSTS=1 keeps the hosts, CMSALT_REUSE_HOSTS=1 re-converges them.
"""

import imaplib
import json
import os
import secrets
import smtplib
import ssl
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.acceptance.test_deltachat import DC_TIMEOUT, chat_both_ways
from tests.harness import browser, deltachat, hosts, refsuite
from tests.saltopts import write_pillar_tree

pytestmark = pytest.mark.hosts

REUSE = os.environ.get("CMSALT_REUSE_HOSTS") == "1"
KEEP = os.environ.get("CMSALT_KEEP_HOSTS") == "1" or REUSE
RELAY_NAME = "cmsalt-iprelay"
RELAY2_NAME = "cmsalt-iprelay2"
CLIENT_NAME = "cmsalt-iprelay-client"


# chatmail/relay's online suite (test_reference_suite) comes from the CI
# machine, one client address for all its connections and logins.
LIMITS = {
    "smtp_connection_rate_per_minute": 100000,
    "smtp_max_connections_per_client": 1000,
    "imap_login_rate_per_minute": 100000,
}
REF_UNAVAILABLE = refsuite.unavailable()


@pytest.fixture(scope="module")
def relays_and_first(harness):
    """The IP-only relay and, when chatmail/relay's suite can run here, a second
    one for its two-relay tests: [(host, first highstate result)], converged in
    parallel while the suite's venv is prepared (a future, or None)."""
    names = [RELAY_NAME] + ([RELAY2_NAME] if REF_UNAVAILABLE is None else [])
    booted = []
    with tempfile.TemporaryDirectory(prefix="cmsalt-iprelay-") as tmp:
        try:
            for name in names:
                ip = hosts.free_ip()
                pillar = write_pillar_tree(
                    Path(tmp) / name,
                    {"params": {"max_load_1m": 1000}, "limits": LIMITS, "domains": {ip: {}}},
                )
                booted.append(
                    hosts.boot(name, ip, ip=ip, pillar_dir=pillar, keep=KEEP, reuse=REUSE)
                )
            with ThreadPoolExecutor(max_workers=len(booted) + 1) as pool:
                prepared = pool.submit(refsuite.prepare) if REF_UNAVAILABLE is None else None
                firsts = list(pool.map(hosts.converge, booted))
                if prepared is not None:
                    prepared.exception()  # wait; test_reference_suite reports a failure
            yield list(zip(booted, firsts, strict=True)), prepared
        finally:
            if not KEEP:
                for host in booted:
                    hosts.destroy(host)


@pytest.fixture(scope="module")
def relay_and_first(relays_and_first):
    """The IP-only relay after its first highstate (and that highstate's result)."""
    return relays_and_first[0][0]


@pytest.fixture(scope="module")
def relay(relay_and_first):
    host, first = relay_and_first
    if not first.ok:
        pytest.fail("IP-only relay highstate failed:\n" + first.summary(), pytrace=False)
    return host


client, dc = deltachat.module_fixtures(CLIENT_NAME, "iprelay-client.test", KEEP, REUSE)


def test_numeric_host_name_converges(relay_and_first):
    host, first = relay_and_first
    # the situation of the issue: the host's own name is its address
    name = host.exec("hostname").stdout.strip()
    assert name == host.ip, name
    assert first.ok, first.summary()
    # Postfix refuses a numeric myhostname: the address's reverse-DNS name
    reverse = ".".join(reversed(host.ip.split("."))) + ".in-addr.arpa"
    myhostname = host.exec("postconf", "-h", "myhostname").stdout.strip()
    assert myhostname == reverse, myhostname
    for unit in ("postfix", "dovecot", "nginx", "filtermail", "doveauth"):
        state = host.exec("systemctl", "is-active", unit, check=False).stdout.strip()
        status = host.exec("systemctl", "status", "--no-pager", "-l", unit, check=False).stdout
        assert state == "active", status


def test_second_apply_changes_nothing(relay):
    again = hosts.converge(relay)
    assert again.ok, again.summary()
    assert again.changed == []


def new_account(client, ip):
    """POST https://<ip>/new from the client host (self-signed: not verified)."""
    script = (
        "import ssl, sys, urllib.request\n"
        "ctx = ssl.create_default_context()\n"
        "ctx.check_hostname = False\n"
        "ctx.verify_mode = ssl.CERT_NONE\n"
        "req = urllib.request.Request(f'https://{sys.argv[1]}/new', method='POST')\n"
        "with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:\n"
        "    print(resp.read().decode())\n"
    )
    return json.loads(client.exec("python3", "-c", script, ip).stdout)


def test_delta_chat_logs_in_with_dclogin(dc, client, relay):
    data = new_account(client, relay.ip)
    addr = data["email"]
    assert addr.endswith(f"@[{relay.ip}]")
    assert data["dclogin_url"].startswith(f"dclogin:{addr}?")
    acc = dc.add_account()
    acc.add_transport_from_qr(data["dclogin_url"])
    # the core logged in over IMAP and SMTP with the relay's self-signed
    # certificate (ic=3/sc=3 in the URL)
    assert acc.get_config("configured_addr") == addr
    password = f"/home/vmail/mail/{relay.ip}/{addr}/password"
    assert relay.exec("test", "-s", password, check=False).returncode == 0


def test_vrfy_reveals_nothing(relay):
    """VRFY on port 25 answers 252 2.0.0 for an account, an unknown address
    and a bare name alike (chatmail/relay's answer): the argument is never
    looked up (mx_command_filter, mx_relay_restrictions)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    existing = f"vrfy{secrets.token_hex(3)[:5]}@[{relay.ip}]"  # 9 characters
    imap = imaplib.IMAP4_SSL(relay.ip, ssl_context=ctx, timeout=30)
    imap.login(existing, secrets.token_hex(8))  # the first login makes the account
    imap.logout()
    unknown = f"nosu{secrets.token_hex(3)[:5]}@[{relay.ip}]"
    with smtplib.SMTP(relay.ip, 25, local_hostname="client.test", timeout=30) as smtp:
        smtp.starttls(context=ctx)
        replies = [smtp.verify(arg) for arg in (existing, unknown, "wrongaddress", "echo")]
    assert {code for code, _text in replies} == {252}, replies
    assert len({text for _code, text in replies}) == 1, replies
    assert replies[0][1].startswith(b"2.0.0 "), replies


@pytest.fixture(scope="module")
def relay2(relays_and_first):
    """The second IP-only relay (only where chatmail/relay's suite can run)."""
    if len(relays_and_first[0]) < 2:
        pytest.skip(REF_UNAVAILABLE)
    host, first = relays_and_first[0][1]
    if not first.ok:
        pytest.fail("second IP-only relay highstate failed:\n" + first.summary(), pytrace=False)
    return host


@pytest.mark.skipif(REF_UNAVAILABLE is not None, reason=str(REF_UNAVAILABLE))
def test_reference_suite(relays_and_first, relay, relay2, tmp_path):
    """chatmail/relay's own online tests (tests/harness/refsuite) against this
    relay, with relay2 as CHATMAIL_DOMAIN2 and ssh to the relay: every test
    passes except those of refsuite.SKIPS, skipped with their reason."""
    root = relays_and_first[1].result()
    ssh_bindir = refsuite.ssh_access(relay, tmp_path / "ssh")
    ini = refsuite.write_ini(tmp_path / "chatmail.ini", relay.ip)
    result = refsuite.run(root, ini, domain2=relay2.ip, ssh_bindir=ssh_bindir, ssh_host=relay.ip)
    print(result.output)
    print(f"chatmail/relay's suite took {result.seconds:.0f} s")
    assert result.outcomes, result.output[-6000:]
    assert not result.unexpected(), (result.unexpected(), result.output[-20000:])
    # every listed test exists in the suite at refsuite.COMMIT
    assert all(
        any(n == k or n.startswith((k + "[", k + "::")) for n in result.outcomes)
        for k in refsuite.SKIPS
    ), sorted(result.outcomes)


def dclogin_account(dc, client, ip):
    """A Delta Chat account set up from the dclogin: URL of a fresh /new account."""
    data = new_account(client, ip)
    acc = dc.add_account()
    acc.add_transport_from_qr(data["dclogin_url"])
    assert acc.get_config("configured_addr") == data["email"]
    return acc


@DC_TIMEOUT
def test_two_delta_chat_accounts_chat_encrypted(dc, client, relay):
    """Two accounts of the IP-only relay: secure join, then a message each
    way, both shown with the padlock (end-to-end encrypted), no error events."""
    chat_both_ways(dclogin_account(dc, client, relay.ip), dclogin_account(dc, client, relay.ip))


PAGES = {"index": "/", "info": "/info.html", "privacy": "/privacy.html"}


@DC_TIMEOUT
def test_pages_and_account_qr_in_a_browser(relay, dc, tmp_path):
    missing = browser.missing_tools()
    if missing:
        pytest.fail(f"apt-get install {' '.join(missing)} (./cmsalt installs them)")
    with browser.browser() as web:
        for page, path in PAGES.items():
            cap = web.capture(f"https://{relay.ip}{path}", probes={"bg": browser.STYLED})
            (tmp_path / f"{page}.png").write_bytes(cap.png)
            assert cap.values["bg"] == browser.STYLED_VALUE, page
            assert f"[{relay.ip}]" in cap.html, page
            assert browser.decode_qr(cap.png) == [], page
        cap = browser.create_account(web, f"https://{relay.ip}/")
    (tmp_path / "account.png").write_bytes(cap.png)
    assert cap.error == "" and cap.link.startswith("dclogin:"), cap.error
    [scanned] = browser.decode_qr(cap.png)
    assert scanned == cap.link
    # the phone's side: Delta Chat logs in with what it scanned
    acc = dc.add_account()
    acc.add_transport_from_qr(scanned)
    assert acc.get_config("configured_addr").endswith(f"@[{relay.ip}]")
