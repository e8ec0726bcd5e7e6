"""TLS modes "acme" and "external" on a real systemd host.

The relay `acme.test` (tls mode acme) gets its certificate from a local
RFC 8555 server standing in for Let's Encrypt (tests/harness/acme_server.py,
HTTPS on the harness gateway, a CA made for this run that the relay trusts
through chatmail:trusted_cas).  The stand-in validates http-01 by fetching
the token from the relay on port 80, as Let's Encrypt does; nsd serves the
relay's A records so acmetool's own self-test finds the host too.

Shown: one highstate on a fresh host orders the certificate and brings up
nginx (443), dovecot (993), postfix (25 STARTTLS, 465) serving it with its
chain (verified here against the stand-in's root and the name acme.test);
a second highstate changes nothing; a renewal by the unit the timer starts
(acmetool.service) is served by all four ports without a restart by hand
(the acmetool hook reloads them), after which a highstate changes nothing.
The stand-in issues certificates that are already inside acmetool's renewal
window (valid for one more hour of 24), so the renewal is due at once
instead of after weeks; the highstate itself only orders when a certificate
is missing, expired, lacks a name or came from another directory, so it
leaves them alone.

Switching chatmail:acme:directory to another ACME server (as from staging
to production) re-orders from it although the old certificate is still
valid, and switching back does the same; a directory that cannot issue
fails the highstate and leaves the relay its certificate.

The same host serves `ext.test` in tls mode external: files written here;
replacing the certificate file makes chatmail-tls-reload.path reload the
services, which then serve the new certificate.

CMSALT_KEEP_HOSTS=1 keeps the host (it then needs the stand-in of the run
that made it, so reuse is not offered).
"""

import datetime
import http.client
import json
import os
import socket
import ssl
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.harness import GATEWAY, dns, hosts
from tests.harness.acme_server import AcmeServer
from tests.hosts.conftest import require_ok
from tests.saltopts import write_pillar_tree

pytestmark = pytest.mark.hosts

DOMAIN = "acme.test"
EXT = "ext.test"
NAMES = [DOMAIN, f"mta-sts.{DOMAIN}", f"www.{DOMAIN}"]
EXT_CERT = "/etc/ssl/ext-test/fullchain.pem"
EXT_KEY = "/etc/ssl/ext-test/privkey.pem"
TOS = "https://acme.test.invalid/terms-v1"
KEEP = os.environ.get("CMSALT_KEEP_HOSTS") == "1"
NAME = "cmsalt-acme"


def pillar(acme):
    """The relay's chatmail: pillar."""
    return {
        "params": {"max_load_1m": 1000, "acme_email": f"admin@{DOMAIN}"},
        "domains": {
            DOMAIN: {"tls": {"mode": "acme"}},
            EXT: {"tls": {"mode": "external", "cert": EXT_CERT, "key": EXT_KEY}},
        },
        "acme": {"directory": acme.directory_url, "terms_agreed": [TOS]},
        "trusted_cas": [acme.ca.root_pem],
        "dns": {"check": "warn", "forwarders": [GATEWAY], "nameservers": [GATEWAY]},
    }


def pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="module")
def acme(harness):
    server = AcmeServer(terms_of_service=TOS)
    # issued certificates are due for renewal at once (see the module doc)
    server.lifetime = datetime.timedelta(hours=24)
    server.backdate = datetime.timedelta(hours=23)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ext_key():
    return ec.generate_private_key(ec.SECP256R1())


def ext_cert_pem(acme, key):
    """A certificate for ext.test from the run's CA, with its chain."""
    return pem(acme.ca.issue(key.public_key(), dns_names=[EXT])) + acme.ca.chain_pem


@pytest.fixture(scope="module")
def relay(harness, acme, ext_key, tmp_path_factory):
    pillar_dir = write_pillar_tree(tmp_path_factory.mktemp("acme-pillar"), pillar(acme))
    with hosts.booted(name=NAME, fqdn=DOMAIN, ip="auto", pillar_dir=pillar_dir, keep=KEEP) as host:
        acme.resolve.update({name: host.ip for name in NAMES})
        records = [f"{n} IN A {host.ip}" for n in ("@", "mta-sts", "www")]
        dns.set_zones(
            {
                DOMAIN: dns.zone_text(DOMAIN, records + [f"@ IN MX 10 {DOMAIN}."]),
                EXT: dns.zone_text(EXT, [f"@ IN A {host.ip}"]),
            }
        )
        key_pem = ext_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        host.write_file(EXT_KEY, key_pem, mode="0600")
        host.write_file(EXT_CERT, ext_cert_pem(acme, ext_key))
        yield host, hosts.converge(host)


@pytest.fixture(scope="module")
def converged(relay):
    host, first = relay
    require_ok(first)
    return host


def _read_reply(sock):
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
        lines = data.split(b"\r\n")
        done = [ln for ln in lines[:-1] if len(ln) >= 4 and ln[3:4] == b" "]
        if done:
            return data


def served_chain(ip, port, name, ca_pem, starttls=False):
    """The leaf certificate served on ip:port for SNI `name`, after verifying
    the chain against `ca_pem` and the name (raises ssl errors otherwise)."""
    ctx = ssl.create_default_context(cadata=ca_pem)
    with socket.create_connection((ip, port), timeout=30) as sock:
        if starttls:
            _read_reply(sock)
            sock.sendall(b"EHLO test.invalid\r\n")
            _read_reply(sock)
            sock.sendall(b"STARTTLS\r\n")
            assert _read_reply(sock).startswith(b"220")
        with ctx.wrap_socket(sock, server_hostname=name) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


PORTS = [(443, False), (993, False), (465, False), (25, True)]


def served_everywhere(host, name, ca_pem):
    return {port: served_chain(host.ip, port, name, ca_pem, tls) for port, tls in PORTS}


def wait_served(host, name, ca_pem, serial, timeout=60):
    """Ports still serving another certificate than `serial` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        served = served_everywhere(host, name, ca_pem)
        stale = [port for port, leaf in served.items() if leaf.serial_number != serial]
        if not stale or time.monotonic() > deadline:
            return stale
        time.sleep(1)


def test_first_highstate_orders_and_serves_the_certificate(converged, relay, acme):
    _host, first = relay
    assert "chatmail-tls-acme-reconcile-cmd-run" in first.changed
    assert "chatmail-tls-acme-certificates-cmd-run" not in first.changed
    assert {name for name, _token, ok in acme.validations if ok} == set(NAMES)
    assert len(acme.issued) == 1
    issued = acme.issued[0]
    sans = issued.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(sans.get_values_for_type(x509.DNSName)) == sorted(NAMES)
    for name in (DOMAIN, f"mta-sts.{DOMAIN}"):
        served = served_everywhere(converged, name, acme.ca.root_pem)
        for port, leaf in served.items():
            assert leaf.serial_number == issued.serial_number, (name, port)
            assert leaf.issuer == acme.ca.cert.subject


def test_acmetool_state_on_the_host(converged):
    live = converged.sh(f"readlink /var/lib/acme/live/{DOMAIN}; ls /var/lib/acme/live").stdout
    assert live.startswith("../certs/"), live
    assert set(live.split()[1:]) == set(NAMES), live
    assert converged.is_active("acmetool.timer")
    assert converged.exec("systemctl", "is-enabled", "acmetool.timer").stdout.strip() == "enabled"
    mode = converged.sh(f"stat -L -c '%a %U' /var/lib/acme/live/{DOMAIN}/privkey").stdout
    assert mode.strip() == "600 root"


def test_hsts_only_for_publicly_trusted_certificates(converged, acme):
    """Strict-Transport-Security on the acme and external domains (publicly
    trusted certificates), never on self-signed/CA/IP ones (test_relay.py)."""
    for name in (DOMAIN, EXT):
        ctx = ssl.create_default_context(cadata=acme.ca.root_pem)
        conn = http.client.HTTPConnection(converged.ip, 443, timeout=30)
        sock = socket.create_connection((converged.ip, 443), timeout=30)
        conn.sock = ctx.wrap_socket(sock, server_hostname=name)  # verified for the name
        try:
            conn.request("GET", "/", headers={"Host": name})
            resp = conn.getresponse()
            resp.read()
        finally:
            conn.close()
        assert resp.status == 200, name
        assert resp.getheader("Strict-Transport-Security") == "max-age=31536000", name
        assert resp.getheader("Server") == "nginx", name


def test_migration_accepts_acmetool_s_real_state(converged):
    """chatmail_migrate only moves the links acmetool writes: its export of
    this host's real acmetool state passes the import's checks (inspect),
    with live/<domain> -> ../certs/<id> and certs/<id>/privkey ->
    ../../keys/<id>/privkey, and importing it back changes nothing."""
    archive = "/root/acme-state.tar.gz"
    converged.exec("rm", "-f", archive)
    proc = hosts.salt_call(
        converged, "chatmail_migrate.export", archive, "stop_intake=False", f"domains={DOMAIN}"
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert json.loads(proc.stdout)["local"]["acme_files"] > 0
    proc = hosts.salt_call(converged, "chatmail_migrate.inspect", archive)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    links = converged.sh(f"tar -tvzf {archive} | grep '^l'").stdout
    assert f"acme/live/{DOMAIN} -> ../certs/" in links, links
    assert "/privkey -> ../../keys/" in links, links
    proc = hosts.salt_call(converged, "chatmail_migrate.import", archive)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    acme_report = json.loads(proc.stdout)["local"]["acme"]
    assert acme_report["added"] == 0 and acme_report["replaced"] == [], acme_report


def test_second_highstate_changes_nothing(converged):
    res = hosts.converge(converged)
    assert res.ok, res.summary()
    assert res.changed == [], res.changed


def test_renewal_is_served_after_the_hook_reloads(converged, acme):
    before = len(acme.issued)
    # the unit acmetool.timer starts (Debian's, sandboxed), not a shell of ours
    converged.exec("systemctl", "start", "acmetool.service", timeout=300)
    assert len(acme.issued) == before + 1, converged.sh(
        "journalctl -u acmetool.service --no-pager -n 50", check=False
    ).stdout
    stale = wait_served(converged, DOMAIN, acme.ca.root_pem, acme.issued[-1].serial_number)
    assert stale == [], f"old certificate still served on {stale}"
    res = hosts.converge(converged)
    assert res.ok, res.summary()
    assert res.changed == [], res.changed


def test_external_certificate_replaced_is_served(converged, acme, ext_key):
    first = served_everywhere(converged, EXT, acme.ca.root_pem)
    assert len({leaf.serial_number for leaf in first.values()}) == 1
    assert converged.is_active("chatmail-tls-reload.path")
    new_pem = ext_cert_pem(acme, ext_key)
    new_serial = x509.load_pem_x509_certificate(new_pem.encode()).serial_number
    converged.write_file(EXT_CERT, new_pem)
    stale = wait_served(converged, EXT, acme.ca.root_pem, new_serial)
    assert stale == [], f"old certificate still served on {stale}"


def test_other_directory_reorders_and_back(converged, acme):
    """Another ACME directory in the pillar (as staging -> production): the
    certificate of the old one still satisfies acmetool, yet the highstate
    orders from the new one and all ports serve that; back to the first
    directory, its certificate is ordered again; then nothing changes."""
    with AcmeServer(terms_of_service=TOS) as other:
        other.resolve.update(acme.resolve)
        override = {
            "chatmail": {
                "acme": {"directory": other.directory_url},
                "trusted_cas": [acme.ca.root_pem, other.ca.root_pem],
            }
        }
        res = hosts.converge(converged, pillar_override=override)
        assert res.ok, res.summary()
        assert "chatmail-tls-acme-reconcile-cmd-run" in res.changed
        assert len(other.issued) == 1
        stale = wait_served(converged, DOMAIN, other.ca.root_pem, other.issued[0].serial_number)
        assert stale == [], f"old certificate still served on {stale}"
        again = hosts.converge(converged, pillar_override=override)
        assert again.ok and again.changed == [], again.summary() + f"\n{again.changed}"
    before = len(acme.issued)
    res = hosts.converge(converged)
    assert res.ok, res.summary()
    assert len(acme.issued) == before + 1
    stale = wait_served(converged, DOMAIN, acme.ca.root_pem, acme.issued[-1].serial_number)
    assert stale == [], f"old certificate still served on {stale}"
    again = hosts.converge(converged)
    assert again.ok and again.changed == [], again.summary() + f"\n{again.changed}"


def test_unreachable_directory_keeps_the_certificate(converged, acme):
    """A directory that cannot issue (nothing listens there): the highstate
    fails at the order, naming it, and the relay keeps its certificate (the
    retired one comes back with its live links); back to the good directory
    the relay converges, then nothing changes."""
    serial = acme.issued[-1].serial_number
    override = {"chatmail": {"acme": {"directory": f"https://{GATEWAY}:9/directory"}}}
    res = hosts.converge(converged, pillar_override=override)
    failed = dict(res.failed)
    assert "chatmail-tls-acme-reconcile-cmd-run" in failed, res.summary()
    order = next(
        s for s in res.states.values() if s["__id__"] == "chatmail-tls-acme-reconcile-cmd-run"
    )
    assert "restored the certificates" in order["changes"]["stderr"], order
    live = converged.sh("ls /var/lib/acme/live").stdout.split()
    assert set(NAMES) <= set(live), live
    out = converged.exec(
        "openssl", "x509", "-noout", "-serial", "-in", f"/var/lib/acme/live/{DOMAIN}/cert"
    ).stdout
    assert int(out.strip().split("=", 1)[1], 16) == serial, out
    assert wait_served(converged, DOMAIN, acme.ca.root_pem, serial, timeout=5) == []
    res = hosts.converge(converged)
    assert res.ok, res.summary()
    again = hosts.converge(converged)
    assert again.ok and again.changed == [], again.summary() + f"\n{again.changed}"
