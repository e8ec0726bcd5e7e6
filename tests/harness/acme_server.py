"""A small RFC 8555 ACME server standing in for Let's Encrypt in host tests.

It serves the directory, newNonce, newAccount, newOrder, authorizations,
http-01 challenges, finalize and certificate download over HTTPS on the
harness gateway.  A challenge is validated by really fetching
``http://<name>/.well-known/acme-challenge/<token>`` from the relay (port 80;
``resolve`` maps names to addresses, as DNS would).  Certificates are signed
by an intermediate of a CA made per run; ``ca_pem`` is what relays must
trust (pillar ``chatmail:trusted_cas``) both for this server's own HTTPS
certificate and for the certificates it issues.

Every request's JWS is checked: flattened JSON serialisation, a protected
header with alg, a nonce this server issued (once), the request URL, and
either ``jwk`` (newAccount) or ``kid`` (a known account); the signature is
verified (ES256/ES384/ES512, RS256).
"""

import base64
import datetime
import hashlib
import http.client
import ipaddress
import json
import secrets
import ssl
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from . import network_address

PROBLEM = "urn:ietf:params:acme:error:"
EC_ALGS = {
    "ES256": (hashes.SHA256(), 32),
    "ES384": (hashes.SHA384(), 48),
    "ES512": (hashes.SHA512(), 66),
}
EC_CURVES = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}


def b64u(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64u(text):
    text = text.encode() if isinstance(text, str) else text
    return base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4))


def utc(dt):
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


class AcmeError(Exception):
    def __init__(self, status, kind, detail):
        super().__init__(detail)
        self.status, self.kind, self.detail = status, kind, detail


def jwk_public_key(jwk):
    """(public key, RFC 7638 thumbprint) of a JWK dict; raises AcmeError."""
    try:
        if jwk["kty"] == "EC":
            members = {k: jwk[k] for k in ("crv", "kty", "x", "y")}
            numbers = ec.EllipticCurvePublicNumbers(
                int.from_bytes(unb64u(jwk["x"]), "big"),
                int.from_bytes(unb64u(jwk["y"]), "big"),
                EC_CURVES[jwk["crv"]],
            )
        elif jwk["kty"] == "RSA":
            members = {k: jwk[k] for k in ("e", "kty", "n")}
            numbers = rsa.RSAPublicNumbers(
                int.from_bytes(unb64u(jwk["e"]), "big"), int.from_bytes(unb64u(jwk["n"]), "big")
            )
        else:
            raise KeyError(jwk["kty"])
        key = numbers.public_key()
    except (KeyError, TypeError, ValueError) as exc:
        raise AcmeError(400, "badPublicKey", f"unusable jwk: {exc}") from None
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":")).encode()
    return key, b64u(hashlib.sha256(canonical).digest())


def verify_signature(key, alg, signing_input, signature):
    try:
        if alg in EC_ALGS and isinstance(key, ec.EllipticCurvePublicKey):
            digest, size = EC_ALGS[alg]
            if len(signature) != 2 * size:
                raise InvalidSignature
            r = int.from_bytes(signature[:size], "big")
            s = int.from_bytes(signature[size:], "big")
            key.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(digest))
        elif alg == "RS256" and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
        else:
            raise AcmeError(400, "badSignatureAlgorithm", f"unsupported alg {alg!r}")
    except InvalidSignature:
        raise AcmeError(403, "malformed", "JWS signature does not verify") from None


class TestCA:
    """A root CA and an issuing intermediate, made fresh for one run."""

    def __init__(self, name="chatmail-salt ACME stand-in"):
        now = datetime.datetime.now(datetime.UTC)
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = self._ca_cert(f"{name} root", self.root_key, None, None, now)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = self._ca_cert(f"{name} issuing CA", self.key, self.root, self.root_key, now)

    @staticmethod
    def _ca_cert(cn, key, issuer, issuer_key, now):
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        usage = x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False,
        )  # fmt: skip
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer.subject if issuer else subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(
                x509.BasicConstraints(ca=True, path_length=None if issuer is None else 0),
                critical=True,
            )
            .add_extension(usage, critical=True)
            .sign(issuer_key or key, hashes.SHA256())
        )

    @property
    def root_pem(self):
        return self.root.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def chain_pem(self):
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def issue(self, public_key, dns_names=(), ips=(), not_before=None, not_after=None):
        now = datetime.datetime.now(datetime.UTC)
        sans = [x509.DNSName(n) for n in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        cn = (list(dns_names) + list(ips))[0]
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - datetime.timedelta(hours=1))
            .not_valid_after(not_after or now + datetime.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )


class AcmeServer:
    """The stand-in; start() it, use ``directory_url``, stop() it.

    resolve: {name: address} used for http-01 validation (unknown names: the
    name itself is connected to).  lifetime/backdate: validity of issued
    certificates (acmetool renews once a third of it, at most 30 days, is
    left).  ``issued`` lists every certificate handed out; ``validations``
    every challenge fetch (name, token, ok)."""

    def __init__(self, host=None, port=0, resolve=None, terms_of_service=None):
        host = host or network_address()
        self.ca = TestCA()
        self.resolve = dict(resolve or {})
        self.terms_of_service = terms_of_service
        self.lifetime = datetime.timedelta(days=7)
        self.backdate = datetime.timedelta(hours=1)
        self.issued = []
        self.validations = []
        self.lock = threading.Lock()
        self.nonces = set()
        self.accounts = {}  # id -> {"key", "thumbprint", "contact", "tos"}
        self.orders = {}
        self.authzs = {}
        self.challenges = {}
        self.certs = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="cmsalt-acme-")
        self.httpd = ThreadingHTTPServer((host, port), self._handler())
        self.httpd.daemon_threads = True
        self.base = f"https://{host}:{self.httpd.server_address[1]}"
        self.directory_url = self.base + "/directory"
        self.terms_url = terms_of_service or ""
        self._wrap_tls(host)
        self.thread = None

    def _wrap_tls(self, host):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self.ca.issue(key.public_key(), ips=[host])
        tmp = Path(self._tmp.name)
        (tmp / "server.pem").write_bytes(
            cert.public_bytes(serialization.Encoding.PEM)
            + self.ca.cert.public_bytes(serialization.Encoding.PEM)
        )
        (tmp / "server.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(tmp / "server.pem", tmp / "server.key")
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)

    def start(self):
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self._tmp.cleanup()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- protocol -------------------------------------------------------

    def url(self, *parts):
        return "/".join([self.base, *parts])

    def new_nonce(self):
        nonce = b64u(secrets.token_bytes(16))
        with self.lock:
            self.nonces.add(nonce)
        return nonce

    def directory(self):
        doc = {
            "newNonce": self.url("new-nonce"),
            "newAccount": self.url("new-account"),
            "newOrder": self.url("new-order"),
            "revokeCert": self.url("revoke-cert"),
            "keyChange": self.url("key-change"),
            "meta": {},
        }
        if self.terms_url:
            doc["meta"]["termsOfService"] = self.terms_url
        return doc

    def parse_jws(self, body, url):
        """(payload or None for POST-as-GET, account id or None, jwk or None)."""
        try:
            jws = json.loads(body)
            protected = json.loads(unb64u(jws["protected"]))
            payload_b64 = jws["payload"]
            signature = unb64u(jws["signature"])
        except (ValueError, KeyError, TypeError) as exc:
            raise AcmeError(400, "malformed", f"not a flattened JWS: {exc}") from None
        if not isinstance(protected, dict):
            raise AcmeError(400, "malformed", "protected header is not an object")
        for member in ("alg", "nonce", "url"):
            if member not in protected:
                raise AcmeError(400, "malformed", f"protected header lacks {member!r}")
        with self.lock:
            if protected["nonce"] not in self.nonces:
                raise AcmeError(400, "badNonce", "unknown or reused nonce")
            self.nonces.discard(protected["nonce"])
        if protected["url"] != url:
            raise AcmeError(400, "unauthorized", f"url {protected['url']!r} is not {url!r}")
        if ("jwk" in protected) == ("kid" in protected):
            raise AcmeError(400, "malformed", "exactly one of jwk and kid is needed")
        account_id = jwk = None
        if "jwk" in protected:
            jwk = protected["jwk"]
            key, _thumb = jwk_public_key(jwk)
        else:
            prefix = self.url("acct", "")
            account_id = str(protected["kid"]).removeprefix(prefix)
            account = self.accounts.get(account_id)
            if not str(protected["kid"]).startswith(prefix) or account is None:
                raise AcmeError(400, "accountDoesNotExist", f"no account {protected['kid']!r}")
            key = account["key"]
        signing_input = f"{jws['protected']}.{payload_b64}".encode()
        verify_signature(key, protected["alg"], signing_input, signature)
        if payload_b64 == "":
            return None, account_id, jwk
        try:
            return json.loads(unb64u(payload_b64)), account_id, jwk
        except ValueError:
            raise AcmeError(400, "malformed", "payload is not JSON") from None

    def new_account(self, payload, jwk):
        if jwk is None:
            raise AcmeError(400, "malformed", "newAccount needs a jwk")
        key, thumb = jwk_public_key(jwk)
        payload = payload or {}
        with self.lock:
            for aid, acct in self.accounts.items():
                if acct["thumbprint"] == thumb:
                    return 200, self.account_doc(aid), {"Location": self.url("acct", aid)}
            if payload.get("onlyReturnExisting"):
                raise AcmeError(400, "accountDoesNotExist", "no account for this key")
            if self.terms_url and not payload.get("termsOfServiceAgreed"):
                raise AcmeError(403, "userActionRequired", "agree to " + self.terms_url)
            aid = secrets.token_hex(8)
            self.accounts[aid] = {
                "key": key,
                "thumbprint": thumb,
                "contact": list(payload.get("contact") or []),
            }
        return 201, self.account_doc(aid), {"Location": self.url("acct", aid)}

    def account_doc(self, aid):
        acct = self.accounts[aid]
        return {
            "status": "valid",
            "contact": acct["contact"],
            "orders": self.url("acct", aid, "orders"),
        }

    def new_order(self, payload, aid):
        idents = (payload or {}).get("identifiers")
        if not idents or not all(
            isinstance(i, dict) and i.get("type") == "dns" and i.get("value") for i in idents
        ):
            raise AcmeError(400, "malformed", "identifiers must be a list of dns identifiers")
        expires = utc(datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1))
        oid = secrets.token_hex(8)
        authz_ids = []
        with self.lock:
            for ident in idents:
                zid, cid = secrets.token_hex(8), secrets.token_hex(8)
                self.challenges[cid] = {
                    "type": "http-01",
                    "url": self.url("chall", cid),
                    "token": b64u(secrets.token_bytes(32)),
                    "status": "pending",
                    "authz": zid,
                }
                self.authzs[zid] = {
                    "account": aid,
                    "identifier": {"type": "dns", "value": ident["value"].lower()},
                    "status": "pending",
                    "expires": expires,
                    "challenges": [cid],
                }
                authz_ids.append(zid)
            self.orders[oid] = {
                "account": aid,
                "status": "pending",
                "expires": expires,
                "identifiers": [{"type": "dns", "value": i["value"].lower()} for i in idents],
                "authorizations": authz_ids,
                "cert": None,
            }
        return 201, self.order_doc(oid), {"Location": self.url("order", oid)}

    def order_doc(self, oid):
        order = self.orders[oid]
        if order["status"] == "pending":
            states = {self.authzs[z]["status"] for z in order["authorizations"]}
            if states == {"valid"}:
                order["status"] = "ready"
            elif "invalid" in states:
                order["status"] = "invalid"
        doc = {
            "status": order["status"],
            "expires": order["expires"],
            "identifiers": order["identifiers"],
            "authorizations": [self.url("authz", z) for z in order["authorizations"]],
            "finalize": self.url("order", oid, "finalize"),
        }
        if order["cert"]:
            doc["certificate"] = self.url("cert", order["cert"])
        return doc

    def authz_doc(self, zid):
        authz = self.authzs[zid]
        return {
            "status": authz["status"],
            "expires": authz["expires"],
            "identifier": authz["identifier"],
            "challenges": [self.challenge_doc(c) for c in authz["challenges"]],
        }

    def challenge_doc(self, cid):
        chall = self.challenges[cid]
        doc = {k: chall[k] for k in ("type", "url", "token", "status")}
        if chall.get("error"):
            doc["error"] = chall["error"]
        if chall.get("validated"):
            doc["validated"] = chall["validated"]
        return doc

    def fetch_challenge(self, name, token):
        """The body served at http://<name>/.well-known/acme-challenge/<token>."""
        conn = http.client.HTTPConnection(self.resolve.get(name, name), 80, timeout=10)
        try:
            conn.request("GET", f"/.well-known/acme-challenge/{token}", headers={"Host": name})
            resp = conn.getresponse()
            body = resp.read(4096)
            if resp.status != 200:
                raise OSError(f"HTTP {resp.status}")
            return body.decode("ascii", "replace").strip()
        finally:
            conn.close()

    def respond_challenge(self, cid, aid):
        chall = self.challenges[cid]
        authz = self.authzs[chall["authz"]]
        if authz["account"] != aid:
            raise AcmeError(403, "unauthorized", "not your challenge")
        if chall["status"] == "pending":
            name = authz["identifier"]["value"]
            expected = f"{chall['token']}.{self.accounts[aid]['thumbprint']}"
            try:
                got = self.fetch_challenge(name, chall["token"])
                ok = got == expected
                problem = None if ok else f"wrong key authorization {got[:80]!r}"
            except OSError as exc:
                ok, problem = False, f"fetching the challenge from {name}: {exc}"
            with self.lock:
                self.validations.append((name, chall["token"], ok))
                if ok:
                    chall["status"] = authz["status"] = "valid"
                    chall["validated"] = utc(datetime.datetime.now(datetime.UTC))
                else:
                    chall["status"] = authz["status"] = "invalid"
                    chall["error"] = {
                        "type": PROBLEM + "unauthorized", "detail": problem, "status": 403
                    }  # fmt: skip
        doc = self.challenge_doc(cid)
        return 200, doc, {"Link": f'<{self.url("authz", chall["authz"])}>;rel="up"'}

    def finalize(self, oid, payload, aid):
        order = self.orders[oid]
        if order["account"] != aid:
            raise AcmeError(403, "unauthorized", "not your order")
        self.order_doc(oid)
        if order["status"] != "ready":
            raise AcmeError(403, "orderNotReady", f"order is {order['status']}")
        try:
            csr = x509.load_der_x509_csr(unb64u((payload or {})["csr"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise AcmeError(400, "badCSR", f"unreadable CSR: {exc}") from None
        if not csr.is_signature_valid:
            raise AcmeError(400, "badCSR", "CSR signature does not verify")
        try:
            names = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            names = set(names.value.get_values_for_type(x509.DNSName))
        except x509.ExtensionNotFound:
            names = set()
        for attr in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
            names.add(attr.value)
        wanted = {i["value"] for i in order["identifiers"]}
        if {n.lower() for n in names} != wanted:
            raise AcmeError(400, "badCSR", f"CSR names {sorted(names)} are not {sorted(wanted)}")
        now = datetime.datetime.now(datetime.UTC)
        leaf = self.ca.issue(
            csr.public_key(),
            dns_names=[i["value"] for i in order["identifiers"]],
            not_before=now - self.backdate,
            not_after=now - self.backdate + self.lifetime,
        )
        cert_id = secrets.token_hex(8)
        pem = leaf.public_bytes(serialization.Encoding.PEM).decode() + self.ca.chain_pem
        with self.lock:
            self.certs[cert_id] = pem
            self.issued.append(leaf)
            order["cert"] = cert_id
            order["status"] = "valid"
        return 200, self.order_doc(oid), {"Location": self.url("order", oid)}

    def post(self, path, body):
        """(status, json doc or PEM text, headers) of a POST to ``path``."""
        payload, aid, jwk = self.parse_jws(body, self.base + path)
        parts = path.strip("/").split("/")
        if parts == ["new-account"]:
            return self.new_account(payload, jwk)
        if aid is None:
            raise AcmeError(400, "malformed", "this resource needs a kid")
        if parts == ["new-order"]:
            return self.new_order(payload, aid)
        if len(parts) == 2 and parts[0] == "acct" and parts[1] == aid:
            return 200, self.account_doc(aid), {}
        if len(parts) == 2 and parts[0] == "order" and parts[1] in self.orders:
            if self.orders[parts[1]]["account"] != aid:
                raise AcmeError(403, "unauthorized", "not your order")
            return 200, self.order_doc(parts[1]), {"Retry-After": "1"}
        if len(parts) == 3 and parts[0] == "order" and parts[2] == "finalize":
            if parts[1] in self.orders:
                return self.finalize(parts[1], payload, aid)
        if len(parts) == 2 and parts[0] == "authz" and parts[1] in self.authzs:
            return 200, self.authz_doc(parts[1]), {"Retry-After": "1"}
        if len(parts) == 2 and parts[0] == "chall" and parts[1] in self.challenges:
            return self.respond_challenge(parts[1], aid)
        if len(parts) == 2 and parts[0] == "cert" and parts[1] in self.certs:
            return 200, self.certs[parts[1]], {}
        raise AcmeError(404, "malformed", f"no resource {path}")

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def send(self, status, body, headers=None, ctype="application/json"):
                if isinstance(body, (dict, list)):
                    data = json.dumps(body).encode()
                else:
                    data = (body or "").encode()
                    if body and ctype == "application/json":
                        ctype = "application/pem-certificate-chain"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Replay-Nonce", server.new_nonce())
                self.send_header("Cache-Control", "no-store")
                self.send_header("Link", f'<{server.directory_url}>;rel="index"')
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def problem(self, exc):
                doc = {"type": PROBLEM + exc.kind, "detail": exc.detail, "status": exc.status}
                self.send(exc.status, doc, ctype="application/problem+json")

            def do_GET(self):
                if self.path == "/directory":
                    self.send(200, server.directory())
                elif self.path == "/new-nonce":
                    self.send(204 if self.command == "GET" else 200, "")
                else:
                    self.problem(AcmeError(405, "malformed", "use POST-as-GET"))

            do_HEAD = do_GET

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    if self.headers.get("Content-Type") != "application/jose+json":
                        raise AcmeError(
                            415, "malformed", "Content-Type must be application/jose+json"
                        )
                    status, doc, headers = server.post(self.path, body)
                except AcmeError as exc:
                    self.problem(exc)
                    return
                self.send(status, doc, headers)

            def log_message(self, *args):
                pass

        return Handler
