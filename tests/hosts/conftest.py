"""Session fixtures: systemd test hosts on the private dockerd (see tests/harness)."""

import os
from pathlib import Path

import pytest

from tests.harness import ensure_infra, hosts

HERE = Path(__file__).parent
PILLAR = HERE / "pillar"
DOMAINS = ["chat1.test", "_chat2.test"]
# CMSALT_KEEP_HOSTS=1 leaves the test hosts running after the session (debugging;
# remove them with `python -m tests.harness down`).
KEEP = os.environ.get("CMSALT_KEEP_HOSTS") == "1"
# CMSALT_REUSE_HOSTS=1 (implies KEEP) re-converges running test hosts instead of
# booting fresh ones: fast iteration on states and tests.
REUSE = os.environ.get("CMSALT_REUSE_HOSTS") == "1"
KEEP = KEEP or REUSE
# Kept/reused hosts have fixed names and addresses (cmsalt-test-relay 172.31.77.20,
# cmsalt-test-smoke .21).  Otherwise every session (and xdist worker) boots its own
# hosts, named with its pid and addressed by docker, so concurrent runs of the
# host tests never touch each other's hosts.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
FIXED = KEEP and not WORKER
SUFFIX = f"-{WORKER}" if KEEP and WORKER else "" if KEEP else f"-{os.getpid()}"
RELAY = {
    "name": f"cmsalt-test-relay{SUFFIX}",
    "fqdn": "chat1.test",
    "ip": "172.31.77.20" if FIXED else "auto",
}
SMOKE = {
    "name": f"cmsalt-test-smoke{SUFFIX}",
    "fqdn": "smoke.test",
    "ip": "172.31.77.21" if FIXED else "auto",
}


def pytest_collection_modifyitems(items):
    for item in items:
        if str(item.fspath).startswith(str(HERE)):
            item.add_marker(pytest.mark.hosts)
            item.add_marker(pytest.mark.xdist_group("hosts"))


@pytest.fixture(scope="session")
def harness():
    """dockerd, image, network and apt proxy; stopped again if this session started them."""
    started, _tag = ensure_infra()
    hosts.remove_dead_session_hosts(r"cmsalt-test-(?:relay|smoke)-(\d+)")
    yield
    if started and not KEEP and not hosts.list_hosts():
        hosts.teardown_all(stop_daemons=True)


@pytest.fixture(scope="session")
def smoke_host(harness):
    host = hosts.boot(**SMOKE, keep=KEEP, reuse=REUSE)
    yield host
    if not KEEP:
        hosts.destroy(host)


@pytest.fixture(scope="session")
def relay_boot(harness):
    host = hosts.boot(**RELAY, pillar_dir=PILLAR, keep=KEEP, reuse=REUSE)
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
