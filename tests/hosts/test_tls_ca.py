"""Two relays in tls mode "ca": certificates issued on each host by a private CA
made in this test, the CA trusted by both hosts (chatmail:trusted_cas) and no
next hop exempt from verification (chatmail:smtp_tls:unverified_nexthops: []),
so mail from relay1 to relay2 over port 25 is sent over a *verified* TLS
connection.  DNS (A, MX, DKIM, ...) comes from the harness nsd.
"""

import datetime
import json
import os
import socket
import ssl
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.harness import CACHE, GATEWAY, SLOT, addr, dns, hosts
from tests.hosts.test_relay import encrypted_message, imap_login, new_credentials, submit
from tests.saltopts import write_pillar_tree

pytestmark = pytest.mark.hosts

# CMSALT_KEEP_HOSTS=1 keeps both hosts afterwards; CMSALT_REUSE_HOSTS=1 (implies
# keep) re-converges running ones instead of booting fresh hosts.
REUSE = os.environ.get("CMSALT_REUSE_HOSTS") == "1"
KEEP = os.environ.get("CMSALT_KEEP_HOSTS") == "1" or REUSE
# (container, domain, fixed address in the slot's subnet)
RELAYS = [
    ("cmsalt-tlsca1", "tlsca1.test", addr(41)),
    ("cmsalt-tlsca2", "tlsca2.test", addr(42)),
]
ZONE_DIR = "/etc/chatmail/zones"
PILLAR_ROOT = CACHE / f"tls-ca-test-s{SLOT}"


def make_ca():
    """(cert PEM, key PEM) of a fresh EC CA valid for two days."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "chatmail-salt tls-ca test CA")])
    now = datetime.datetime.now(datetime.UTC)
    usage = x509.KeyUsage(
        digital_signature=False, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return cert_pem, key_pem


def relay_pillar(domain, ca_cert, ca_key):
    return {
        "chatmail": {
            "domains": {domain: {"tls": {"mode": "ca"}}},
            "tls_ca": {"cert": ca_cert, "key": ca_key, "days_valid": 30, "days_remaining": 5},
            "trusted_cas": [ca_cert],
            "smtp_tls": {"unverified_nexthops": []},
            # the CI machine's load average, not the container's
            "params": {"max_load_1m": 1000},
            "dns": {"check": "warn", "forwarders": [GATEWAY], "nameservers": [GATEWAY]},
        }
    }


def published_zone(host, domain):
    fragment = host.exec("cat", f"{ZONE_DIR}/{domain}.zone").stdout
    records = [ln for ln in fragment.splitlines() if ln.strip() and not ln.startswith(";")]
    return dns.zone_text(domain, records)


@pytest.fixture(scope="module")
def relay_specs(harness):
    """boot() arguments of both relays; their pillars (with the CA) live in the
    harness cache, so that CMSALT_REUSE_HOSTS=1 runs keep the CA of the hosts."""
    specs = []
    ca = None
    for _name, domain, _ip in RELAYS:
        pillar = PILLAR_ROOT / domain
        if REUSE and (pillar / "chatmail.sls").exists():
            ca = ca or tuple(
                json.loads((pillar / "chatmail.sls").read_text())["chatmail"]["tls_ca"][k]
                for k in ("cert", "key")
            )
    ca = ca or make_ca()
    for name, domain, ip in RELAYS:
        pillar = write_pillar_tree(PILLAR_ROOT / domain, relay_pillar(domain, *ca)["chatmail"])
        specs.append(
            {
                "name": name,
                "fqdn": domain,
                "ip": ip,
                "pillar_dir": pillar,
                "keep": KEEP,
                "reuse": REUSE,
            }
        )
    return specs, ca


@pytest.fixture(scope="module")
def ca(relay_specs):
    return relay_specs[1]


@pytest.fixture(scope="module")
def pair(relay_specs):
    """[(host, domain)] of both relays after a parallel first highstate."""
    specs = relay_specs[0]
    booted = hosts.boot_many(specs)
    relays = [(host, spec["fqdn"]) for host, spec in zip(booted, specs, strict=True)]
    try:
        dns.set_zones(
            {
                domain: dns.zone_text(domain, [f"@ IN A {host.ip}", f"@ IN MX 10 {domain}."])
                for host, domain in relays
            }
        )
        results = hosts.converge_many(booted)
        failed = [
            f"{domain}:\n{res.summary()}"
            for (_h, domain), res in zip(relays, results, strict=True)
            if not res.ok
        ]
        if failed:
            pytest.fail("highstate failed:\n" + "\n".join(failed), pytrace=False)
        dns.set_zones({domain: published_zone(host, domain) for host, domain in relays})
        yield relays
    finally:
        if not KEEP:
            for host in booted:
                hosts.destroy(host)


def test_certificate_issued_by_the_pillar_ca(pair, ca):
    ca_cert = x509.load_pem_x509_certificate(ca[0].encode())
    for host, domain in pair:
        pem = host.exec("cat", f"/etc/chatmail/tls/{domain}/fullchain.pem").stdout
        chain = x509.load_pem_x509_certificates(pem.encode())
        leaf = chain[0]
        assert leaf.issuer == ca_cert.subject
        leaf.verify_directly_issued_by(ca_cert)
        sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert set(sans.get_values_for_type(x509.DNSName)) == {
            domain,
            f"mta-sts.{domain}",
            f"www.{domain}",
        }
        assert chain[1] == ca_cert  # fullchain: leaf + CA
        modes = host.sh(
            f"stat -c '%n %a %U' /etc/chatmail/tls/{domain}/privkey.pem /etc/chatmail/tls/ca/ca.key"
        ).stdout.split("\n")
        assert all(line.endswith(" 600 root") for line in modes if line), modes


def test_host_clients_trust_the_ca(pair):
    """Python and openssl on relay1 verify relay2's IMAP and HTTPS certificates
    through the system trust store (the CA came from chatmail:trusted_cas)."""
    (host1, _d1), (_host2, domain2) = pair
    assert host1.exec("ls", "/usr/local/share/ca-certificates/chatmail-1.crt").returncode == 0
    script = (
        "import socket, ssl, sys\n"
        "ctx = ssl.create_default_context()\n"
        "for port, name in ((993, sys.argv[1]), (443, 'mta-sts.' + sys.argv[1])):\n"
        "    with socket.create_connection((sys.argv[1], port), timeout=20) as s:\n"
        "        with ctx.wrap_socket(s, server_hostname=name) as t:\n"
        "            print(port, t.version())\n"
    )
    out = host1.exec("python3", "-c", script, domain2).stdout
    assert "993 TLS" in out and "443 TLS" in out, out


def test_relay_to_relay_mail_uses_verified_tls(pair):
    (host1, domain1), (host2, domain2) = pair
    sender, sender_pw = new_credentials(domain1)
    rcpt, rcpt_pw = new_credentials(domain2)
    imap_login(host1.ip, sender, sender_pw).logout()  # first login creates the account
    imap_login(host2.ip, rcpt, rcpt_pw).logout()
    submit(host1.ip, sender, sender_pw, [rcpt], encrypted_message(sender, rcpt))

    imap = imap_login(host2.ip, rcpt, rcpt_pw)
    try:
        deadline = time.monotonic() + 120
        count = 0
        while time.monotonic() < deadline:
            imap.select("INBOX")
            count = len(imap.search(None, "ALL")[1][0].split())
            if count:
                break
            time.sleep(0.5)
    finally:
        imap.logout()
    log = host1.exec(
        "journalctl", "--no-pager", "-o", "cat", "SYSLOG_IDENTIFIER=postfix/smtp", check=False
    ).stdout
    assert count == 1, log[-3000:]
    assert f"Verified TLS connection established to {domain2}" in log, log[-3000:]
    assert f"to=<{rcpt}>" in log and "status=sent" in log, log[-3000:]


def test_second_highstate_changes_nothing(pair):
    results = hosts.converge_many([host for host, _domain in pair])
    for (_host, domain), res in zip(pair, results, strict=True):
        assert res.ok, f"{domain}: {res.summary()}"
        assert res.changed == [], f"{domain}: {res.changed}"


def _served_leaf(ip, port=993):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((ip, port), timeout=20) as sock:
        with ctx.wrap_socket(sock) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def test_new_ca_reissues_and_reloads(pair, ca):
    """Another CA in the pillar: the certificate is reissued by it and dovecot
    serves it at once; back to the fleet CA, the next run changes nothing."""
    _relay1, (host2, domain2) = pair
    other_cert, other_key = make_ca()
    override = {"chatmail": {"tls_ca": {"cert": other_cert, "key": other_key}}}
    res = hosts.converge(host2, sls="chatmail.tls", pillar_override=override)
    assert res.ok, res.summary()
    assert f"chatmail-tls-{domain2}-ca-certificate-managed" in res.changed
    assert "chatmail-tls-dovecot-reloaded" in res.changed
    other = x509.load_pem_x509_certificate(other_cert.encode())
    assert _served_leaf(host2.ip).issuer == other.subject
    try:
        res = hosts.converge(host2, sls="chatmail.tls")
        assert res.ok, res.summary()
        assert f"chatmail-tls-{domain2}-ca-certificate-managed" in res.changed
    finally:
        again = hosts.converge(host2, sls="chatmail.tls")
    assert again.ok and again.changed == [], again.summary()
    fleet_ca = x509.load_pem_x509_certificate(ca[0].encode())
    assert _served_leaf(host2.ip).issuer == fleet_ca.subject
