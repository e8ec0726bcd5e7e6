"""A relay whose only chatmail domain is its own IPv4 address, on a host whose
name is that address (what `./cmsalt up --domain <IPv4>` makes): the package
installation must not depend on the host name (Postfix's own configuration
refuses a numeric myhostname, see salt/chatmail/postfix/package.sls), the
relay converges, a second highstate changes nothing, the real Delta Chat
core logs in with the `dclogin:` URL that /new hands out, and two such
accounts chat end-to-end encrypted after a secure join.  Its web pages are
checked in headless Chromium: the QR code that "Create account" shows,
decoded from a screenshot, is the link the page shows, and Delta Chat logs
in with what was decoded.

CMSALT_KEEP_HOSTS=1 keeps both hosts, CMSALT_REUSE_HOSTS=1 re-converges them.
"""

import json
import os
import tempfile
from pathlib import Path

import pytest

from tests.acceptance.test_deltachat import DC_TIMEOUT, chat_both_ways
from tests.harness import browser, deltachat, hosts
from tests.saltopts import write_pillar_tree

pytestmark = pytest.mark.hosts

REUSE = os.environ.get("CMSALT_REUSE_HOSTS") == "1"
KEEP = os.environ.get("CMSALT_KEEP_HOSTS") == "1" or REUSE
RELAY_NAME = "cmsalt-iprelay"
CLIENT_NAME = "cmsalt-iprelay-client"


@pytest.fixture(scope="module")
def relay_and_first(harness):
    """The IP-only relay after its first highstate (and that highstate's result)."""
    with tempfile.TemporaryDirectory(prefix="cmsalt-iprelay-") as tmp:
        ip = hosts.free_ip()
        pillar = write_pillar_tree(
            Path(tmp) / "pillar", {"params": {"max_load_1m": 1000}, "domains": {ip: {}}}
        )
        host = hosts.boot(RELAY_NAME, ip, ip=ip, pillar_dir=pillar, keep=KEEP, reuse=REUSE)
        try:
            yield host, hosts.converge(host)
        finally:
            if not KEEP:
                hosts.destroy(host)


@pytest.fixture(scope="module")
def relay(relay_and_first):
    host, first = relay_and_first
    if not first.ok:
        pytest.fail("IP-only relay highstate failed:\n" + first.summary(), pytrace=False)
    return host


@pytest.fixture(scope="module")
def client(relay):
    with deltachat.client_host(CLIENT_NAME, "iprelay-client.test", KEEP, REUSE) as host:
        yield host


@pytest.fixture
def dc(client, tmp_path):
    log, accounts = tmp_path / "rpc-server.log", f"/root/dc-{tmp_path.name}"
    with deltachat.core(client, log, accounts) as dc:
        yield dc


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
