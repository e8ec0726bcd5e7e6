"""Fleet fixtures: a salt master on the CI machine and three systemd relays
running salt-minion on the test network (see tests/harness/fleet_master.py)."""

import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.harness import GATEWAY, dns, ensure_infra, fleet_master, hosts

HERE = Path(__file__).parent
KEEP = os.environ.get("CMSALT_KEEP_HOSTS") == "1"
# Two sessions (engineers, CI, xdist workers) never see each other's hosts: each
# has its own harness slot (network, nsd, container names).
MINIONS = ["fleet1.test", "fleet2.test", "fleet3.test"]
# Short schedule so that a scheduled highstate fires within the test.
FLEET_SETTINGS = {
    "highstate": {"enabled": True, "minutes": 1.5, "splay": 10, "timeout": 900},
    "mine": {"interval": 1},
}


def pillar_file(minion_id):
    return "hosts/" + minion_id.replace(".", "_") + ".sls"


# The fleet's Prometheus runs on the first relay (pillar fleet:prometheus),
# scraping every relay's exporters on its test-network address.
PROMETHEUS = MINIONS[0]
# minion id -> its test-network address, known once the hosts are booted
ADDRESSES = {}


def relay_pillar(domain, extra_params=None):
    """The pillar of one fleet relay: its own domain, DNS through the test nsd;
    once booted, its metrics exporters on its own address (and on the first
    relay the fleet's Prometheus)."""
    lines = [
        f"# pillar of the fleet test relay {domain}",
        "chatmail:",
        "  domains:",
        f"    {domain}: {{}}",
        "  dns:",
        f"    forwarders: [{GATEWAY}]",
    ]
    if domain in ADDRESSES:
        lines += ["  metrics:", f"    listen_address: {ADDRESSES[domain]}"]
    # The hosts share the CI machine's load average (2 cores, several suites):
    # keep account creation from being refused as "overloaded".
    params = {"max_load_1m": 1000, **(extra_params or {})}
    lines.append("  params:")
    lines += [f"    {key}: {value}" for key, value in params.items()]
    if domain == PROMETHEUS and domain in ADDRESSES:
        lines += [
            "fleet:",
            "  prometheus:",
            "    enabled: true",
            f"    listen_address: {ADDRESSES[domain]}",
            "    scrape_interval: 5s",
        ]
    return "\n".join(lines) + "\n"


def write_pillar(pillar_dir, minion_id, **kw):
    path = Path(pillar_dir) / pillar_file(minion_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(relay_pillar(minion_id, **kw))
    return path


def pytest_collection_modifyitems(items):
    for item in items:
        if str(item.fspath).startswith(str(HERE)) and "unit" not in item.fspath.basename:
            item.add_marker(pytest.mark.hosts)
            item.add_marker(pytest.mark.fleet)


def _name(minion_id):
    return "cmsalt-" + minion_id.split(".")[0]


@pytest.fixture(scope="session")
def fleet_pillar():
    path = Path(tempfile.mkdtemp(prefix="cmsalt-fleet-pillar-"))
    for minion_id in MINIONS:
        write_pillar(path, minion_id)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def master(fleet_pillar):
    ensure_infra()
    m = fleet_master.Master(fleet_pillar, fleet_settings=FLEET_SETTINGS).start()
    yield m
    m.cleanup()


@pytest.fixture(scope="session")
def fleet(master):
    """{minion id: Host}: three booted hosts, bootstrapped as minions, keys accepted."""
    specs = [{"name": _name(m), "fqdn": m, "keep": KEEP} for m in MINIONS]
    booted = hosts.boot_many(specs)
    ADDRESSES.update({h.fqdn: h.ip for h in booted})
    for host in booted:
        write_pillar(master.pillar_dir, host.fqdn)
    # The relays' resolver (unbound, forwarding to the slot's nsd) asks for their
    # domains from the first highstate on: nsd must answer for them from the start,
    # or unbound backs off from it and later checks time out.
    dns.set_zones({h.fqdn: dns.zone_text(h.fqdn, [f"@ IN A {h.ip}", f"@ IN MX 10 {h.fqdn}."])
                   for h in booted})  # fmt: skip
    try:
        with ThreadPoolExecutor(len(booted)) as pool:
            list(pool.map(lambda h: fleet_master.bootstrap_minion(h, master), booted))
        master.accept(MINIONS)
        master.wait_ping(MINIONS)
        yield {h.fqdn: h for h in booted}
    finally:
        if not KEEP:
            for host in booted:
                hosts.destroy(host)


@pytest.fixture(scope="session")
def fleet_converged(master, fleet):
    """The first highstate of all three relays, started from the master.

    The Prometheus host's scrape targets come from the other relays' mine
    entries, which exist only after their own first highstate: once the mine
    is updated, fleet.prometheus runs there again, so the fleet is converged
    (a later scheduled highstate finds nothing to change)."""
    results = fleet_master.highstate(master, MINIONS)
    if all(r.ok for r in results.values()):
        master.salt(MINIONS, "mine.update")
        master.salt([PROMETHEUS], "state.apply", "fleet.prometheus", "queue=True", timeout=900)
    return results


@pytest.fixture(scope="session")
def relays(fleet, fleet_converged):
    failed = {m: r.summary() for m, r in fleet_converged.items() if not r.ok}
    if failed:
        pytest.fail(f"fleet highstate failed: {failed}", pytrace=False)
    return fleet


def pytest_configure(config):
    config.addinivalue_line("markers", "fleet: salt master + minions on systemd test hosts")
