"""Acceptance suite: two relays converged from salt/ with real DNS (harness nsd),
a stand-in push gateway on the CI machine, and real Delta Chat clients.

Hosts:
  relay1  acc1.test    generous SMTP/IMAP rate limits (the CI machine is one client IP)
  relay2  acc2.test    default limits, 5 IMAP connections per account and IP
  relay3  acc3.test and its own IPv4 address (two domains, one of them IP-only)
  client  client.test  bare host running deltachat-rpc-server (resolves the test
                       domains through the harness nsd like a phone would)
Addresses are free ones of the test network's dynamic half (hosts.boot ip="auto").

CMSALT_KEEP_HOSTS=1 keeps the hosts after the run; CMSALT_ACC_REUSE=1 reuses running
ones without converging again (fast inner loop while writing tests).
"""

import dataclasses
import os
import tempfile
from pathlib import Path

import pytest

from tests.harness import CACHE, GATEWAY, SLOT, deltachat, dns, hosts, network_address
from tests.harness import acceptance_relays as ar

HERE = Path(__file__).parent
KEEP = os.environ.get("CMSALT_KEEP_HOSTS") == "1"
REUSE = os.environ.get("CMSALT_ACC_REUSE") == "1"
# Under pytest-xdist every acceptance test runs in one worker (tests/conftest.py
# suite_of), since the relays are shared by all of them.
PUSH_PORT = int(os.environ.get("CMSALT_ACC_PUSH_PORT", "18477"))
PUSH_URL = f"http://{GATEWAY}:{PUSH_PORT}/notify"

# The CI machine is shared: its load average often passes the default max_load_1m
# (5), which would refuse every new account; the resource test lowers it again.
PARAMS = {"max_load_1m": 1000}
SPECS = [
    ar.RelaySpec(
        "cmsalt-acc1",
        "acc1.test",
        params=PARAMS,
        limits={
            "smtp_connection_rate_per_minute": 100000,
            "smtp_max_connections_per_client": 1000,
            "imap_login_rate_per_minute": 100000,
        },
    ),
    ar.RelaySpec(
        "cmsalt-acc2",
        "acc2.test",
        params=PARAMS,
        limits={"imap_max_userip_connections": 5},
    ),
    # two domains on one host: a named one and the host's IPv4 address (IP-only relay)
    ar.RelaySpec("cmsalt-acc3", "acc3.test", params=PARAMS, ip_domain=True),
]
# tls mode "ca" (a private CA made for the run, trusted by both relays, peers
# verified on port 25) once the tree has it; CMSALT_ACC_TLS=self forces the
# self-signed certificates of *.test domains instead.
CA_MODE = os.environ.get("CMSALT_ACC_TLS", "ca") == "ca" and ar.tree_has_tls_ca()
CA_DIR = CACHE / f"acceptance-ca-s{SLOT}"
CLIENT = {"name": "cmsalt-acc-client", "fqdn": "client.test", "ip": "auto"}
SINK_DOMAIN = "sink.test"
INI = "/etc/chatmail/chatmail.ini"
VENV_BIN = "/usr/local/lib/chatmaild/bin"


def pytest_configure(config):
    config.addinivalue_line("markers", "acceptance: ACCEPTANCE.md behaviour on live relays")


def pytest_collection_modifyitems(items):
    for item in items:
        if str(item.fspath).startswith(str(HERE)):
            item.add_marker(pytest.mark.hosts)
            item.add_marker(pytest.mark.acceptance)


@pytest.fixture(scope="session")
def push_gateway():
    # bound to the slot's gateway address, which exists once its network does
    gateway = ar.PushGateway(network_address(), PUSH_PORT)
    yield gateway
    gateway.close()


@pytest.fixture(scope="session")
def test_ca():
    """The run's private CA (kept in the cache dir for CMSALT_ACC_REUSE runs)."""
    if not CA_MODE:
        return None
    if REUSE and (CA_DIR / "ca.pem").exists():
        ca = ar.TestCA.__new__(ar.TestCA)
        ca.dir, ca.cert_path, ca.key_path = CA_DIR, CA_DIR / "ca.pem", CA_DIR / "ca.key"
        ca.cert, ca.key = ca.cert_path.read_text(), ca.key_path.read_text()
        return ca
    return ar.TestCA(CA_DIR)


def specs_for(ca):
    if ca is None:
        return SPECS
    return [dataclasses.replace(spec, extra=ca.pillar([spec.domain])) for spec in SPECS]


def _reuse_relays():
    relays = []
    for spec in SPECS:
        host = hosts.boot(spec.name, spec.domain, ip=spec.ip, reuse=True, keep=True)
        relays.append(ar.Relay(spec, host, None))
    ar.publish(relays)
    return relays


@pytest.fixture(scope="session")
def relays(push_gateway, test_ca):
    if REUSE and all(hosts._container_state(s.name) for s in SPECS):
        yield _reuse_relays()
        return
    with tempfile.TemporaryDirectory(prefix="cmsalt-acc-pillar-") as tmp:
        up = ar.up(specs_for(test_ca), tmp, PUSH_URL, keep=KEEP or REUSE)
        failed = [r for r in up if not r.first.ok]
        if failed:
            if not (KEEP or REUSE):
                ar.down(up)
            pytest.fail(
                "\n".join(f"{r.domain} highstate failed:\n{r.first.summary()}" for r in failed),
                pytrace=False,
            )
        yield up
        if not (KEEP or REUSE):
            ar.down(up)


@pytest.fixture(scope="session")
def relay1(relays):
    return relays[0]


@pytest.fixture(scope="session")
def relay2(relays):
    return relays[1]


@pytest.fixture(scope="session")
def relay3(relays):
    return relays[2]


@pytest.fixture(scope="session")
def sink(relays, test_ca, tmp_path_factory):
    """A remote MX on the gateway (domain sink.test) that keeps what relays send it;
    its certificate comes from the run's CA when there is one."""
    cert, key = test_ca.issue(SINK_DOMAIN) if test_ca else (None, None)
    mail_sink = ar.MailSink(tmp_path_factory.mktemp("sink"), cert=cert, key=key)
    dns.set_zone(SINK_DOMAIN, ar.sink_zone(SINK_DOMAIN))
    yield mail_sink
    mail_sink.close()


@pytest.fixture(scope="session")
def client_host(relays):
    """A bare host on the test network with the Delta Chat core's RPC server."""
    keep = KEEP or REUSE
    host = hosts.boot(**CLIENT, reuse=REUSE, keep=keep)
    deltachat.install_rpc_server(host)
    yield host
    if not keep:
        hosts.destroy(host)


@pytest.fixture
def dc(client_host, tmp_path):
    """A DeltaChat (rpc client) whose core runs in the client host, fresh accounts dir."""
    with deltachat.core(
        client_host, tmp_path / "rpc-server.log", f"/root/dc-{tmp_path.name}"
    ) as dc:
        yield dc


def run_in(host, *argv, **kw):
    """Run a chatmaild console script in the host (venv bin dir)."""
    return host.exec(f"{VENV_BIN}/{argv[0]}", *argv[1:], **kw)
