"""Fixtures for the chatmail Salt modules: a salt loader over the repository's
state tree (custom modules synced through salt://_modules like on a minion)
and a real authoritative DNS server (Debian's nsd) on a free loopback port."""

import pathlib
import shutil
import subprocess
import time

import pytest
from saltfactories.utils.functional import Loaders

from tests import saltopts
from tests.harness.ports import free_port

NSD = shutil.which("nsd") or "/usr/sbin/nsd"


@pytest.fixture(scope="session")
def minion_opts(tmp_path_factory):
    return saltopts.minion_opts(tmp_path_factory.mktemp("minion"), "relay.test")


@pytest.fixture(scope="session")
def loaders(minion_opts):
    yield Loaders(minion_opts)
    # salt buffers early log records in a deferred stderr handler and flushes
    # them at exit, after pytest closed its capture: hand them over now
    import salt._logging.impl

    salt._logging.impl.shutdown_temp_handler()


@pytest.fixture
def modules(loaders):
    return loaders.modules


@pytest.fixture
def states(loaders):
    return loaders.states


SOA = (
    "$ORIGIN {zone}.\n"
    "@ 3600 IN SOA ns.{zone}. hostmaster.{zone}. 1 7200 3600 1209600 3600\n"
    "@ 3600 IN NS ns.{zone}.\n"
    "ns 3600 IN A 127.0.0.1\n"
)


def zone_text(zone, body):
    """A complete zone: SOA + NS (+ glue) wrapped around ``body``."""
    return SOA.format(zone=zone) + body


class NsdServer:
    def __init__(self, workdir, zones):
        self.workdir = workdir
        self.port = free_port(udp=True)
        self.zones = zones
        self.proc = None

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def start(self):
        conf = [
            "server:",
            f"  ip-address: 127.0.0.1@{self.port}",
            f"  port: {self.port}",
            "  do-ip6: no",
            "  server-count: 1",
            '  username: ""',
            '  chroot: ""',
            '  database: ""',
            f'  zonesdir: "{self.workdir}"',
            f'  zonelistfile: "{self.workdir}/zone.list"',
            f'  xfrdfile: "{self.workdir}/xfrd.state"',
            f'  pidfile: "{self.workdir}/nsd.pid"',
            f'  logfile: "{self.workdir}/nsd.log"',
            "  verbosity: 1",
            "remote-control:",
            "  control-enable: no",
        ]
        for zone, text in self.zones.items():
            (self.workdir / f"{zone}.zone").write_text(text)
            conf += ["zone:", f"  name: {zone}", f'  zonefile: "{zone}.zone"']
        (self.workdir / "nsd.conf").write_text("\n".join(conf) + "\n")
        with open(self.workdir / "nsd.stderr", "wb") as err:
            self.proc = subprocess.Popen(
                [NSD, "-d", "-c", str(self.workdir / "nsd.conf")],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=self.workdir,
            )
        self._wait_ready()

    def _wait_ready(self):
        import dns.message
        import dns.query
        import dns.rcode

        zone = next(iter(self.zones))
        query = dns.message.make_query(f"{zone}.", "SOA")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    "nsd exited: " + (self.workdir / "nsd.stderr").read_text(errors="replace")
                )
            try:
                response = dns.query.udp(query, "127.0.0.1", port=self.port, timeout=0.5)
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.05)
                continue
            if response.rcode() == dns.rcode.NOERROR and response.answer:
                return
            time.sleep(0.05)
        raise RuntimeError("nsd did not start serving in time")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def nsd_factory(tmp_path_factory):
    if not pathlib.Path(NSD).exists():
        pytest.skip("nsd is not installed (apt-get install -y nsd)")
    started = []

    def start(zones):
        # the free port may be taken between probing and nsd binding it: retry
        for attempt in range(3):
            server = NsdServer(tmp_path_factory.mktemp("nsd"), zones)
            started.append(server)
            try:
                server.start()
            except RuntimeError:
                server.stop()
                if attempt == 2:
                    raise
                continue
            return server

    yield start
    for server in started:
        server.stop()
