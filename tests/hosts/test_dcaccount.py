"""Delta Chat onboarding by `DCACCOUNT:https://<domain>/new` against a relay of ours
(issue 5), with the real core (deltachat-rpc-server) in a client host.

What the core does with such a QR code (chatmail/core `src/qr.rs`
`login_param_from_account_qr`): an empty `POST` to the URL through
`net/http.rs` `post_empty`, always with strict TLS; a success status with a
JSON body `{"email": ..., "password": ...}` (other keys ignored) becomes the
login, again with strict certificate checks.  Strict TLS (`net/tls.rs`
`wrap_rustls`, verifier in `net/tls/danger.rs`) trusts only the compiled-in
webpki roots (no system store, no `SSL_CERT_FILE`), except for host names
starting with `_`: their chain is not verified, only that the certificate
names the host.  Hence:

- `_`-prefixed domains (self-signed mode, as the tree sets it up) onboard
  with `DCACCOUNT:` end to end;
- a named domain with a certificate of a private CA is refused even when the
  client host trusts that CA (system store and `SSL_CERT_FILE`); there the
  `dclogin:` URL that `/new` hands out (`ic=3`/`sc=3`) is the way in;
- so is the relay's IP address (self-signed, no `_` name to relax on).

One relay `dcacc.test` (tls mode "ca", a CA made for the run) plus
`_dcacc.test` (self-signed) and its own IPv4 address (IP-only domain), DNS
from the harness nsd, and a bare client host trusting the CA.
CMSALT_KEEP_HOSTS=1 keeps both hosts (fixed names), CMSALT_REUSE_HOSTS=1
re-converges running ones instead of booting fresh.
"""

import json
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest

from tests.acceptance.test_deltachat import chat_both_ways, dclogin_url
from tests.harness import CACHE, SLOT, deltachat, dns, hosts
from tests.harness import acceptance_relays as ar

pytestmark = pytest.mark.hosts

REUSE = os.environ.get("CMSALT_REUSE_HOSTS") == "1"
KEEP = os.environ.get("CMSALT_KEEP_HOSTS") == "1" or REUSE
RELAY_NAME = "cmsalt-dcacc-relay"
CLIENT_NAME = "cmsalt-dcacc-client"
CA_DOMAIN = "dcacc.test"  # tls mode "ca": private CA
SELF_DOMAIN = "_dcacc.test"  # self-signed ("_" prefix)
DOMAINS = [CA_DOMAIN, SELF_DOMAIN]
MAILBOXES = "/home/vmail/mail"
CLIENT_CA = "/usr/local/share/ca-certificates/dcacc-test-ca.crt"
SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# what rustls reports for a chain it cannot anchor in its (webpki) roots
UNKNOWN_ISSUER = "UnknownIssuer"
INVALID_CERT = "invalid peer certificate"


@pytest.fixture(scope="module")
def workdir():
    if KEEP:
        path = CACHE / f"dcacc-test-s{SLOT}"
        path.mkdir(parents=True, exist_ok=True)
        yield path
    else:
        with tempfile.TemporaryDirectory(prefix="cmsalt-dcacc-") as tmp:
            yield Path(tmp)


@pytest.fixture(scope="module")
def test_ca(workdir):
    return ar.TestCA(workdir / "ca")


@pytest.fixture(scope="module")
def push_gateway(harness):
    gateway = ar.PushGateway()
    yield gateway
    gateway.close()


@pytest.fixture(scope="module")
def relay(harness, workdir, test_ca, push_gateway):
    """The relay serving both domains, converged, its zones published."""
    extra = test_ca.pillar([CA_DOMAIN])
    extra["domains"][SELF_DOMAIN] = {}
    spec = ar.RelaySpec(
        RELAY_NAME, CA_DOMAIN, params={"max_load_1m": 1000}, extra=extra, ip_domain=True
    )
    pillar = workdir / "pillar"
    pillar.mkdir(exist_ok=True)
    host = hosts.boot(spec.name, spec.domain, ip="auto", pillar_dir=pillar, keep=KEEP, reuse=REUSE)
    try:
        ar.write_pillar(pillar, spec, push_gateway.url, host.ip)
        dns.set_zones({d: ar.bootstrap_zone(d, host.ip) for d in DOMAINS})
        first = hosts.converge(host)
        if not first.ok:
            pytest.fail("relay highstate failed:\n" + first.summary(), pytrace=False)
        relays = [ar.Relay(replace(spec, domain=d), host) for d in DOMAINS]
        dns.set_zones({r.domain: ar.published_zone(r) for r in relays})
        yield host
    finally:
        if not KEEP:
            hosts.destroy(host)
            for domain in DOMAINS:
                (dns.ZONE_DIR / f"{domain}.zone").unlink(missing_ok=True)


@pytest.fixture(scope="module")
def client(relay, test_ca):
    """A bare host with the core's RPC server that trusts the run's CA system-wide."""
    with deltachat.client_host(CLIENT_NAME, "dcacc-client.test", KEEP, REUSE) as host:
        host.write_file(CLIENT_CA, test_ca.cert)
        host.exec("update-ca-certificates")
        yield host


@pytest.fixture
def dc(client, tmp_path):
    """A DeltaChat rpc client whose core runs in the client host (fresh accounts dir),
    with the system bundle (holding the CA) also named by SSL_CERT_FILE."""
    bundle = {"SSL_CERT_FILE": SYSTEM_BUNDLE, "SSL_CERT_DIR": "/etc/ssl/certs"}
    log, accounts = tmp_path / "rpc-server.log", f"/root/dc-{tmp_path.name}"
    with deltachat.core(client, log, accounts, extra_env=bundle) as dc:
        yield dc


def client_post_new(client, domain, verify=True):
    """POST https://<domain>/new from the client host with its own (Python) TLS stack:
    verify=True checks the certificate against the host's system store."""
    script = (
        "import ssl, sys, urllib.request\n"
        "ctx = ssl.create_default_context()\n"
        "if sys.argv[2] != '1':\n"
        "    ctx.check_hostname = False\n"
        "    ctx.verify_mode = ssl.CERT_NONE\n"
        "req = urllib.request.Request(f'https://{sys.argv[1]}/new', method='POST')\n"
        "with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:\n"
        "    print(resp.status, resp.headers.get_content_type())\n"
        "    print(resp.read().decode())\n"
    )
    out = client.exec("python3", "-c", script, domain, "1" if verify else "0").stdout
    status_line, body = out.split("\n", 1)
    return status_line.split(), json.loads(body)


def password_file(host, addr):
    domain = addr.split("@", 1)[1]
    return f"{MAILBOXES}/{domain}/{addr}/password"


def test_new_answers_what_the_core_parses(client):
    """/new answers an empty POST with 200 and the JSON the core reads (email,
    password); the client host's TLS stack verifies the CA domain's certificate."""
    for domain, verify in ((CA_DOMAIN, True), (SELF_DOMAIN, False)):
        (status, ctype), data = client_post_new(client, domain, verify)
        assert (status, ctype) == ("200", "application/json")
        assert data["email"].endswith(f"@{domain}")
        assert data["password"]


def client_get(client, domain, path):
    """GET https://<domain><path> from the client host, certificate not checked."""
    script = (
        "import ssl, sys, urllib.request\n"
        "ctx = ssl.create_default_context()\n"
        "ctx.check_hostname = False\n"
        "ctx.verify_mode = ssl.CERT_NONE\n"
        "with urllib.request.urlopen(f'https://{sys.argv[1]}{sys.argv[2]}', context=ctx,\n"
        "                            timeout=30) as resp:\n"
        "    sys.stdout.write(resp.read().decode())\n"
    )
    return client.exec("python3", "-c", script, domain, path).stdout


def test_underscore_domain_page_shows_qr(client):
    """The web page shows the DCACCOUNT: QR code where the core accepts it (the
    self-signed "_" domain) and the /new button with its dclogin: URL where it
    does not (the private-CA domain)."""
    page = client_get(client, SELF_DOMAIN, "/")
    assert f'href="DCACCOUNT:https://{SELF_DOMAIN}/new"' in page
    assert "<svg" in client_get(client, SELF_DOMAIN, "/qr-chatmail-invite.svg")
    page = client_get(client, CA_DOMAIN, "/")
    assert "DCACCOUNT:" not in page.upper()
    assert 'fetch("/new"' in page


def test_dcaccount_underscore_domain(dc, relay):
    """DCACCOUNT: of the self-signed `_` domain: two accounts made by the core
    itself chat end to end encrypted."""
    accounts = []
    for _ in range(2):
        acc = dc.add_account()
        acc.add_transport_from_qr(f"DCACCOUNT:https://{SELF_DOMAIN}/new")
        addr = acc.get_config("configured_addr")
        assert addr.endswith(f"@{SELF_DOMAIN}")
        assert relay.exec("test", "-s", password_file(relay, addr), check=False).returncode == 0
        accounts.append(acc)
    chat_both_ways(*accounts)


def test_dcaccount_private_ca_refused(dc, client):
    """DCACCOUNT: of a named domain whose certificate comes from a private CA is
    refused by the core (webpki roots only) although the client host trusts the
    CA; the dclogin: URL from /new is the supported way in."""
    from deltachat_rpc_client.rpc import JsonRpcError

    acc = dc.add_account()
    with pytest.raises(JsonRpcError) as refused:
        acc.add_transport_from_qr(f"DCACCOUNT:https://{CA_DOMAIN}/new")
    assert UNKNOWN_ISSUER in str(refused.value)
    assert not acc.is_configured()

    _status, data = client_post_new(client, CA_DOMAIN)
    url = data.get("dclogin_url") or dclogin_url(data["email"], data["password"])
    acc.add_transport_from_qr(url)
    assert acc.get_config("configured_addr") == data["email"]


def test_dcaccount_ip_domain_refused(dc, relay):
    """DCACCOUNT: of the relay's IP address is refused too: its self-signed
    certificate goes through the chain check (CaUsedAsEndEntity from webpki, as
    `openssl req -x509` marks it CA:TRUE; without that it would be UnknownIssuer)."""
    from deltachat_rpc_client.rpc import JsonRpcError

    acc = dc.add_account()
    with pytest.raises(JsonRpcError) as refused:
        acc.add_transport_from_qr(f"DCACCOUNT:https://{relay.ip}/new")
    assert INVALID_CERT in str(refused.value)
    assert not acc.is_configured()
