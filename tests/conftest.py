"""Repository-wide pytest setup: host fixtures live in tests/hosts/conftest.py.

Suites.  Tests that share hosts form one suite: every acceptance test (three
relays and a client host), the host modules using the session relay
(test_relay, test_status, test_smoke); the fault suite (tests/faults: its
own relay, which it reboots and fills up); every other module is a suite of
its own.  Under pytest-xdist (``-n N``, as ./cmsalt test runs) a suite runs whole
in one worker, so its hosts are converged once, and each worker has its own
harness slot (network, nsd, host names), so suites run side by side.  The
suites that take longest are sent out first (SLOW), the quick ones fill in.

At the end of a session that imported the test-host harness, its slot is
released: its hosts (unless kept), network and nsd are removed, and dockerd
and the apt proxy stop once no other session and no kept host needs them.
Importing the harness takes a slot, so a worker that imported it without
booting anything holds a slot too and must release it like the others: the
last worker out stops the daemons (when only the workers that booted hosts
released, the last of them saw an idle worker's slot busy and left dockerd
and the apt proxy running after the run).
"""

import os
import sys

import pytest

KEEP_VARS = ("CMSALT_KEEP_HOSTS", "CMSALT_REUSE_HOSTS", "CMSALT_ACC_REUSE")
SHARED_RELAY = (
    "tests/hosts/test_relay.py",
    "tests/hosts/test_status.py",
    "tests/hosts/test_smoke.py",
    "tests/hosts/test_turn.py",
    "tests/hosts/test_port443.py",
    "tests/hosts/test_metrics.py",
    "tests/hosts/test_web.py",
    "tests/hosts/test_echobot.py",
)
# modules sharing the fleet suite's master and relays
SHARED_FLEET = ("tests/fleet/test_fleet.py", "tests/fleet/test_fleet_metrics.py")
# Suites by how long they take alone (longest first); the rest follow in
# collection order.
SLOW = [
    "tests/fleet/test_fleet.py",
    "acceptance",
    "hosts-relay",
    "tests/kitchen/test_kitchen.py",
    "faults",
    "tests/hosts/test_tls_ca.py",
    "tests/hosts/test_acme.py",
    "tests/hosts/test_dcaccount.py",
    "tests/hosts/test_ip_relay.py",
    "tests/hosts/test_migrate.py",
    "tests/fleet/test_salt_ssh.py",
    "tests/hosts/test_domain_removal.py",
]


def suite_of(nodeid):
    """The suite (xdist scheduling unit) of a test id."""
    path = nodeid.split("::", 1)[0]
    if path.startswith("tests/acceptance/"):
        return "acceptance"
    if path.startswith("tests/faults/"):
        return "faults"
    if path in SHARED_RELAY:
        return "hosts-relay"
    if path in SHARED_FLEET:
        return SHARED_FLEET[0]
    return path


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class SuiteScheduling(LoadScopeScheduling):
        """LoadScope scheduling with suite_of() as the scope."""

        def _split_scope(self, nodeid):
            return suite_of(nodeid)

    return SuiteScheduling(config, log)


def pytest_sessionfinish(session, exitstatus):
    harness = sys.modules.get("tests.harness")
    if harness is not None:
        harness.release(keep=any(os.environ.get(var) == "1" for var in KEEP_VARS))


def _random_order(config):
    """True when pytest-random-order will shuffle (it is installed, but only
    shuffles when asked to)."""
    if not config.pluginmanager.hasplugin("random_order"):
        return False
    from random_order.config import Config

    return Config(config).is_enabled


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """With pytest-random-order (./cmsalt test --fresh) only modules are
    shuffled: tests inside a module keep their written order.  Otherwise the
    slow suites come first (stable sort: the order inside a suite stays)."""
    if _random_order(config):
        for item in items:
            item.add_marker(pytest.mark.random_order(disabled=True))
        return
    rank = {suite: n for n, suite in enumerate(SLOW)}
    items.sort(key=lambda item: rank.get(suite_of(item.nodeid), len(SLOW)))
