"""Verifier of the kitchen.yml suites (shell verifier): probes the converged
instance at $KITCHEN_HOSTNAME over real sockets, with the domains of the
suite's pillar.  Skipped unless Test Kitchen (or tests.harness.kitchen) runs it.
"""

import imaplib
import os
import socket
import ssl

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from tests.harness.kitchen import suites
from tests.hosts.test_relay import PORTS, imap_login, new_credentials, tls_context

HOST = os.environ.get("KITCHEN_HOSTNAME")
SUITE = os.environ.get("KITCHEN_SUITE")

pytestmark = pytest.mark.skipif(not HOST or not SUITE, reason="run by kitchen verify only")


def _pillar():
    for suite in suites():
        if suite.name == SUITE:
            return suite.pillar().get("chatmail") or {}
    raise LookupError(f"suite {SUITE} not in kitchen.yml")


DOMAINS = sorted(_pillar().get("domains") or {}) if HOST and SUITE else []


@pytest.mark.parametrize("port", PORTS)
def test_port_listening(port):
    with socket.create_connection((HOST, port), timeout=10):
        pass


def served_cert(domain, port=993):
    with socket.create_connection((HOST, port), timeout=10) as sock:
        with tls_context().wrap_socket(sock, server_hostname=domain) as tls:
            der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der)


def _san(cert):
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return ext.value.get_values_for_type(x509.DNSName)


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("port", [993, 465, 443])
def test_certificate_per_domain(domain, port):
    cert = served_cert(domain, port)
    assert domain in _san(cert)
    mode = ((_pillar()["domains"][domain] or {}).get("tls") or {}).get("mode")
    if mode == "external":
        orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        assert [o.value for o in orgs] == ["external-ca"]


@pytest.mark.parametrize("domain", DOMAINS)
def test_login_creates_account(domain):
    addr, password = new_credentials(domain)
    imap_login(HOST, addr, password).logout()
    with pytest.raises(imaplib.IMAP4.error):
        imap_login(HOST, addr, password + "x")


def test_tls_versions():
    with socket.create_connection((HOST, 993), timeout=10) as sock:
        with tls_context().wrap_socket(sock, server_hostname=DOMAINS[0]) as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
    assert ssl.HAS_SNI
