"""The fast path is never more permissive than the full parser.

Differential: whenever ``encrypted_sender`` (bytes) accepts a message, the
full path (:mod:`email` parser + the same checks) must accept it too and
name the same sender.  The corpus mixes a real OpenPGP/MIME sample with
generated From values, preambles, epilogues, part headers, outer headers and
byte-level mutations."""

from __future__ import annotations

from pathlib import Path

import pytest
from chatmaild.filtermail import (
    encryption_problem,
    parse_message,
    single_from_address,
)
from chatmaild.filtermail_fastpath import encrypted_sender
from chatmaild.pgpmime import outer_headers_problem
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

DATA = Path(__file__).parent / "mail-data"
A = "alice0001@chat.example.org"
B = "bob000001@other.example.net"


def sample(name="encrypted.eml") -> bytes:
    text = (DATA / name).read_text()
    text = text.replace("{from_addr}", A).replace("{to_addr}", B)
    return text.replace("\n", "\r\n").encode()


def full_path_sender(raw: bytes, outgoing: bool) -> str | None:
    msg = parse_message(raw)
    if encryption_problem(msg) is not None:
        return None
    if outgoing and outer_headers_problem(msg.items()):
        return None
    return single_from_address(msg)


def assert_not_more_permissive(raw: bytes):
    for outgoing in (True, False):
        fast = encrypted_sender(raw, outgoing=outgoing)
        if fast is not None:
            assert fast == full_path_sender(raw, outgoing), (outgoing, raw[:300])


# From values the old fast path accepted and the full path refused (or
# read differently): control characters, dot tricks, unbalanced brackets,
# display-name tricks.
TRICKY_FROM = [
    "<alice\x00001@chat.example.org>",
    f"<{A}\x00>",
    "alice\x01@chat.example.org",
    "<alice\x7f@chat.example.org>",
    "<a..b@chat.example.org>",
    "<.alice@chat.example.org>",
    "<alice.@chat.example.org>",
    "<x@chat..example.org>",
    "<x@chat.example.org.>",
    "<x@.chat.example.org>",
    "<x@[192.0.2.1>",
    "<x@192.0.2.1]>",
    "<x@[192.0.2.1]]>",
    "<x@[[192.0.2.1]>",
    "x@[192.0.2.1",
    f"Alice <{A}> <{B}>",
    f"{A} <{B}>",
    f"<{A}> Bob",
    f'"{A}" <{B}>',
    f"Alice.Example <{A}>",
    f"Al<ice <{A}>",
    f"Alice (comment) <{A}>",
    f"<{A}> (comment)",
    f"<{A}>,",
    f"<{A}>;",
    f"<{A}>, <{B}>",
    f"Undisclosed: <{A}>;",
    f"<<{A}>>",
    f"<{A}",
    f"{A}>",
    "<@chat.example.org>",
    "<alice0001@>",
    "<alice0001>",
    "<a@b@c.org>",
    "=?utf-8?q?=00?= <" + A + ">",
    "=?utf-8?b?AA==?= <" + A + ">",
    f" <{A}>",
    f"<{A}> ",
    f"<{A}>\r\n (folded)",
    f"\r\n <{A}>",
]


@pytest.mark.parametrize("value", TRICKY_FROM, ids=repr)
def test_tricky_from_values(value):
    raw = sample().replace(f"From: <{A}>".encode(), f"From: {value}".encode("latin-1"))
    assert_not_more_permissive(raw)


def test_old_fast_path_finding_is_refused():
    """The NUL byte the project's mutation test found: the old fast path
    answered alice0001@... while the full parser refused the header."""
    raw = sample().replace(A.encode(), A.replace("@", "\x00@").encode(), 1)
    assert encrypted_sender(raw) is None
    assert full_path_sender(raw, False) is None


display = st.text(
    alphabet=st.sampled_from(list('abAB09 .,;:"()<>@[]\\=?_-\t\x00\x01\x7f')), max_size=12
)
local = st.text(alphabet=st.sampled_from(list('ab09.+-_%!"\\ \x00@[]')), min_size=0, max_size=10)
domain = st.one_of(
    st.text(alphabet=st.sampled_from(list("ab09.-[]:")), min_size=0, max_size=12),
    st.sampled_from(["chat.example.org", "[192.0.2.1]", "[IPv6:2001:db8::1]", "x."]),
)


@st.composite
def from_values(draw):
    addr = f"{draw(local)}@{draw(domain)}"
    form = draw(st.sampled_from(["<{a}>", "{a}", "{d} <{a}>", '"{d}" <{a}>', "{d}<{a}>{d}"]))
    return form.format(a=addr, d=draw(display))


BOUNDARY = b"xYzEncBoundary42"
FRAGMENTS = [
    b"\r\n",
    b"\n",
    b"\r",
    b" ",
    b"\t",
    b"\x00",
    b"-",
    b"--",
    b"--" + BOUNDARY,
    b"--" + BOUNDARY + b"--",
    b"\r\n--" + BOUNDARY + b"\r\n",
    b"\r\n--" + BOUNDARY + b"--\r\n",
    b":",
    b";",
    b"=",
    b'"',
    b"\xff",
    b"a",
    b"X-Leak: hello\r\n",
    b"Content-Type: text/plain\r\n",
    b"Content-Transfer-Encoding: base64\r\n",
    b"Version: 1\r\n",
    b"This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)\r\n",
    b"hello world\r\n",
    b"-----END PGP MESSAGE-----\r\n",
    b"-----BEGIN PGP MESSAGE-----\r\n",
]

mutations = st.lists(
    st.tuples(st.floats(0, 1), st.integers(0, 4), st.sampled_from(FRAGMENTS)),
    min_size=0,
    max_size=4,
)


@settings(
    max_examples=3000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    st.sampled_from(["encrypted.eml", "encrypted-skesk.eml", "encrypted-partial.eml"]),
    st.one_of(
        st.sampled_from([f"<{A}>", A, f"Alice <{A}>", f'"Al, Ice" <{A}>', "x@[192.0.2.1]"]),
        st.sampled_from(TRICKY_FROM),
        from_values(),
    ),
    st.one_of(mutations, st.lists(st.just((0.0, 0, b"")), max_size=1)),
)
def test_fast_path_never_more_permissive_generated(name, from_value, muts):
    raw = sample(name).replace(f"From: <{A}>".encode(), b"From: " + from_value.encode("utf-8"))
    for where, drop, insert in muts:
        pos = int(where * len(raw))
        raw = raw[:pos] + insert + raw[pos + drop :]
    assert_not_more_permissive(raw)
