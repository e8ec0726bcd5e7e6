"""The session relay's own TURN server (chatmail.turn, Debian's coturn): a
Delta Chat account gets time-limited credentials through IMAP METADATA, a
TURN allocation with them succeeds (over UDP, TCP and TLS on 5349 with the
domain's certificate, and with Debian's turnutils_uclient), expired and
forged credentials get 401, and permissions for peers in loopback, private
(also the test network the relay itself sits on) and link-local ranges get
403 while a public peer is permitted.

The relay and the test machine share a private network (172.31.x): that is
fine for the client side (coturn's denied-peer-ip restricts the *peers* a
client may reach through the relay, not who may allocate), and it makes the
refusals stronger: the relay's own address is such a peer and is refused."""

import base64
import hashlib
import hmac
import ipaddress
import os
import re
import socket
import ssl
import struct
import time

import pytest

from .conftest import DOMAINS
from .test_relay import advertised

pytestmark = pytest.mark.hosts

DOMAIN = DOMAINS[0]
MAGIC = 0x2112A442
# STUN/TURN methods and classes (RFC 8489, RFC 8656)
ALLOCATE, REFRESH, CREATE_PERMISSION = 0x003, 0x004, 0x008
SUCCESS, ERROR = 0x100, 0x110
USERNAME, MESSAGE_INTEGRITY, ERROR_CODE = 0x0006, 0x0008, 0x0009
LIFETIME, XOR_PEER_ADDRESS, REALM, NONCE = 0x000D, 0x0012, 0x0014, 0x0015
XOR_RELAYED_ADDRESS, REQUESTED_TRANSPORT = 0x0016, 0x0019
UDP = 17


def _attr(kind, value):
    pad = b"\0" * (-len(value) % 4)
    return struct.pack("!HH", kind, len(value)) + value + pad


def _xor_address(ip, port):
    addr = ipaddress.ip_address(ip)
    xport = port ^ (MAGIC >> 16)
    if addr.version == 4:
        xaddr = int(addr) ^ MAGIC
        return struct.pack("!BBHI", 0, 1, xport, xaddr)
    raise NotImplementedError("IPv4 peers only")


def _unxor_address(value):
    family, xport = value[1], struct.unpack("!H", value[2:4])[0]
    assert family == 1, value
    ip = ipaddress.ip_address(struct.unpack("!I", value[4:8])[0] ^ MAGIC)
    return str(ip), xport ^ (MAGIC >> 16)


def _parse(data):
    kind, length, magic = struct.unpack("!HHI", data[:8])
    assert magic == MAGIC, data
    attrs, pos = {}, 20
    while pos < 20 + length:
        akind, alen = struct.unpack("!HH", data[pos : pos + 4])
        attrs.setdefault(akind, data[pos + 4 : pos + 4 + alen])
        pos += 4 + alen + (-alen % 4)
    return kind, attrs


class TurnClient:
    """A minimal TURN client (RFC 8656 long-term credentials) over one
    socket: enough to allocate, create permissions and free the allocation."""

    def __init__(self, ip, port=3478, transport="udp", tls_ctx=None, server_hostname=None):
        if transport == "udp":
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sock.connect((ip, port))
        else:
            raw = socket.create_connection((ip, port), timeout=10)
            self.sock = (
                tls_ctx.wrap_socket(raw, server_hostname=server_hostname) if tls_ctx else raw
            )
        self.sock.settimeout(10)
        self.stream = transport != "udp"
        self.user = self.key = self.realm = self.nonce = None

    def close(self):
        self.sock.close()

    def _recv(self):
        if not self.stream:
            return self.sock.recv(65536)
        head = self._read(20)
        return head + self._read(struct.unpack("!H", head[2:4])[0])

    def _read(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("TURN server closed the connection")
            buf += chunk
        return buf

    def request(self, method, attrs=b"", auth=True):
        """Send one request; return (class, attributes).  With credentials
        set, the request carries USERNAME/REALM/NONCE/MESSAGE-INTEGRITY."""
        txid = os.urandom(12)
        body = attrs
        if auth and self.user is not None:
            body += _attr(USERNAME, self.user.encode())
            body += _attr(REALM, self.realm)
            body += _attr(NONCE, self.nonce)
            head = struct.pack("!HHI", method, len(body) + 24, MAGIC) + txid
            mac = hmac.new(self.key, head + body, hashlib.sha1).digest()
            body += _attr(MESSAGE_INTEGRITY, mac)
        msg = struct.pack("!HHI", method, len(body), MAGIC) + txid + body
        for _ in range(5):
            self.sock.send(msg)
            try:
                while True:
                    kind, rattrs = _parse(self._recv())
                    if kind & ~0x110 == method:
                        return kind & 0x110, rattrs
            except TimeoutError:
                if self.stream:
                    raise
        raise TimeoutError("no answer from the TURN server")

    def allocate(self, user, password):
        """Allocate with the given credentials; return (error code or None,
        relayed (ip, port) or None)."""
        transport = _attr(REQUESTED_TRANSPORT, bytes([UDP, 0, 0, 0]))
        cls, attrs = self.request(ALLOCATE, transport, auth=False)
        assert cls == ERROR and error_code(attrs) == 401, attrs  # the challenge
        self.realm, self.nonce = attrs[REALM], attrs[NONCE]
        self.user = user
        self.key = hashlib.md5(f"{user}:{self.realm.decode()}:{password}".encode()).digest()
        cls, attrs = self.request(ALLOCATE, transport)
        if cls == ERROR:
            return error_code(attrs), None
        return None, _unxor_address(attrs[XOR_RELAYED_ADDRESS])

    def permit(self, peer_ip):
        """CreatePermission for a peer: None on success, else the error code."""
        cls, attrs = self.request(
            CREATE_PERMISSION, _attr(XOR_PEER_ADDRESS, _xor_address(peer_ip, 9))
        )
        return None if cls == SUCCESS else error_code(attrs)

    def free(self):
        """Refresh with lifetime 0: the allocation (and its quota) is freed."""
        cls, attrs = self.request(REFRESH, _attr(LIFETIME, struct.pack("!I", 0)))
        assert cls == SUCCESS, error_code(attrs)


def error_code(attrs):
    value = attrs[ERROR_CODE]
    return (value[2] & 7) * 100 + value[3]


@pytest.fixture(scope="module")
def turn(relay):
    """(host, port, user, password) as chatmail-metadata hands them to a
    freshly created account."""
    value = advertised(relay, "/shared/vendor/deltachat/turn")
    # the value after the entry's name and its literal's size: host:port:user:password
    match = re.search(r"([^\s:()]+):(\d+):(\d+):([A-Za-z0-9+/=]+)", value)
    assert match, value
    host, port, user, cred = match.groups()
    return host, int(port), user, cred


def secret_of(relay):
    path = f"/etc/chatmail/secrets/turn_secret.{DOMAIN}.generated"
    return relay.exec("head", "-n", "1", path).stdout.strip()


def password_for(secret, user):
    return base64.b64encode(
        hmac.new(secret.encode(), user.encode(), hashlib.sha1).digest()
    ).decode()


def test_metadata_names_the_relays_own_turn_server(relay, turn):
    host, port, user, cred = turn
    assert (host, port) == (DOMAIN, 3478)
    # valid for days (the reference's lifetime), not forever
    assert time.time() + 86400 < int(user) < time.time() + 30 * 86400
    # made with the secret generated on the host, which only root and the
    # metadata daemon's group can read, and which is in no unit or ini
    assert cred == password_for(secret_of(relay), user)
    assert relay.exec(
        "stat", "-c", "%a %U %G", f"/etc/chatmail/secrets/turn_secret.{DOMAIN}.generated"
    ).stdout.split() == [
        "640",
        "root",
        "chatmail-metadata",
    ]
    assert relay.exec("systemctl", "is-active", "coturn").stdout.strip() == "active"


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_allocation_with_metadata_credentials(relay, turn, transport):
    _host, port, user, cred = turn
    client = TurnClient(relay.ip, port, transport)
    try:
        error, relayed = client.allocate(user, cred)
        assert error is None, error
        # one realm per host: the primary domain's (coturn's static secrets
        # take no per-domain realm); every domain's secret is accepted in it
        assert client.realm.decode() in DOMAINS
        assert relayed[0] == relay.ip and 49152 <= relayed[1] <= 65535, relayed
        # a public peer may be reached ...
        assert client.permit("203.0.113.7") is None
        # ... the host itself, its networks and other special ranges not
        for peer in (
            "127.0.0.1",
            "127.8.9.10",
            relay.ip,
            "10.1.2.3",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
        ):
            assert client.permit(peer) == 403, peer
        client.free()
    finally:
        client.close()


def test_tls_port_serves_the_domains_certificate(relay, turn):
    _host, _port, user, cred = turn
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    client = TurnClient(relay.ip, 5349, "tls", tls_ctx=ctx, server_hostname=DOMAIN)
    try:
        served = client.sock.getpeercert(binary_form=True)
        assert client.sock.version() in ("TLSv1.2", "TLSv1.3")
        error, _relayed = client.allocate(user, cred)
        assert error is None, error
        # the certificate of the primary domain, which is also the realm
        realm = client.realm.decode()
        pem = relay.exec("cat", f"/etc/chatmail/tls/{realm}/fullchain.pem").stdout
        first = pem.split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
        assert served == ssl.PEM_cert_to_DER_cert(first)
        client.free()
    finally:
        client.close()


def test_expired_and_forged_credentials_get_401(relay, turn):
    _host, port, user, cred = turn
    secret = secret_of(relay)
    expired = str(int(time.time()) - 60)
    cases = {
        "expired": (expired, password_for(secret, expired)),
        "forged password": (user, base64.b64encode(os.urandom(20)).decode()),
        "forged secret": (user, password_for("not-the-secret", user)),
        "tampered expiry": (str(int(user) + 86400), cred),
    }
    for name, (tuser, tpass) in cases.items():
        client = TurnClient(relay.ip, port)
        try:
            error, relayed = client.allocate(tuser, tpass)
            assert error == 401 and relayed is None, name
        finally:
            client.close()


def test_turnutils_uclient_allocates(relay, turn):
    """Debian's own client (coturn ships turnutils_uclient), run on the relay:
    allocate with the credentials from METADATA, bind a channel to a public
    peer and send to it; forged credentials get 401."""
    _host, port, user, cred = turn

    def uclient(password, seconds, messages):
        # -c: no rtcp; -e: the peer address; -m/-n: one client, `messages` sent
        proc = relay.exec(
            *("timeout", str(seconds), "turnutils_uclient", "-v", "-u", user, "-w", password),
            *("-p", str(port), "-n", str(messages), "-m", "1", "-c", "-e", "203.0.113.7"),
            relay.ip,
            check=False,
        )
        return proc.stdout + proc.stderr

    out = uclient(cred, 60, 5)
    assert "error" not in out.lower(), out
    assert "Received relay addr" in out, out
    assert re.search(r"cb response received: *\n.*success", out), out
    # five messages sent through the relay (the peer does not answer)
    assert "tot_send_msgs=5" in out, out
    # and with forged credentials: 401 and nothing allocated
    out = uclient("forged", 10, 1)
    # (uclient keeps answering the 401 challenge until its timeout)
    assert "allocate response received" in out, out
    assert "Received relay addr" not in out and "success" not in out, out
