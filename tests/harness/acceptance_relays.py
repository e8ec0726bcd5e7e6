"""Two converged relays with real DNS for the acceptance suite and the e2e benchmark.

Each relay gets a pillar written into a temporary directory (its domain, the
harness nsd as DNS forwarder and authoritative server, a push gateway on the
CI machine), is booted and converged in parallel with the others, and its
zone fragment (`/etc/chatmail/zones/<domain>.zone`, written by the tree) is
published through the harness nsd so the relays find each other's MX, DKIM
keys and MTA-STS records as on the internet.
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.saltopts import write_pillar_tree

from . import GATEWAY, dns, ensure_infra, hosts, network_address

ZONE_DIR = "/etc/chatmail/zones"
# Per-domain settings of a relay's IP-address domain (RelaySpec.ip_domain): a small
# quota, so the storage tests can fill a mailbox past it with real files (and a
# per-domain value that differs from the named domain's 500M).
IP_DOMAIN_SETTINGS = {"max_mailbox_size": "20M"}


@dataclass
class RelaySpec:
    name: str
    domain: str
    ip: str = "auto"  # see hosts.boot: "auto" is a free address of .128-.254
    params: dict = field(default_factory=dict)
    limits: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # more chatmail: pillar keys (merged)
    ip_domain: bool = False  # also serve the host's own IPv4 address as a chatmail domain


@dataclass
class Relay:
    spec: RelaySpec
    host: hosts.Host
    first: hosts.ConvergeResult | None = None

    @property
    def domain(self):
        return self.spec.domain

    @property
    def ip(self):
        return self.host.ip


class PushGateway:
    """A stand-in for the push gateway: records every POST, answers 200 (410 for
    tokens in `gone`, 503 for tokens in `failing`). Listens on the slot's gateway
    address unless `host` says otherwise."""

    def __init__(self, host=None, port=0):
        host = host or network_address()
        self.requests = []
        self.gone = set()
        self.failing = set()
        self.cond = threading.Condition()
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                token = body.decode("utf-8", "replace").strip()
                with gateway.cond:
                    gateway.requests.append((self.path, token, time.time()))
                    gateway.cond.notify_all()
                code = 410 if token in gateway.gone else 503 if token in gateway.failing else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}/notify"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def tokens(self):
        with self.cond:
            return [token for _path, token, _t in self.requests]

    def wait_for(self, token, timeout=60, count=1):
        """True once `token` was posted `count` times."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.tokens_locked().count(token) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
        return True

    def tokens_locked(self):
        return [token for _path, token, _t in self.requests]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def pillar_for(spec, push_url, ip=None):
    domains = {spec.domain: {}}
    if spec.ip_domain:
        if not ip:
            raise ValueError(f"{spec.name}: ip_domain needs the host's address")
        domains[ip] = dict(IP_DOMAIN_SETTINGS)
    chatmail = {
        "domains": domains,
        "params": {"push_notification_url": push_url, **spec.params},
        "dns": {"check": "warn", "forwarders": [GATEWAY], "nameservers": [GATEWAY]},
    }
    if spec.limits:
        chatmail["limits"] = dict(spec.limits)
    return _merge(chatmail, spec.extra)


def _merge(base, over):
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def write_pillar(directory, spec, push_url, ip=None):
    """Pillar tree for one relay."""
    return write_pillar_tree(directory, pillar_for(spec, push_url, ip))


def bootstrap_zone(domain, ip):
    """A and MX only: enough for the relays to find each other while converging."""
    return dns.zone_text(domain, [f"@ IN A {ip}", f"@ IN MX 10 {domain}."])


def published_zone(relay):
    """The zone of a relay's domain: nsd's SOA/NS plus the fragment the tree wrote."""
    fragment = relay.host.exec("cat", f"{ZONE_DIR}/{relay.domain}.zone").stdout
    lines = [line for line in fragment.splitlines() if line.strip() and not line.startswith(";")]
    return dns.zone_text(relay.domain, lines)


def publish(relays):
    dns.set_zones({r.domain: published_zone(r) for r in relays})


def up(specs, pillar_root, push_url, keep=False):
    """Boot and converge every relay in parallel; returns [Relay] (first converge kept)."""
    ensure_infra()

    def boot(spec):
        # the pillar is written once the address is known (IP-address domains)
        pillar = Path(pillar_root) / spec.name
        pillar.mkdir(parents=True, exist_ok=True)
        host = hosts.boot(spec.name, spec.domain, ip=spec.ip, pillar_dir=pillar, keep=keep)
        write_pillar(pillar, spec, push_url, host.ip)
        return Relay(spec, host)

    def converge(relay):
        relay.first = hosts.converge(relay.host)
        return relay

    with ThreadPoolExecutor(max_workers=len(specs)) as pool:
        relays = list(pool.map(boot, specs))
        dns.set_zones({r.domain: bootstrap_zone(r.domain, r.ip) for r in relays})
        relays = list(pool.map(converge, relays))
    if all(r.first.ok for r in relays):
        publish(relays)
    return relays


def down(relays):
    for relay in relays:
        hosts.destroy(relay.host)


class MailSink:
    """A remote MX stand-in on the gateway address: STARTTLS (self-signed) on port 25,
    stores every message it accepts. Publish it with `sink_zone(domain)`."""

    def __init__(self, workdir, host=None, port=25, cert=None, key=None):
        import ssl
        import subprocess

        from aiosmtpd.controller import Controller

        host = host or network_address()
        workdir = Path(workdir)
        if cert is None:
            cert, key = workdir / "sink.crt", workdir / "sink.key"
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", "/CN=sink.test",
                 "-keyout", str(key), "-out", str(cert)],
                check=True, capture_output=True,
            )  # fmt: skip
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(cert), str(key))
        self.messages = []
        self.cond = threading.Condition()
        sink = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                with sink.cond:
                    sink.messages.append((envelope.mail_from, list(envelope.rcpt_tos),
                                          envelope.original_content or envelope.content,
                                          session.peer[0], bool(session.ssl)))  # fmt: skip
                    sink.cond.notify_all()
                return "250 OK"

        self.controller = Controller(
            Handler(), hostname=host, port=port, tls_context=ctx, require_starttls=True,
            server_hostname="sink.test", ready_timeout=10,
        )  # fmt: skip
        self.controller.start()

    def wait(self, predicate, timeout=60):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = [m for m in self.messages if predicate(m)]
                if found:
                    return found[0]
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def close(self):
        self.controller.stop()


def sink_zone(domain="sink.test"):
    return dns.zone_text(domain, [f"@ IN A {GATEWAY}", f"@ IN MX 10 {domain}."])


class TestCA:
    """A private CA made for one run (openssl): the relays get it as chatmail:tls_ca
    (tls mode "ca") and as a trusted CA, so relay-to-relay SMTP can verify peers."""

    __test__ = False  # not a pytest class

    def __init__(self, workdir):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cert_path, self.key_path = self.dir / "ca.pem", self.dir / "ca.key"
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "30", "-subj", "/CN=chatmail-salt acceptance CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout", self.key_path, "-out", self.cert_path,
        )  # fmt: skip
        self.cert = self.cert_path.read_text()
        self.key = self.key_path.read_text()

    def issue(self, name):
        """(cert path, key path) of a server certificate for `name` signed by this CA."""
        key, csr, cert = (self.dir / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
        _openssl(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-subj", f"/CN={name}", "-keyout", key, "-out", csr,
        )  # fmt: skip
        ext = self.dir / f"{name}.ext"
        ext.write_text(f"subjectAltName=DNS:{name}\nextendedKeyUsage=serverAuth\n")
        _openssl(
            "x509", "-req", "-in", csr, "-CA", self.cert_path, "-CAkey", self.key_path,
            "-CAcreateserial", "-days", "30", "-extfile", ext, "-out", cert,
        )  # fmt: skip
        return cert, key

    def pillar(self, domains):
        return {
            "domains": {domain: {"tls": {"mode": "ca"}} for domain in domains},
            "tls_ca": {"cert": self.cert, "key": self.key},
            "trusted_cas": [self.cert],
            "smtp_tls": {"unverified_nexthops": []},
        }


def _openssl(*args):
    import subprocess

    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def tree_has_tls_ca():
    """True when the state tree knows tls mode "ca" (chatmail:tls_ca, trusted_cas,
    smtp_tls:unverified_nexthops)."""
    from . import REPO

    defaults = (REPO / "salt/chatmail/defaults.yaml").read_text()
    tls_states = (REPO / "salt/chatmail/tls/config.sls").read_text()
    return (
        "tls_ca:" in defaults
        and "trusted_cas:" in defaults
        and "unverified_nexthops:" in defaults
        and "'ca'" in tls_states
    )
