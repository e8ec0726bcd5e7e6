"""Unit and property tests of the OpenPGP packet-stream and armour checks."""

import base64

import pytest
from chatmaild.openpgp import (
    PacketError,
    crc24,
    dearmor,
    is_encrypted_armor,
    is_encrypted_packet_stream,
    iter_packets,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# --- packet builders (independent of the code under test) ---


def new_len(n: int) -> bytes:
    if n < 192:
        return bytes([n])
    if n < 8384:
        n -= 192
        return bytes([(n >> 8) + 192, n & 0xFF])
    return b"\xff" + n.to_bytes(4, "big")


def new_pkt(tag: int, body: bytes, five_octet=False) -> bytes:
    length = b"\xff" + len(body).to_bytes(4, "big") if five_octet else new_len(len(body))
    return bytes([0xC0 | tag]) + length + body


def old_pkt(tag: int, body: bytes, length_type=None) -> bytes:
    if length_type is None:
        length_type = 0 if len(body) < 256 else 1 if len(body) < 65536 else 2
    if length_type == 3:
        return bytes([0x80 | (tag << 2) | 3]) + body
    size = (1, 2, 4)[length_type]
    return bytes([0x80 | (tag << 2) | length_type]) + len(body).to_bytes(size, "big") + body


def partial_pkt(tag: int, body: bytes, exponents=(9,)) -> bytes:
    """New-format packet split into partial chunks of 2**e, then a final length."""
    out = bytearray([0xC0 | tag])
    rest = body
    for e in exponents:
        chunk = 1 << e
        assert len(rest) > chunk
        out.append(0xE0 | e)
        out += rest[:chunk]
        rest = rest[chunk:]
    out += new_len(len(rest)) + rest
    return bytes(out)


PKESK = new_pkt(1, b"\x03" + b"K" * 93)
SKESK = new_pkt(3, b"\x04\x09\x03\x02" + b"S" * 9)
SEIPD = new_pkt(18, b"\x01" + b"E" * 200)


def armor(data: bytes, headers: str = "", crc=True) -> str:
    b64 = base64.b64encode(data).decode()
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    out = ["-----BEGIN PGP MESSAGE-----", *headers.splitlines(), "", *lines]
    if crc:
        out.append("=" + base64.b64encode(crc24(data).to_bytes(3, "big")).decode())
    out.append("-----END PGP MESSAGE-----")
    return "\r\n".join(out) + "\r\n"


# --- packet stream ---


@pytest.mark.parametrize(
    "stream",
    [
        PKESK + SEIPD,
        SKESK + SEIPD,
        PKESK + PKESK + SKESK + SEIPD,
        old_pkt(1, b"\x03" + b"K" * 93) + SEIPD,
        old_pkt(3, b"S" * 13, length_type=1) + SEIPD,
        old_pkt(1, b"K" * 300, length_type=2) + SEIPD,
        PKESK + new_pkt(18, b"\x02" + b"E" * 300),
        PKESK + new_pkt(18, b"\x01" + b"E" * 20, five_octet=True),
        PKESK + new_pkt(18, b"\x01" + b"E" * 9000),
        PKESK + partial_pkt(18, b"\x01" + b"E" * 2000, exponents=(9, 10)),
        PKESK + partial_pkt(18, b"\x01" + b"E" * 512, exponents=(9,)),
    ],
)
def test_valid_streams(stream):
    assert is_encrypted_packet_stream(stream)


@pytest.mark.parametrize(
    "stream, why",
    [
        (b"", "empty"),
        (SEIPD, "no session key packet"),
        (PKESK, "no SEIPD"),
        (PKESK + SKESK, "no SEIPD"),
        (PKESK + SEIPD + SEIPD, "two SEIPD"),
        (PKESK + SEIPD + PKESK, "packet after SEIPD"),
        (PKESK + SEIPD + b"\x00", "trailing garbage"),
        (PKESK + SEIPD[:-1], "truncated body"),
        (PKESK + SEIPD[:1], "truncated header"),
        (PKESK + b"\xd2\xc5", "truncated two-octet length"),
        (PKESK + b"\xd2\xff\x00\x00", "truncated five-octet length"),
        (new_pkt(11, b"b\x00\x00\x00\x00\x00hello"), "literal data"),
        (PKESK + new_pkt(11, b"b\x00\x00\x00\x00\x00hello"), "literal after PKESK"),
        (PKESK + new_pkt(8, b"\x01" + b"Z" * 30), "compressed data"),
        (PKESK + old_pkt(8, b"\x01" + b"Z" * 30, length_type=3), "indeterminate compressed"),
        (PKESK + new_pkt(9, b"X" * 40), "legacy SED without integrity"),
        (PKESK + new_pkt(2, b"sig") + SEIPD, "signature between"),
        (new_pkt(10, b"PGP") + PKESK + SEIPD, "marker packet"),
        (PKESK + new_pkt(20, b"\x01" + b"A" * 40), "AEAD packet"),
        (PKESK + SEIPD + new_pkt(21, b"\x00" * 8), "padding after SEIPD"),
        (b"\x3f" + PKESK + SEIPD, "bit 7 clear"),
        (old_pkt(1, b"K" * 40, length_type=3) + SEIPD, "indeterminate PKESK eats SEIPD"),
        (bytes([0xC1, 0xE9]) + b"K" * 512 + b"\x05KKKKK" + SEIPD, "partial PKESK"),
        (PKESK + bytes([0xD2, 0xE1, 1, 2, 3]), "first partial below 512"),
        (PKESK + bytes([0xD2, 0xE9]) + b"E" * 512, "partial without final length"),
        (PKESK + bytes([0xD2, 0xEA]) + b"E" * 600, "partial chunk truncated"),
    ],
)
def test_invalid_streams(stream, why):
    assert not is_encrypted_packet_stream(stream), why


def test_iter_packets_reports_tags_and_offsets():
    stream = PKESK + SKESK + SEIPD
    assert [(t, o) for t, _, o in iter_packets(stream)] == [
        (1, len(PKESK)),
        (3, len(PKESK) + len(SKESK)),
        (18, len(stream)),
    ]
    with pytest.raises(PacketError):
        list(iter_packets(PKESK[:-1]))


# --- armour ---


def test_armor_roundtrip_with_and_without_crc():
    data = PKESK + SEIPD
    assert dearmor(armor(data)) == data
    assert dearmor(armor(data, crc=False)) == data
    assert is_encrypted_armor(armor(data))
    assert is_encrypted_armor(armor(data).replace("\r\n", "\n"))
    assert is_encrypted_armor("\r\n\r\n" + armor(data) + "\r\n\r\n")


def test_armor_blank_line_after_begin_optional():
    text = armor(PKESK + SEIPD).replace("-----\r\n\r\n", "-----\r\n", 1)
    assert is_encrypted_armor(text)


def test_armor_headers_refused_unless_allowed():
    text = armor(PKESK + SEIPD, headers="Version: GnuPG v2")
    assert not is_encrypted_armor(text)
    assert is_encrypted_armor(text, allow_headers=True)
    text = armor(PKESK + SEIPD, headers="Comment: hi\r\nCharset: utf-8")
    assert not is_encrypted_armor(text)
    assert is_encrypted_armor(text, allow_headers=True)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t.replace("BEGIN PGP MESSAGE", "BEGIN PGP SIGNED MESSAGE"),
        lambda t: t.replace("-----END PGP MESSAGE-----", ""),
        lambda t: "Hello\r\n" + t,
        lambda t: t + "trailing text\r\n",
        lambda t: t + t,
        lambda t: t.replace("\r\n=", "\r\n\r\n="),
        lambda t: t.replace("\r\n=", "\r\n!!!!\r\n="),
        lambda t: t.replace("-----\r\n\r\n", "-----\r\n\r\n====", 1),
    ],
)
def test_armor_mangled(mangle):
    assert not is_encrypted_armor(mangle(armor(PKESK + SEIPD)))


def test_armor_of_literal_refused():
    assert dearmor(armor(new_pkt(11, b"b\x00\x00\x00\x00\x00hi"))) is not None
    assert not is_encrypted_armor(armor(new_pkt(11, b"b\x00\x00\x00\x00\x00hi")))


def test_crc24_known_value():
    # "=tzOF" is what gpg wrote for this literal packet.
    data = base64.b64decode("yxliAGsCatJIZWxsbyBpbiB0aGUgY2xlYXIK")
    assert base64.b64encode(crc24(data).to_bytes(3, "big")) == b"tzOF"


# --- property tests ---

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def oracle(data: bytes) -> bool:
    """A second, deliberately simple reading of the acceptance rule."""
    tags = []
    i = 0
    try:
        while i < len(data):
            hdr = data[i]
            i += 1
            if hdr & 0xC0 == 0xC0:
                tag = hdr & 0x3F
                first = True
                while True:
                    b = data[i]
                    if 224 <= b < 255:
                        n = 1 << (b & 0x1F)
                        if tag not in (8, 9, 11, 18, 20) or (first and n < 512):
                            return False
                        first = False
                        i += 1 + n
                        if i > len(data):
                            return False
                        continue
                    if b < 192:
                        n, i = b, i + 1
                    elif b < 224:
                        n, i = ((b - 192) << 8) + data[i + 1] + 192, i + 2
                    else:
                        n, i = int.from_bytes(data[i + 1 : i + 5], "big"), i + 5
                        if i > len(data):
                            return False
                    break
            elif hdr & 0x80:
                tag = (hdr >> 2) & 0x0F
                lt = hdr & 3
                if lt == 3:
                    n = len(data) - i
                else:
                    size = (1, 2, 4)[lt]
                    if i + size > len(data):
                        return False
                    n = int.from_bytes(data[i : i + size], "big")
                    i += size
            else:
                return False
            i += n
            if i > len(data):
                return False
            tags.append(tag)
    except IndexError:
        return False
    return len(tags) >= 2 and tags[-1] == 18 and all(t in (1, 3) for t in tags[:-1])


@FAST
@given(st.binary(max_size=300))
def test_random_bytes_never_raise_and_agree_with_oracle(data):
    assert is_encrypted_packet_stream(data) == oracle(data)


@st.composite
def packet(draw, tag):
    body = draw(st.binary(min_size=1, max_size=700))
    fmt = draw(st.sampled_from(["new", "five", "old", "partial"] if tag < 16 else ["new", "five"]))
    if fmt == "partial" or (tag == 18 and draw(st.booleans()) and len(body) > 512):
        if len(body) > 512:
            return partial_pkt(tag, body, exponents=(9,)), tag in (8, 9, 11, 18, 20)
        fmt = "new"
    if fmt == "new":
        return new_pkt(tag, body), True
    if fmt == "five":
        return new_pkt(tag, body, five_octet=True), True
    length_type = draw(st.integers(0 if len(body) < 256 else 1, 2))
    return old_pkt(tag, body, length_type=length_type), True


@FAST
@given(
    st.lists(st.sampled_from([1, 3, 18, 11, 8, 2, 9, 20, 10]), min_size=0, max_size=5),
    st.data(),
    st.sampled_from(["none", "truncate", "garbage"]),
)
def test_structured_streams(tags, data, mutation):
    parts = [data.draw(packet(tag)) for tag in tags]
    stream = b"".join(p for p, _ in parts)
    well_formed = all(ok for _, ok in parts)
    expected = (
        well_formed and len(tags) >= 2 and tags[-1] == 18 and all(t in (1, 3) for t in tags[:-1])
    )
    assert is_encrypted_packet_stream(stream) == expected
    if mutation == "truncate" and stream:
        stream = stream[: data.draw(st.integers(0, len(stream) - 1))]
    elif mutation == "garbage":
        stream += data.draw(st.binary(min_size=1, max_size=20))
    else:
        return
    # A valid stream never stays valid when cut short or extended.
    if expected:
        assert not is_encrypted_packet_stream(stream)
    assert is_encrypted_packet_stream(stream) == oracle(stream)


@FAST
@given(st.text(max_size=400))
def test_random_text_never_accepted_as_armor(text):
    assert not is_encrypted_armor(text)
    assert not is_encrypted_armor(text, allow_headers=True)


@FAST
@given(st.binary(max_size=300))
def test_armor_accepts_exactly_what_the_packet_check_accepts(data):
    assert is_encrypted_armor(armor(data)) == is_encrypted_packet_stream(data)
