"""The filter decisions of filtermail as functions: MIME structure checks,
the rate limiter, DKIM with an in-process key table, random MIME trees."""

from __future__ import annotations

from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

import dkim
import pytest
from chatmaild.config import read_config
from chatmaild.filtermail import (
    ENCRYPTION_NEEDED,
    IncomingHandler,
    OutgoingHandler,
    Reject,
    SendRateLimiter,
    is_autocrypt_setup_message,
    is_bounce,
    is_encrypted,
    is_securejoin_request,
    matches_passthrough,
    parse_message,
    single_from_address,
)
from chatmaild.filtermail_dkim import check_dkim, parse_server
from chatmaild.filtermail_fastpath import content_type, encrypted_sender
from conftest import dkim_keypair
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

DATA = Path(__file__).parent / "mail-data"
A = "alice0001@chat.example.org"
B = "bob000001@other.example.net"


def mail(name, from_addr=A, to_addr=B):
    text = (DATA / name).read_text()
    text = text.replace("{from_addr}", from_addr).replace("{to_addr}", to_addr)
    text = text.replace("{from_domain}", from_addr.rsplit("@", 1)[-1])
    return text.replace("\n", "\r\n").encode()


def msg(name, **kw):
    return parse_message(mail(name, **kw))


# deltachat-2.65-securejoin.eml: a real Secure-Join v3 request of the Delta
# Chat 2.65 core (symmetrically encrypted, charset on both parts), as delivered
ENCRYPTED = [
    "encrypted.eml",
    "encrypted-skesk.eml",
    "encrypted-partial.eml",
    "deltachat-2.65-securejoin.eml",
]
NOT_ENCRYPTED = [
    "plain.eml",
    "fake-encrypted.eml",
    "literal.eml",
    "truncated.eml",
    "trailing-garbage.eml",
    "armor-version.eml",
    "securejoin-vc.eml",
    "securejoin-vc-fake.eml",
    "asm.eml",
    "mailer-daemon.eml",
    "mdn.eml",
]


@pytest.mark.parametrize("name", ENCRYPTED)
def test_encrypted_samples(name):
    assert is_encrypted(msg(name))
    assert is_encrypted(msg(name), allow_armor_headers=True)


@pytest.mark.parametrize("name", NOT_ENCRYPTED)
def test_not_encrypted_samples(name):
    assert not is_encrypted(msg(name))


def test_armor_version_header_allowed_only_incoming():
    assert is_encrypted(msg("armor-version.eml"), allow_armor_headers=True)


def test_encrypted_refuses_duplicate_mime_headers():
    raw = mail("encrypted.eml")
    end = raw.index(b"\r\n\r\n")
    twice = raw[:end] + b"\r\nContent-Type: text/plain" + raw[end:]
    assert parse_message(twice).get_content_type() == "multipart/encrypted"
    assert not is_encrypted(parse_message(twice))
    raw = raw.replace(
        b"Content-Type: application/octet-stream",
        b"Content-Transfer-Encoding: 7bit\r\nContent-Transfer-Encoding: base64\r\n"
        b"Content-Type: application/octet-stream",
    )
    assert not is_encrypted(parse_message(raw))


def test_encrypted_needs_protocol_parameter():
    raw = mail("encrypted.eml").replace(b' protocol="application/pgp-encrypted";', b"")
    assert not is_encrypted(parse_message(raw))
    raw = mail("encrypted.eml").replace(b"Version: 1", b"Version: 2")
    assert not is_encrypted(parse_message(raw))


def test_securejoin_samples():
    assert is_securejoin_request(msg("securejoin-vc.eml"))
    assert is_securejoin_request(msg("securejoin-vg.eml"))
    assert not is_securejoin_request(msg("securejoin-vc-fake.eml"))
    other = mail("securejoin-vc.eml").replace(b"Secure-Join: vc-request\r\nSecure", b"Secure")
    assert not is_securejoin_request(parse_message(other))
    wrong_kind = mail("securejoin-vc.eml").replace(b"vc-request", b"vc-auth-required")
    assert not is_securejoin_request(parse_message(wrong_kind))


def test_securejoin_single_part_as_delta_chat_2_sends_it():
    # Delta Chat 2.x sends the request as a single text/plain message
    # (the form the core's mimefactory renders when there is one part)
    single = mail("securejoin-vc-single.eml")
    assert is_securejoin_request(parse_message(single))
    assert is_securejoin_request(parse_message(single.replace(b"vc-request", b"vg-request")))
    # ... and exactly that: more text, another type, a second Content-Type,
    # or a body that names another step is no request
    for old, new in (
        (b"Secure-Join: vc-request\r\n", b"Secure-Join: vc-request\r\nhello in cleartext\r\n"),
        (b'text/plain; charset="utf-8"', b"text/html"),
        (b"MIME-Version: 1.0\r\n", b"MIME-Version: 1.0\r\nContent-Type: text/html\r\n"),
        (b"\r\n\r\nSecure-Join: vc-request", b"\r\n\r\nSecure-Join: vc-auth-required"),
    ):
        forged = single.replace(old, new)
        assert forged != single, old
        assert not is_securejoin_request(parse_message(forged)), new


def test_asm_and_bounce():
    asm = msg("asm.eml")
    assert is_autocrypt_setup_message(asm, A, [A])
    assert not is_autocrypt_setup_message(asm, A, [A, B])
    assert not is_autocrypt_setup_message(msg("plain.eml", to_addr=A), A, [A])
    assert is_bounce(msg("mailer-daemon.eml", from_addr="MAILER-DAEMON@other.example.net"))
    assert not is_bounce(msg("mailer-daemon.eml", from_addr="postmaster@other.example.net"))
    assert not is_bounce(msg("mdn.eml"))


def test_matches_passthrough():
    assert matches_passthrough("Echo@x.org", ["echo@x.org"])
    assert matches_passthrough("a@x.org", ["@x.org"])
    assert not matches_passthrough("a@evilx.org", ["@x.org"])
    assert not matches_passthrough("a@x.org", [])


def test_rate_limiter_gcra():
    now = [1000.0]
    limiter = SendRateLimiter(clock=lambda: now[0])
    assert [limiter.allow("a", 60, 10) for _ in range(11)] == [True] * 10 + [False]
    assert limiter.allow("b", 60, 10)
    now[0] += 0.9
    assert not limiter.allow("a", 60, 10)
    now[0] += 0.2
    assert limiter.allow("a", 60, 10)
    assert not limiter.allow("a", 60, 10)
    now[0] += 60
    assert [limiter.allow("a", 60, 10) for _ in range(11)] == [True] * 10 + [False]
    assert all(limiter.allow("c", 0, 0) for _ in range(100))


# --- DKIM against an in-process key table ---


@pytest.fixture(scope="module")
def keys():
    private, record = dkim_keypair()
    table = {}

    def publish(domain):
        table[f"sel._domainkey.{domain}.".encode()] = record.encode()

    def dnsfunc(name, timeout=5):
        return table.get(name)

    def sign(message, domain):
        return dkim.sign(message, b"sel", domain.encode(), private) + message

    return publish, dnsfunc, sign


def test_check_dkim_strict_alignment(keys):
    publish, dnsfunc, sign = keys
    publish("other.example.net")
    publish("example.net")
    raw = mail("encrypted.eml", from_addr=B, to_addr=A)
    assert check_dkim(sign(raw, "other.example.net"), "other.example.net", dnsfunc) is None
    assert check_dkim(sign(raw, "other.example.net"), "OTHER.example.net", dnsfunc) is None
    assert "example.net" in check_dkim(sign(raw, "example.net"), "other.example.net", dnsfunc)
    assert check_dkim(raw, "other.example.net", dnsfunc) == "No DKIM signature found"
    assert check_dkim(sign(raw, "unpublished.org"), "unpublished.org", dnsfunc)


def test_incoming_handler_check(keys, make_ini):
    publish, dnsfunc, sign = keys
    publish("other.example.net")
    config = read_config(make_ini())
    handler = IncomingHandler(config, dnsfunc=dnsfunc)
    good = sign(mail("plain.eml", from_addr=B, to_addr=A), "other.example.net")
    handler.check(B, [A], good)
    marker = config.user_dir(A) / "enforceE2EEincoming"
    marker.parent.mkdir(parents=True)
    marker.touch()
    with pytest.raises(Reject) as exc:
        handler.check(B, [A], good)
    assert exc.value.args[0] == ENCRYPTION_NEEDED
    with pytest.raises(Reject, match="^550 5.7.1 DKIM"):
        handler.check(B, [A], mail("encrypted.eml", from_addr=B, to_addr=A))


def test_parse_server():
    assert parse_server("10.0.0.2:5353") == ("10.0.0.2", 5353)
    assert parse_server("10.0.0.2") == ("10.0.0.2", 53)
    assert parse_server("[::1]:53") == ("::1", 53)
    assert parse_server("::1") == ("::1", 53)


# --- random cleartext MIME trees ---

ARMORED_TEXT = (DATA / "encrypted.eml").read_text().split("\n\n", 1)[1]
ARMOR = ARMORED_TEXT[ARMORED_TEXT.index("-----BEGIN") : ARMORED_TEXT.index("-----\n\n--") + 5]
LITERAL = (DATA / "literal.eml").read_text()
LITERAL_ARMOR = LITERAL[
    LITERAL.index("-----BEGIN") : LITERAL.index("-----END PGP MESSAGE-----") + 25
]

texts = st.one_of(
    st.text(max_size=200),
    st.just("Version: 1"),
    st.just(LITERAL_ARMOR),
    st.just("Secure-Join: vc-request\r\nplus more"),
)
leaf = st.one_of(
    st.builds(lambda t, sub: MIMEText(t, sub, "utf-8"), texts, st.sampled_from(["plain", "html"])),
    st.builds(
        lambda t: MIMEText(t, "plain", "utf-8"), st.just(ARMOR)
    ),  # real ciphertext, but in a text part
    st.builds(
        lambda t, sub: MIMEApplication(t.encode(), sub),
        texts,
        st.sampled_from(["octet-stream", "pgp-encrypted", "autocrypt-setup"]),
    ),
)


def multipart(children):
    return st.builds(
        lambda sub, parts, proto: _multipart(sub, parts, proto),
        st.sampled_from(["mixed", "encrypted", "alternative", "report"]),
        st.lists(children, min_size=0, max_size=3),
        st.booleans(),
    )


def _multipart(sub, parts, proto):
    params = {"protocol": "application/pgp-encrypted"} if proto else {}
    m = MIMEMultipart(sub, **params)
    for p in parts:
        m.attach(p)
    return m


trees = st.recursive(leaf, multipart, max_leaves=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees, st.sampled_from(["", "vc-request", "v1"]))
def test_random_cleartext_trees_never_pass_outgoing(tree, header):
    tree["From"] = A
    tree["To"] = B
    if header == "v1":
        tree["Autocrypt-Setup-Message"] = "v1"
    elif header:
        tree["Secure-Join"] = header
    raw = tree.as_bytes()
    parsed = parse_message(raw)
    assert not is_encrypted(parsed)
    assert not is_encrypted(parsed, allow_armor_headers=True)
    handler = OutgoingHandler(_CONFIG)
    with pytest.raises(Reject) as exc:
        handler.check(A, [B], raw)
    assert exc.value.args[0] == ENCRYPTION_NEEDED


@pytest.fixture(autouse=True, scope="module")
def _module_config(tmp_path_factory):
    global _CONFIG
    path = tmp_path_factory.mktemp("cfg") / "chatmail.ini"
    path.write_text("[params]\nmail_domain = chat.example.org other.example.net\n")
    _CONFIG = read_config(path)


_CONFIG = None


# --- the fast path never accepts what the full parser refuses ---


def full_path_sender(raw: bytes) -> str | None:
    parsed = parse_message(raw)
    return single_from_address(parsed) if is_encrypted(parsed) else None


@pytest.mark.parametrize("name", ENCRYPTED)
def test_fast_path_accepts_plain_encrypted(name):
    for sender, header in [
        (A, f"<{A}>"),
        (A, A),
        (A, f"Alice Example <{A}>"),
        ("user@[192.0.2.1]", "<user@[192.0.2.1]>"),
    ]:
        raw = mail(name).replace(f"From: <{A}>".encode(), f"From: {header}".encode())
        assert encrypted_sender(raw) == sender
        assert full_path_sender(raw) == sender


@pytest.mark.parametrize("name", NOT_ENCRYPTED)
def test_fast_path_refuses_samples(name):
    assert encrypted_sender(mail(name)) is None


@pytest.mark.parametrize(
    "old, new",
    [
        (b"\r\n", b"\n"),  # bare LF line ends: left to the full parser
        (b"Subject: [...]", b"Content-Type: text/plain\r\nSubject: [...]"),
        (b'protocol="application/pgp-encrypted"', b"protocol*=utf-8''application%2Fpgp-encrypted"),
        (b"Content-Type: application/octet-stream", b"Content-Type: text/plain"),
        (
            b"Content-Type: application/pgp-encrypted",
            b"Content-Type: application/pgp-encrypted\r\nContent-Transfer-Encoding: base64",
        ),
        (b"--xYzEncBoundary42--", b"--xYzEncBoundary42\r\n\r\nhidden\r\n--xYzEncBoundary42--"),
        (b"Subject: [...]", b"Subject: \xc3\xa4"),
    ],
)
def test_fast_path_defers_unusual_forms(old, new):
    raw = mail("encrypted.eml").replace(old, new)
    assert encrypted_sender(raw) is None


def test_content_type_parser():
    assert content_type('multipart/encrypted; protocol="a/b"; boundary=xy') == (
        "multipart/encrypted",
        {"protocol": "a/b", "boundary": "xy"},
    )
    assert content_type("Text/Plain;") == ("text/plain", {})
    assert content_type("text/plain; a=1; a=2") is None
    assert content_type('text/plain; a="x\\"y"') is None
    assert content_type("text") is None


MUTATION_BYTES = [
    b"\r\n",
    b"\n",
    b"\r",
    b"-",
    b"--",
    b"xYzEncBoundary42",
    b" ",
    b":",
    b";",
    b"\x00",
    b"=",
    b"\xff",
    b"a",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(ENCRYPTED),
    st.lists(
        st.tuples(st.floats(0, 1), st.integers(0, 3), st.sampled_from(MUTATION_BYTES)),
        min_size=1,
        max_size=4,
    ),
)
def test_fast_path_is_never_more_permissive(name, mutations):
    raw = mail(name)
    for where, drop, insert in mutations:
        pos = int(where * len(raw))
        raw = raw[:pos] + insert + raw[pos + drop :]
    fast = encrypted_sender(raw)
    if fast is not None:
        assert fast == full_path_sender(raw)


@pytest.mark.parametrize(
    "header, expected",
    [
        ("abc@[192.0.2.7]", "abc@[192.0.2.7]"),  # IP-only relays' addresses
        ("Name <abc@[192.0.2.7]>", "abc@[192.0.2.7]"),
        ('"Al Ice" <a@b.org>', "a@b.org"),
        ("=?utf-8?q?x?= <a@b.org>", "a@b.org"),
        ("a@b.org, c@d.org", None),
        ("x <a@b.org> <c@d.org>", None),
        ("a@b@c.org", None),
        ("<@b.org>", None),
        ("garbage", None),
    ],
)
def test_single_from_address(header, expected):
    from email import message_from_bytes
    from email.policy import compat32

    msg = message_from_bytes(f"From: {header}\r\n\r\nbody".encode(), policy=compat32)
    assert single_from_address(msg) == expected


def test_incoming_check_maps_recipients_before_the_marker(make_ini):
    """The envelope spellings aiosmtpd refuses by itself (trailing dot) are
    still mapped when the check runs on them."""
    config = read_config(make_ini(filtermail_dkim_check=False))
    handler = IncomingHandler(config)
    marker = config.user_dir(A) / "enforceE2EEincoming"
    marker.parent.mkdir(parents=True)
    marker.touch()
    plain = mail("plain.eml", from_addr=B, to_addr=A)
    for rcpt in [A, A + ".", A.upper() + ".", A.replace("@", "+x@") + ".", f'"{A[:9]}"@{A[10:]}']:
        with pytest.raises(Reject) as exc:
            handler.check(B, [rcpt], plain)
        assert exc.value.args[0] == ENCRYPTION_NEEDED, rcpt
    for rcpt in [f"alice0001%{A[10:]}@localhost", "alice0001@localhost"]:
        with pytest.raises(Reject, match="^55"):
            handler.check(B, [rcpt], plain)


def test_passthrough_recipients_cannot_be_rewritten():
    entries = ["@chat.example.org", "echo@other.example.net"]
    assert matches_passthrough("x0000001@chat.example.org.", entries)
    assert matches_passthrough("ECHO+tag@Other.Example.Net", entries)
    # Postfix's percent hack and bang paths would send these elsewhere
    assert not matches_passthrough("victim%evil.example@chat.example.org", entries)
    assert not matches_passthrough("evil.example!victim@chat.example.org", entries)
    assert not matches_passthrough("echo@other.example.net@evil.example", entries)
    handler = OutgoingHandler(_CONFIG)
    with pytest.raises(Reject) as exc:
        handler.check(A, ["victim%evil.example@chat.example.org"], mail("plain.eml"))
    assert exc.value.args[0] == ENCRYPTION_NEEDED


def test_oversized_dkim_keys_are_refused():
    import base64

    from chatmaild.filtermail_dkim import MAX_KEY_BYTES, acceptable_key

    normal = b"v=DKIM1; k=rsa; p=" + base64.b64encode(b"\x30" * 550)
    huge = b"v=DKIM1; k=rsa; p=" + base64.b64encode(b"\x30" * (MAX_KEY_BYTES + 1))
    assert acceptable_key(normal) == normal
    assert acceptable_key(huge) is None
    assert acceptable_key(None) is None


def test_bare_cr_after_the_closing_delimiter_is_refused():
    """'--boundary--' + CR CR LF closes the multipart for Python's parser
    (a bare CR ends a line there) but not for every recipient's: the short
    fuzz run found the slow path accepting it."""
    handler = OutgoingHandler(_CONFIG)
    content = mail("encrypted.eml")
    assert handler.check(A, [B], content) == "encrypted"
    closing = content.rindex(b"--\r\n")
    tampered = content[:closing] + b"--\r\r\n" + content[closing + 4 :]
    with pytest.raises(Reject) as exc:
        handler.check(A, [B], tampered)
    assert exc.value.args[0].startswith("523 Encryption Needed: bare CR")
