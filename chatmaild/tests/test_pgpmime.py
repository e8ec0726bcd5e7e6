"""The rules around the ciphertext (chatmaild.pgpmime) as functions."""

import pytest
from chatmaild.pgpmime import (
    from_address,
    outer_headers_problem,
    part_headers_problem,
    preamble_ok,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from chatmaild import pgpmime

atext = st.text(
    alphabet=st.sampled_from(list("aZ09!#$%&'*+/=?^_`{|}~-.@[]<> ,;:\"()\\")), max_size=14
)


@settings(max_examples=3000, deadline=None)
@given(atext)
def test_plain_forms_read_as_the_full_parser_reads_them(value):
    """from_address and the display-name count skip the RFC 5322 parser for
    plain forms; on those the parser must give the same answer."""
    if pgpmime._PLAIN_MAILBOX.fullmatch(value) and (value[:1] == "<") == (value[-1:] == ">"):
        assert from_address(value) == pgpmime._from_address_parsed(value)
    if pgpmime._PLAIN_LIST.fullmatch(value):
        assert pgpmime._display_name_bytes_parsed("to", value) == 0


@pytest.mark.parametrize(
    "value, expected",
    [
        ("a@b.org", "a@b.org"),
        ("<a@b.org>", "a@b.org"),
        ("<a@b.org", None),
        ("a@b.org>", None),
        ("x@[192.0.2.1]", "x@[192.0.2.1]"),
        ("Alice <a@b.org>", "a@b.org"),
        ("a..b@b.org", None),
        ("a@b.org\x00", None),
    ],
)
def test_from_address(value, expected):
    assert from_address(value) == expected


def test_preamble():
    assert preamble_ok(None) and preamble_ok("\r\n \t")
    assert preamble_ok("This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)\r\n")
    assert not preamble_ok("This is an OpenPGP/MIME encrypted message. Hi Bob!")


def test_part_headers():
    ok = [("Content-Type", 'application/octet-stream; name="encrypted.asc"')]
    assert part_headers_problem(ok, pgpmime.DATA_TYPE) is None
    assert part_headers_problem(ok, pgpmime.CONTROL_TYPE)
    assert part_headers_problem(ok + ok, pgpmime.DATA_TYPE)
    assert part_headers_problem([], pgpmime.DATA_TYPE)
    assert part_headers_problem(ok + [("X-A", "b")], pgpmime.DATA_TYPE)
    assert part_headers_problem(ok + [("Content-Description", "hi bob")], pgpmime.DATA_TYPE)


BASE = [
    ("From", "<a@b.org>"),
    ("To", '"hidden-recipients": ;'),
    ("Subject", "[...]"),
    ("Date", "Thu, 19 Nov 2026 17:12:45 +0000"),
    ("Message-ID", "<x@y.z>"),
    ("MIME-Version", "1.0"),
    ("Content-Type", 'multipart/encrypted; protocol="application/pgp-encrypted"; boundary="b"'),
]


@pytest.mark.parametrize(
    "extra",
    [
        ("Comments", "hi"),
        ("Keywords", "hi"),
        ("X-Anything", "1"),
        ("Subject", "[...]"),
        ("Autocrypt", "addr=a@b.org; keydata=AAAA; _x=hello there"),
        ("Autocrypt", "addr=a@b.org; keydata=not base64!"),
        ("Chat-Version", "1.0 hello"),
        ("Auto-Submitted", "auto-replied; note=hello"),
        ("In-Reply-To", "hello <x@y.z>"),
        ("Cc", "Dear Bob, I write in cleartext <c@d.org>"),
        ("User-Agent", "x" * 200),
        ("Content-Language", "en, and some words"),
    ],
)
def test_outer_headers_refused(extra):
    assert outer_headers_problem(BASE) is None
    assert outer_headers_problem(BASE + [extra])


def test_outer_display_names_bounded_in_total():
    names = [("Cc", ", ".join(f'"Name number {i}" <c{i}@d.org>' for i in range(40)))]
    assert outer_headers_problem(BASE + names)
    assert outer_headers_problem(BASE + [("Cc", "Carol <c@d.org>, Dave <d@d.org>")]) is None
