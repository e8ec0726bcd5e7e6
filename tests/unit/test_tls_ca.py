"""tls mode "ca", chatmail:trusted_cas and chatmail:smtp_tls: validation (each
problem names its pillar key), the merged map, the rendered states and the
outgoing TLS policy table postfix reads."""

import datetime
import json
import pathlib
import shutil
import subprocess
import sys

import jinja2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.saltopts import masterless_minion

REPO = pathlib.Path(__file__).resolve().parents[2]
POLICY_TEMPLATE = REPO / "salt" / "chatmail" / "postfix" / "files" / "smtp_tls_policy_map.jinja"


def _pem_pair(ca=True, name="unit test CA"):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=2))
    )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
    cert = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem


@pytest.fixture(scope="module")
def ca():
    return _pem_pair()


def _errors(cc, defaults, pillar):
    with pytest.raises(cc.ChatmailConfigError) as exc:
        cc.build(defaults, {}, pillar)
    return exc.value.errors


def _ca_pillar(ca, **over):
    pillar = {
        "domains": {
            "chat.example.org": {"tls": {"mode": "ca"}},
            "10.1.2.3": {"tls": {"mode": "ca"}},
        },
        "tls_ca": {"cert": ca[0], "key": ca[1]},
        "trusted_cas": [ca[0]],
        "smtp_tls": {"unverified_nexthops": []},
    }
    pillar.update(over)
    return pillar


def test_ca_mode_needs_tls_ca(cc, defaults):
    errors = _errors(cc, defaults, {"domains": {"a.test": {"tls": {"mode": "ca"}}}})
    assert "chatmail:tls_ca:cert: required by tls mode ca (domains: a.test)" in errors
    assert "chatmail:tls_ca:key: required by tls mode ca (domains: a.test)" in errors


def test_ca_mode_map(cc, defaults, ca):
    m = cc.build(defaults, {}, _ca_pillar(ca))
    for dom in ("chat.example.org", "10.1.2.3"):
        tls = m["domains"][dom]["tls"]
        assert tls == {
            "mode": "ca",
            "cert": f"/etc/chatmail/tls/{dom}/fullchain.pem",
            "key": f"/etc/chatmail/tls/{dom}/privkey.pem",
        }
    # the CA key never travels in the map the templates receive
    assert "key" not in m["tls_ca"] and m["tls_ca"]["has_key"] is True
    assert ca[1].splitlines()[1] not in json.dumps(m)
    assert m["tls_ca"]["cert"] == ca[0]
    assert m["smtp_tls"]["unverified_regexps"] == []
    # chatmaild treats a private CA's certificate like a self-signed one
    assert "tls_mode = self" in cc.ini_text(m) and "tls_mode = ca" not in cc.ini_text(m)


def test_chatmaild_reads_the_ini(cc, defaults, ca, chatmaild_config, tmp_path):
    ini = tmp_path / "chatmail.ini"
    ini.write_text(cc.ini_text(cc.build(defaults, {}, _ca_pillar(ca))))
    config = chatmaild_config.read_config(ini)
    assert config.for_domain("chat.example.org").tls_mode == "self"


@pytest.mark.parametrize(
    "tls_ca, key, problem",
    [
        ({"cert": "hello"}, "cert", "not PEM"),
        ({"cert": "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n"}, "cert", "PEM"),
        ({"cert": 42}, "cert", "must be a PEM string, not an integer"),
        ({"key": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"}, "key", "private"),
        (
            {
                "key": "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n"
                "-----END ENCRYPTED PRIVATE KEY-----"
            },
            "key",
            "encrypted private keys are not supported",
        ),
        ({"days_remaining": 400}, "days_remaining", "must be less than days_valid"),
        ({"days_valid": 0}, "days_valid", "must be positive"),
        ({"days_valid": "long"}, "days_valid", "must be an integer"),
        ({"passphrase": "x"}, "passphrase", "unknown key"),
    ],
)
def test_tls_ca_errors_name_the_key(cc, defaults, ca, tls_ca, key, problem):
    pillar = _ca_pillar(ca)
    pillar["tls_ca"] = {**pillar["tls_ca"], **tls_ca}
    errors = _errors(cc, defaults, pillar)
    mine = [e for e in errors if e.startswith(f"chatmail:tls_ca:{key}:")]
    assert mine and problem in mine[0], errors


def test_tls_ca_key_must_match_and_cert_must_be_a_ca(cc, defaults, ca):
    other = _pem_pair()
    errors = _errors(cc, defaults, _ca_pillar(ca, tls_ca={"cert": ca[0], "key": other[1]}))
    assert errors == [
        "chatmail:tls_ca:key: does not belong to the certificate chatmail:tls_ca:cert"
    ]
    leaf = _pem_pair(ca=False)
    errors = _errors(cc, defaults, _ca_pillar(ca, tls_ca={"cert": leaf[0], "key": leaf[1]}))
    assert errors == ["chatmail:tls_ca:cert: not a CA certificate (basicConstraints CA:TRUE)"]
    errors = _errors(cc, defaults, _ca_pillar(ca, tls_ca={"cert": ca[0] + ca[0], "key": ca[1]}))
    assert errors[0].startswith("chatmail:tls_ca:cert: must hold exactly one PEM CERTIFICATE")


def test_key_without_cert(cc, defaults, ca):
    errors = _errors(cc, defaults, {"domains": {"a.test": {}}, "tls_ca": {"key": ca[1]}})
    assert errors == ["chatmail:tls_ca:cert: missing (chatmail:tls_ca:key is set)"]


def test_trusted_cas_errors(cc, defaults, ca):
    errors = _errors(
        cc, defaults, {"domains": {"a.test": {}}, "trusted_cas": [ca[0], "junk", ca[1]]}
    )
    assert errors[0].startswith("chatmail:trusted_cas:1: not PEM")
    assert errors[1].startswith("chatmail:trusted_cas:2: must hold exactly one PEM CERTIFICATE")
    assert len(errors) == 2
    errors = _errors(cc, defaults, {"domains": {"a.test": {}}, "trusted_cas": ca[0]})
    assert errors[0].startswith("chatmail:trusted_cas: must be a list")


@pytest.mark.parametrize(
    "pattern, regexp",
    [
        ("[ip]", r"/^\[[^]]+\]$/"),
        ("_*", "/^_/"),
        ("*.test", r"/\.test$/"),
        ("mx.Example.org", r"/^mx\.example\.org$/"),
        ("chat-*", "/^chat-/"),
        ("*", None),
        ("*.a*", None),
        ("a b", None),
        ("/evil/", None),
        ("", None),
    ],
)
def test_nexthop_regexp(cc, pattern, regexp):
    assert cc.nexthop_regexp(pattern) == regexp


def test_bad_nexthop_names_the_key(cc, defaults):
    pillar = {"domains": {"a.test": {}}, "smtp_tls": {"unverified_nexthops": ["*.test", "a b"]}}
    errors = _errors(cc, defaults, pillar)
    assert errors == [
        "chatmail:smtp_tls:unverified_nexthops:1: not a next-hop pattern 'a b'"
        " (expected [ip], a domain, *.suffix or prefix*)"
    ]


def _policy(chatmail):
    env = jinja2.Environment(keep_trailing_newline=True)
    return env.from_string(POLICY_TEMPLATE.read_text()).render(chatmail=chatmail)


def _entries(text):
    return [ln.split() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def test_policy_default_keeps_test_domains_unverified(cc, defaults):
    m = cc.build(defaults, {}, {"domains": {"a.test": {}}})
    assert _entries(_policy(m)) == [
        ["/^_/", "encrypt"],
        [r"/\.test$/", "encrypt"],
        [r"/^\[[^]]+\]$/", "encrypt"],
    ]


def test_policy_empty_verifies_everything(cc, defaults, ca):
    m = cc.build(defaults, {}, _ca_pillar(ca))
    assert _entries(_policy(m)) == []


@pytest.mark.skipif(not shutil.which("postmap"), reason="postfix's postmap is not installed")
@pytest.mark.parametrize(
    "nexthops, lookups",
    [
        (
            ["_*", "*.test", "[ip]"],
            {"_x.example.org": "encrypt", "chat.test": "encrypt", "[192.0.2.1]": "encrypt",
             "chat.example.org": None, "test.org": None},
        ),
        (["mx.example.org"], {"mx.example.org": "encrypt", "amx.example.org": None}),
        ([], {"chat.test": None, "[192.0.2.1]": None}),
    ],
)  # fmt: skip
def test_postfix_reads_the_policy(cc, defaults, tmp_path, nexthops, lookups):
    m = cc.build(
        defaults, {}, {"domains": {"a.test": {}}, "smtp_tls": {"unverified_nexthops": nexthops}}
    )
    table = tmp_path / "smtp_tls_policy_map"
    table.write_text(_policy(m))
    # postmap reads main.cf of its config directory; the CI machine's /etc/postfix
    # may have none (postfix installed with "No configuration"), so give it its own.
    confdir = tmp_path / "postfix"
    confdir.mkdir()
    (confdir / "main.cf").write_text("compatibility_level = 3.6\n")
    for nexthop, want in lookups.items():
        proc = subprocess.run(
            ["postmap", "-c", str(confdir), "-q", nexthop, f"regexp:{table}"],
            capture_output=True, text=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert "warning" not in proc.stderr and "fatal" not in proc.stderr, proc.stderr
        assert (proc.stdout.strip() or None) == want, (nexthop, proc.stdout, proc.stderr)


# --- rendered states ----------------------------------------------------------

SHOW = """
import json, sys
import salt.client, salt.config
caller = salt.client.Caller(mopts=salt.config.minion_config(sys.argv[1]))
caller.cmd("saltutil.sync_all")
out = {}
for sls in sys.argv[2].split(","):
    out[sls] = caller.cmd("state.show_sls", sls)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def show_sls(tmp_path_factory):
    def _show(pillar, sls=("chatmail.tls", "chatmail.tls.clean")):
        root = tmp_path_factory.mktemp("tlsca-salt")
        conf = masterless_minion(root, "tls-ca-render-test", pillar)
        proc = subprocess.run(
            [sys.executable, "-c", SHOW, str(conf), ",".join(sls)],
            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stdout

    return _show


def _args(state):
    fun = next(k for k in state if not k.startswith("__"))
    args = {}
    for item in state[fun]:
        if isinstance(item, dict):
            args.update(item)
        else:
            args["fun"] = f"{fun}.{item}"
    return args


def test_ca_states_render(show_sls, ca):
    out, raw = show_sls(_ca_pillar(ca))
    states = out["chatmail.tls"]
    assert isinstance(states, dict), states
    # the CA key is only referenced by its pillar path
    assert ca[1].splitlines()[1] not in raw
    key_file = _args(states["chatmail-tls-ca-key-file-managed"])
    assert key_file["contents_pillar"] == "chatmail:tls_ca:key"
    assert key_file["mode"] == "0600" and key_file["show_changes"] is False
    for dom, san in (
        ("chat.example.org", "DNS:chat.example.org,DNS:mta-sts.chat.example.org,"
                             "DNS:www.chat.example.org"),
        ("10.1.2.3", "IP:10.1.2.3"),
    ):  # fmt: skip
        cert = _args(states[f"chatmail-tls-{dom}-ca-certificate-managed"])
        assert cert["fun"] == "x509.certificate_managed"
        assert cert["name"] == f"/etc/chatmail/tls/{dom}/fullchain.pem"
        assert cert["private_key"] == f"/etc/chatmail/tls/{dom}/privkey.pem"
        assert cert["signing_private_key"] == "/etc/chatmail/tls/ca/ca.key"
        assert cert["signing_cert"] == "/etc/chatmail/tls/ca/ca.pem"
        assert cert["subjectAltName"] == san
        key = _args(states[f"chatmail-tls-{dom}-ca-private-key-managed"])
        assert key["fun"] == "x509.private_key_managed" and key["mode"] == "0600"
        assert "selfsigned" not in " ".join(states)
    for svc in ("postfix", "dovecot", "nginx"):
        reload = _args(states[f"chatmail-tls-{svc}-reloaded"])
        assert {"x509": "chatmail-tls-10.1.2.3-ca-certificate-managed"} in reload["onchanges"]
    trusted = _args(states["chatmail-tls-trusted-ca-1-file-managed"])
    assert trusted["name"] == "/usr/local/share/ca-certificates/chatmail-1.crt"
    assert trusted["contents"] == ca[0]
    update = _args(states["chatmail-tls-trusted-cas-update-cmd-run"])
    assert update["name"] == "update-ca-certificates"
    assert {"file": "chatmail-tls-trusted-ca-1-file-managed"} in update["onchanges"]
    prune = _args(states["chatmail-tls-trusted-ca-stale-files-pruned"])
    assert prune["keep"] == ["chatmail-1.crt"]
    assert {"chatmail_files": "chatmail-tls-trusted-ca-stale-files-pruned"} in update["onchanges"]
    clean = out["chatmail.tls.clean"]
    assert _args(clean["chatmail-tls-clean-ca-directory-absent"])["name"] == "/etc/chatmail/tls/ca"


def test_without_ca_no_ca_states(show_sls):
    out, _raw = show_sls({"domains": {"chat.test": {}}}, sls=("chatmail.tls",))
    states = out["chatmail.tls"]
    assert isinstance(states, dict), states
    assert "chatmail-tls-chat.test-selfsigned-cmd-run" in states
    assert _args(states["chatmail-tls-ca-directory-absent"])["name"] == "/etc/chatmail/tls/ca"
    assert not [s for s in states if "file-managed" in s and "trusted" in s]
    assert not [s for s in states if "x509" in states[s]]
    # certificates the tree trusted before (a pillar that had some) go
    prune = _args(states["chatmail-tls-trusted-ca-stale-files-pruned"])
    assert prune["match"] == "chatmail-*.crt" and prune["keep"] == []
