"""Removing a domain from the pillar removes its config, and only its config.

One systemd host with two self-signed domains is converged, an account is
created on the domain about to go, then the pillar loses that domain and the
next highstate must drop its vhost, web dir, zone fragment and TLS dir, leave
no managed config naming it, keep its mailboxes and DKIM key (data), keep
the other domain serving, and a further run must change nothing.
"""

import imaplib
import random
import ssl
import string
import urllib.request

import pytest

from tests.harness import hosts
from tests.saltopts import write_pillar_tree

KEEP = "keep.test"
GONE = "_gone.test"
NAME = "cmsalt-test-domrm"
CONFIG_DIRS = ["/etc/nginx", "/etc/postfix", "/etc/dovecot", "/etc/opendkim", "/etc/chatmail"]

pytestmark = pytest.mark.hosts


def write_pillar(pillar_dir, domains):
    # max_load_1m: test hosts see the load average of the shared CI machine
    chatmail = {"params": {"max_load_1m": 1000}, "domains": {dom: {} for dom in domains}}
    write_pillar_tree(pillar_dir, chatmail)


def tls_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def imap_login(ip, domain):
    rnd = random.SystemRandom()
    local = "".join(rnd.choice(string.ascii_lowercase + string.digits) for _ in range(9))
    password = "".join(rnd.choice(string.ascii_letters + string.digits) for _ in range(20))
    addr = f"{local}@{domain}"
    imap = imaplib.IMAP4_SSL(ip, 993, ssl_context=tls_context(), timeout=30)
    imap.login(addr, password)
    imap.logout()
    return addr


def exists(host, path):
    return host.exec("test", "-e", path, check=False).returncode == 0


@pytest.fixture
def domrm_host(harness, tmp_path):
    pillar_dir = tmp_path / "pillar"
    write_pillar(pillar_dir, [KEEP, GONE])
    with hosts.booted(name=NAME, fqdn=KEEP, ip="auto", pillar_dir=pillar_dir) as host:
        yield host, pillar_dir


@pytest.mark.timeout(900)
def test_removed_domain_loses_config_keeps_data(domrm_host):
    host, pillar_dir = domrm_host
    first = hosts.converge(host)
    assert first.ok, first.summary()

    gone_addr = imap_login(host.ip, GONE)
    mailbox = f"/home/vmail/mail/{GONE}/{gone_addr}"
    dkim_key = f"/etc/dkimkeys/{GONE}.opendkim.private"
    gone_config = [
        f"/etc/nginx/sites-enabled/chatmail-{GONE}.conf",
        f"/var/www/chatmail/{GONE}",
        f"/etc/chatmail/zones/{GONE}.zone",
        f"/etc/chatmail/tls/{GONE}",
    ]
    for path in [mailbox, dkim_key, *gone_config]:
        assert exists(host, path), path

    write_pillar(pillar_dir, [KEEP])
    removal = hosts.converge(host)
    assert removal.ok, removal.summary()

    for path in gone_config:
        assert not exists(host, path), path
    mentions = host.exec("grep", "-rlF", GONE, *CONFIG_DIRS, check=False).stdout.split()
    assert mentions == []
    # data is never removed: re-adding the domain finds accounts and key again
    assert exists(host, f"{mailbox}/password")
    assert exists(host, dkim_key)
    for path in [
        f"/etc/nginx/sites-enabled/chatmail-{KEEP}.conf",
        f"/etc/chatmail/zones/{KEEP}.zone",
        f"/etc/chatmail/tls/{KEEP}/fullchain.pem",
    ]:
        assert exists(host, path), path

    imap_login(host.ip, KEEP)
    req = urllib.request.Request(f"https://{host.ip}/", headers={"Host": KEEP})
    with urllib.request.urlopen(req, context=tls_context(), timeout=30) as resp:
        assert resp.status == 200
    assert host.is_active("nginx")

    again = hosts.converge(host)
    assert again.ok, again.summary()
    assert again.changed == []
