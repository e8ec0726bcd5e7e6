"""Fault suite: one relay (its own host, since a reboot or a full disk would
disturb any other suite), a stand-in push gateway and a foreign MTA on port
25 (the CI machine, with a DKIM key served by the harness nsd).

The relay has generous rate limits (the CI machine is every client) and
limits:queue_retry 10s: deferred mail is retried after 10 s instead of
postfix's 300 s, so a fault that defers mail settles within the test.
"""

import tempfile

import pytest

from tests.harness import acceptance_relays as ar
from tests.harness import dns, ensure_infra, network_address

from .load import RELAY_LIMITS, RELAY_PARAMS, dkim_key, peer_zone

DOMAIN = "faults1.test"
PEER_DOMAIN = "faultpeer.test"
PARAMS = RELAY_PARAMS
LIMITS = dict(RELAY_LIMITS, queue_retry="10s")


@pytest.fixture(scope="session")
def push_gateway():
    ensure_infra()
    gateway = ar.PushGateway(network_address(), 0)
    yield gateway
    gateway.close()


@pytest.fixture(scope="session")
def relay(push_gateway):
    spec = ar.RelaySpec("cmsalt-faults", DOMAIN, params=PARAMS, limits=LIMITS)
    with tempfile.TemporaryDirectory(prefix="cmsalt-faults-pillar-") as tmp:
        up = ar.up([spec], tmp, push_gateway.url)
        try:
            if not up[0].first.ok:
                pytest.fail(f"{DOMAIN} highstate failed:\n{up[0].first.summary()}", pytrace=False)
            yield up[0]
        finally:
            ar.down(up)


@pytest.fixture(scope="session")
def peer(relay):
    """(domain, DKIM private key) of a foreign relay at the CI machine's address."""
    key, txt = dkim_key()
    dns.set_zone(
        PEER_DOMAIN, dns.zone_text(PEER_DOMAIN, peer_zone(PEER_DOMAIN, txt, network_address()))
    )
    return PEER_DOMAIN, key
