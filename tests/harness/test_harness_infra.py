"""Harness pieces that need dockerd and a test network (no hosts): what a fresh
machine must survive.

- A server that listens on the slot's gateway address works in a process that
  has set up nothing before it (issue 10: the acceptance push gateway bound the
  address before any fixture had created the network).
- nsd answers every query while zones are rewritten (a restart made the
  relays' resolver back off and time out later checks).
- Slots: two processes get different slots, networks and host names.
- A bridge left in the kernel by an earlier dockerd whose data root was
  wiped (a cold run) is removed before the slot's network is used: it kept
  the subnet's route and the hosts could not reach the apt proxy.
"""

import json
import subprocess
import sys
import threading
import time

import dns.message
import dns.query
import dns.rdatatype
import pytest

from tests.harness import GATEWAY, NETWORK, PREFIX, REPO, SLOT, network_address, scoped
from tests.harness import dns as hdns
from tests.harness import network as hnetwork
from tests.harness.docker import docker

pytestmark = pytest.mark.hosts

FRESH_PROCESS = """
import json, socket
from tests.harness import SLOT, acceptance_relays as ar
# nothing of the harness was set up by this process before this line
gateway = ar.PushGateway()
host, port = gateway.server.server_address
with socket.create_connection((host, port), timeout=5):
    pass
gateway.close()
print(json.dumps({"slot": SLOT, "address": host}))
"""


def test_gateway_server_in_a_process_that_set_up_nothing():
    """A fresh process (a slot of its own) starts the push gateway stand-in
    first thing: it binds to its slot's gateway address and accepts."""
    proc = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["slot"] != SLOT
    assert out["address"] == f"172.31.{77 + out['slot']}.1"


def test_nsd_never_stops_answering_while_zones_change():
    origin = "reload.test"
    hdns.set_zones({origin: hdns.zone_text(origin, ["@ IN A 192.0.2.1"])})
    failures, answers = [], []
    stop = threading.Event()

    def ask():
        query = dns.message.make_query(origin, dns.rdatatype.A)
        while not stop.is_set():
            try:
                reply = dns.query.udp(query, GATEWAY, port=hdns.PORT, timeout=1)
                answers.append(reply.rcode())
            except Exception as exc:  # noqa: BLE001 - any failure to answer counts
                failures.append(repr(exc))
            time.sleep(0.01)

    thread = threading.Thread(target=ask)
    thread.start()
    try:
        for n in range(2, 12):
            hdns.set_zones(
                {
                    origin: hdns.zone_text(origin, [f"@ IN A 192.0.2.{n}"]),
                    f"new{n}.test": hdns.zone_text(f"new{n}.test", ["@ IN A 192.0.2.99"]),
                }
            )
            # set_zones returns once the new zone is served
            reply = dns.query.udp(
                dns.message.make_query(origin, dns.rdatatype.A), GATEWAY, port=hdns.PORT
            )
            assert [r.address for rr in reply.answer for r in rr] == [f"192.0.2.{n}"]
    finally:
        stop.set()
        thread.join()
    assert not failures, failures[:5]
    assert len(answers) > 20 and set(answers) == {0}


def test_zones_set_after_this_slots_nsd_died_are_served():
    """Another process stopping this slot's nsd (a stale pidfile once did)
    must not fail every later host fixture: set_zones starts it again."""
    origin = "revive.test"
    hdns.set_zones({origin: hdns.zone_text(origin, ["@ IN A 192.0.2.7"])})
    assert hdns.stop()
    hdns.set_zones({origin: hdns.zone_text(origin, ["@ IN A 192.0.2.8"])})
    reply = dns.query.udp(
        dns.message.make_query(origin, dns.rdatatype.A), GATEWAY, port=hdns.PORT, timeout=5
    )
    assert [r.address for rr in reply.answer for r in rr] == ["192.0.2.8"]


def test_slot_names_and_network_are_this_processes_own():
    network_address()
    assert scoped("cmsalt-x") == ("cmsalt-x" if SLOT == 0 else f"cmsalt-x-s{SLOT}")
    assert scoped(scoped("cmsalt-x")) == scoped("cmsalt-x")
    subnet = docker(
        "network", "inspect", "--format", "{{(index .IPAM.Config 0).Gateway}}", NETWORK
    ).stdout.strip()
    assert subnet == GATEWAY


def test_a_stale_bridge_holding_a_slot_address_is_removed():
    network_address()
    stale = f"br-stale-s{SLOT}"
    subprocess.run(["ip", "link", "del", stale], capture_output=True)
    subprocess.run(["ip", "link", "add", stale, "type", "bridge"], check=True)
    try:
        subprocess.run(["ip", "addr", "add", f"{PREFIX}.126/32", "dev", stale], check=True)
        assert stale in hnetwork.remove_stale_bridges()
        assert subprocess.run(["ip", "link", "show", stale], capture_output=True).returncode
        net_id = docker("network", "inspect", "--format", "{{.Id}}", NETWORK).stdout.strip()
        ours = subprocess.run(["ip", "link", "show", f"br-{net_id[:12]}"], capture_output=True)
        assert ours.returncode == 0, "the slot's own bridge must stay"
    finally:
        subprocess.run(["ip", "link", "del", stale], capture_output=True)
