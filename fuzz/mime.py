"""Hypothesis strategies for PGP/MIME messages with cleartext anywhere.

A message is assembled from components; a drawn set of at most three
"faulty" components get a wrong variant, the others a right one, so that
clean messages (which must pass) and messages with one or two faults (which
must not) both come often.  Variants: real PKESK/SKESK + SEIPD packet streams (all length encodings,
partial lengths) or ones carrying a literal-data packet, trailing bytes,
truncation; armour with or without checksum and headers; preamble,
epilogue, part headers and outer headers that are empty, the usual ones, or
prose; extra parts, nesting, transfer encodings, LF line ends; and a final
optional byte-level splice of prose anywhere.
"""

from __future__ import annotations

import base64
import os

from hypothesis import strategies as st

SENDER = "alice0001@chat.example.org"
RCPT = "bob000001@other.example.net"
PROSE = [
    b"Hello Bob, this is cleartext.",
    b"Version: 1 and then some words",
    b"-----BEGIN PGP SIGNED MESSAGE-----",
    b"Content-Type: text/plain",
    b"x",
    b"=41=42",
    "Grüße aus dem Klartext".encode(),
]


def _new_len(n: int) -> bytes:
    if n < 192:
        return bytes([n])
    if n < 8384:
        n -= 192
        return bytes([(n >> 8) + 192, n & 0xFF])
    return b"\xff" + n.to_bytes(4, "big")


@st.composite
def packet(draw, tag: int, body: bytes | None = None) -> bytes:
    if body is None:
        body = draw(
            st.one_of(
                st.binary(min_size=1, max_size=120),
                st.sampled_from(PROSE),
                st.builds(os.urandom, st.integers(600, 2000)),
            )
        )
    form = draw(st.sampled_from(["new", "new", "old", "partial"]))
    if form == "old" and tag < 16:
        if len(body) < 256:
            return bytes([0x80 | (tag << 2)]) + bytes([len(body)]) + body
        return bytes([0x80 | (tag << 2) | 2]) + len(body).to_bytes(4, "big") + body
    if form == "partial" and len(body) >= 513:
        out = bytes([0xC0 | tag]) + bytes([224 + 9]) + body[:512]
        return out + _new_len(len(body) - 512) + body[512:]
    return bytes([0xC0 | tag]) + _new_len(len(body)) + body


@st.composite
def packet_stream(draw, good=True) -> bytes:
    keys = b"".join(draw(st.lists(st.sampled_from([1, 3]).flatmap(packet), min_size=1, max_size=3)))
    seipd = draw(packet(18))
    if good:
        return keys + seipd
    kind = draw(
        st.sampled_from(["literal", "compressed", "trailing", "truncated", "nokeys", "two"])
    )
    if kind == "literal":
        return keys + draw(packet(11, b"b\x00\x00\x00\x00\x00" + draw(st.sampled_from(PROSE))))
    if kind == "compressed":
        return keys + draw(packet(8))
    if kind == "trailing":
        return keys + seipd + draw(st.sampled_from(PROSE))
    if kind == "truncated":
        return (keys + seipd)[: -draw(st.integers(1, 5))]
    if kind == "nokeys":
        return seipd
    return keys + seipd + seipd


@st.composite
def armour(draw, nl: bytes, faults=frozenset()) -> bytes:
    data = draw(packet_stream("packets" not in faults))
    b64 = base64.b64encode(data)
    width = draw(st.sampled_from([64, 76, 60]))
    lines = [b64[i : i + width] for i in range(0, len(b64), width)] or [b""]
    head = [b"-----BEGIN PGP MESSAGE-----"]
    if "armour_headers" in faults:
        head += draw(st.sampled_from([[b"Comment: " + PROSE[0] * 3], [b"Comment: x"] * 3]))
    else:
        head += draw(st.sampled_from([[], [b"Version: GnuPG v2"]]))
    crc = draw(st.sampled_from([[], [b"=y9x1"]]))
    tail = [b"-----END PGP MESSAGE-----"]
    extra = [draw(st.sampled_from(PROSE))] if "armour_extra" in faults else []
    where = draw(st.integers(0, 2))
    body = lines + crc
    if extra:
        body = body[:where] + extra + body[where:]
    return nl.join(head + [b""] + body + tail) + nl


OUTER_GOOD = [
    (b"Chat-Version", b"1.0"),
    (b"Autocrypt", b"addr=" + SENDER.encode() + b"; prefer-encrypt=mutual; keydata=AAAA"),
    (b"In-Reply-To", b"<a@b.c>"),
    (b"User-Agent", b"Thunderbird/128.0"),
    (b"Received", b"from x by y; Sun, 22 Nov 2026 04:00:00 +0000"),
]
OUTER_EXTRA = [
    (b"Autocrypt", b"addr=a@b.c; keydata=AAAA; _note=" + PROSE[0]),
    (b"X-Leak", PROSE[0]),
    (b"Comments", PROSE[0]),
    (b"Keywords", PROSE[0]),
    (b"Subject", PROSE[0]),
    (b"Cc", b'"' + PROSE[0] * 20 + b'" <c@d.org>'),
]
PART_HEADER_GOOD = [
    [],
    [b"Content-Description: OpenPGP encrypted message"],
    [b'Content-Disposition: inline; filename="encrypted.asc"'],
    [b"Content-Transfer-Encoding: 7bit"],
]
PART_HEADER_BAD = [
    [b"Content-Description: " + PROSE[0]],
    [b"X-Note: " + PROSE[0]],
    [b"Content-Transfer-Encoding: base64"],
    [PROSE[0]],
]
NOTICE = b"This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)"
FREE_GOOD = [b"", b" \t", NOTICE]
FREE_BAD = PROSE[:3]
COMPONENTS = [
    "packets", "armour_headers", "armour_extra", "outer", "control_type", "control_headers",
    "control_body",
    "data_type", "data_headers", "extra_part", "preamble", "epilogue", "splice",
]  # fmt: skip


@st.composite
def pgp_mime(draw, outgoing: bool = True) -> bytes:
    faults = draw(st.sets(st.sampled_from(COMPONENTS), max_size=3))

    def pick(component, good, bad):
        return draw(st.sampled_from(bad if component in faults else good))

    nl = draw(st.sampled_from([b"\r\n"] * 6 + [b"\n"]))
    boundary = draw(st.sampled_from([b"xYzEncBoundary42", b"b", b"=_q.1", b"ab'(c)+,-./:=?"]))
    outer = [
        (b"From", b"<" + SENDER.encode() + b">"),
        (b"To", b"<" + RCPT.encode() + b">"),
        (b"Subject", b"[...]"),
        (b"Date", b"Sun, 22 Nov 2026 04:00:00 +0000"),
        (b"Message-ID", b"<m1@example.org>"),
        (b"MIME-Version", b"1.0"),
    ]
    outer += draw(st.lists(st.sampled_from(OUTER_GOOD), max_size=2, unique=True))
    if "outer" in faults:
        outer.append(draw(st.sampled_from(OUTER_EXTRA)))
    ctype = (
        b'multipart/encrypted; protocol="application/pgp-encrypted";'
        + nl
        + b' boundary="'
        + boundary
        + b'"'
    )
    outer.append((b"Content-Type", ctype))
    outer = draw(st.permutations(outer))
    control_headers = [pick("control_type", [
        b"Content-Type: application/pgp-encrypted",
        b'Content-Type: application/pgp-encrypted; charset="utf-8"',
    ], [
        b'Content-Type: application/pgp-encrypted; charset="' + PROSE[0].replace(b" ", b"_") + b'"',
    ])]  # fmt: skip
    control_headers += pick("control_headers", PART_HEADER_GOOD, PART_HEADER_BAD)
    control_body = pick(
        "control_body", [b"Version: 1"], [b"Version: 1" + nl + PROSE[0], PROSE[0], b"Version: 2"]
    )
    data_headers = [pick("data_type", [
        b"Content-Type: application/octet-stream",
        b'Content-Type: application/octet-stream; name="encrypted.asc"',
        b'Content-Type: application/octet-stream; charset="utf-8"',
    ], [
        b'Content-Type: application/octet-stream; charset="' + PROSE[0].replace(b" ", b"_") + b'"',
        b'Content-Type: application/octet-stream; name="' + PROSE[0].replace(b" ", b"_") + b'"',
        b"Content-Type: text/plain",
    ])]  # fmt: skip
    data_headers += pick("data_headers", PART_HEADER_GOOD, PART_HEADER_BAD)
    data_body = draw(armour(nl, faults))
    if b"Content-Transfer-Encoding: base64" in data_headers:
        data_body = base64.encodebytes(data_body).replace(b"\n", nl)
    parts = [
        nl.join(control_headers) + nl + nl + control_body + nl,
        nl.join(data_headers) + nl + nl + data_body,
    ]
    if "extra_part" in faults:
        extra = b"Content-Type: text/plain" + nl + nl + draw(st.sampled_from(PROSE)) + nl
        parts.insert(draw(st.integers(0, 2)), extra)
    preamble = pick("preamble", FREE_GOOD, FREE_BAD)
    epilogue = pick("epilogue", FREE_GOOD, FREE_BAD)
    body = (preamble + nl if preamble else b"") + b"--" + boundary + nl
    body += (nl + b"--" + boundary + nl).join(parts)
    body += nl + b"--" + boundary + b"--" + nl + (epilogue + nl if epilogue else b"")
    head = nl.join(name + b": " + value for name, value in outer)
    raw = head + nl + nl + body
    if "splice" in faults:
        pos = draw(st.integers(0, len(raw)))
        raw = raw[:pos] + draw(st.sampled_from(PROSE + [nl, b"--" + boundary + nl])) + raw[pos:]
    return raw


@st.composite
def plain_mail(draw) -> bytes:
    text = draw(st.sampled_from(PROSE))
    ctype = draw(st.sampled_from([b"text/plain", b"multipart/mixed; boundary=x", b"text/html"]))
    return (
        b"From: <zoe000001@other.example.net>\r\nTo: <strict001@chat.example.org>\r\n"
        b"Subject: hi\r\nContent-Type: " + ctype + b"\r\n\r\n--x\r\n\r\n" + text + b"\r\n--x--\r\n"
    )
