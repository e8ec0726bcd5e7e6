"""A relay whose only chatmail domain is its own IPv4 address, on a host whose
name is that address (what `./cmsalt up --domain <IPv4>` makes): the package
installation must not depend on the host name (Postfix's own configuration
refuses a numeric myhostname, see salt/chatmail/postfix/package.sls), the
relay converges, a second highstate changes nothing, and the real Delta Chat
core logs in with the `dclogin:` URL that /new hands out.

CMSALT_KEEP_HOSTS=1 keeps both hosts, CMSALT_REUSE_HOSTS=1 re-converges them.
"""

import json
import os
import tempfile
from pathlib import Path

import pytest

from tests.harness import deltachat, hosts
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
