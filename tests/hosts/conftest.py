"""Session fixtures: systemd test hosts on the private dockerd (see tests/harness)."""

import os
from pathlib import Path

import pytest

from tests.harness import CACHE, addr, ensure_infra, hosts

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
# Every session (and xdist worker) has its own harness slot: its own network, nsd
# and container names, so concurrent runs never touch each other's hosts.  Kept
# and reused hosts have fixed addresses (.20 and .21 of the slot's subnet); reuse
# them from a later session with the same CMSALT_SLOT.
# The relay's pillar switches the echobot on; its Python packages come from the
# wheels ./cmsalt made for requirements-dev.txt (pillar lookup:pip:args).
WHEELS = (str(CACHE / "wheels"), "/wheels", "ro")
RELAY = {
    "name": "cmsalt-test-relay",
    "fqdn": "chat1.test",
    "ip": addr(20) if KEEP else "auto",
    "extra_mounts": [WHEELS],
}
SMOKE = {"name": "cmsalt-test-smoke", "fqdn": "smoke.test", "ip": addr(21) if KEEP else "auto"}


def pytest_collection_modifyitems(items):
    # (which worker runs what under xdist: tests/conftest.py suite_of)
    for item in items:
        if str(item.fspath).startswith(str(HERE)):
            item.add_marker(pytest.mark.hosts)


@pytest.fixture(scope="session")
def harness():
    """dockerd, image, this slot's network and the apt proxy (released at the end
    of the session by tests/conftest.py)."""
    ensure_infra()


def require_ok(result, what="relay"):
    """Fail the test (without a traceback) unless a ConvergeResult is ok."""
    if not result.ok:
        pytest.fail(f"{what} highstate failed:\n" + result.summary(), pytrace=False)


@pytest.fixture(scope="session")
def smoke_host(harness):
    with hosts.booted(**SMOKE, keep=KEEP, reuse=REUSE) as host:
        yield host


@pytest.fixture(scope="session")
def relay_boot(harness):
    with hosts.booted(**RELAY, pillar_dir=PILLAR, keep=KEEP, reuse=REUSE) as host:
        yield host, hosts.converge(host)


@pytest.fixture(scope="session")
def relay(relay_boot):
    """The relay host after a successful highstate (tests using it fail otherwise)."""
    host, first = relay_boot
    require_ok(first)
    return host
