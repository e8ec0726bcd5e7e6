"""Session fixtures: systemd test hosts on the private dockerd (see tests/harness)."""

import os
from pathlib import Path

import pytest

from tests.harness import docker, hosts, image, network

HERE = Path(__file__).parent
PILLAR = HERE / "pillar"
RELAY = {"name": "cmsalt-test-relay", "fqdn": "chat1.test", "ip": "172.31.77.20"}
SMOKE = {"name": "cmsalt-test-smoke", "fqdn": "smoke.test", "ip": "172.31.77.21"}
DOMAINS = ["chat1.test", "_chat2.test"]
# CMSALT_KEEP_HOSTS=1 leaves the test hosts running after the session (debugging;
# remove them with `python -m tests.harness down`).
KEEP = os.environ.get("CMSALT_KEEP_HOSTS") == "1"


def pytest_collection_modifyitems(items):
    for item in items:
        if str(item.fspath).startswith(str(HERE)):
            item.add_marker(pytest.mark.hosts)


@pytest.fixture(scope="session")
def harness():
    """dockerd, image, network and apt proxy; stopped again if this session started them."""
    started = docker.ensure()
    image.ensure_image()
    network.ensure_network()
    network.ensure_proxy()
    yield
    if started and not KEEP and not hosts.list_hosts():
        hosts.teardown_all(stop_daemons=True)


@pytest.fixture(scope="session")
def smoke_host(harness):
    host = hosts.boot(**SMOKE, keep=KEEP)
    yield host
    if not KEEP:
        hosts.destroy(host)


@pytest.fixture(scope="session")
def relay_boot(harness):
    host = hosts.boot(**RELAY, pillar_dir=PILLAR, keep=KEEP)
    first = hosts.converge(host)
    yield host, first
    if not KEEP:
        hosts.destroy(host)


@pytest.fixture(scope="session")
def relay(relay_boot):
    """The relay host after a successful highstate (tests using it fail otherwise)."""
    host, first = relay_boot
    if not first.ok:
        pytest.fail("relay highstate failed:\n" + first.summary(), pytrace=False)
    return host
