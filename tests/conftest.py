"""Repository-wide pytest setup: host fixtures live in tests/hosts/conftest.py.

At the end of a session that used the test-host harness, its slot is released:
its hosts (unless kept), network and nsd are removed, and dockerd and the apt
proxy stop once no other session and no kept host needs them.
"""

import os
import sys

import pytest

KEEP_VARS = ("CMSALT_KEEP_HOSTS", "CMSALT_REUSE_HOSTS", "CMSALT_ACC_REUSE")


def pytest_sessionfinish(session, exitstatus):
    harness = sys.modules.get("tests.harness")
    if harness is not None and harness.used():
        harness.release(keep=any(os.environ.get(var) == "1" for var in KEEP_VARS))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """With pytest-random-order (./cmsalt test --fresh) only modules are
    shuffled: tests inside a module keep their written order."""
    if config.pluginmanager.hasplugin("random_order"):
        for item in items:
            item.add_marker(pytest.mark.random_order(disabled=True))
