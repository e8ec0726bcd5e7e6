"""Structural checks of OpenPGP messages (RFC 4880 / RFC 9580), without crypto.

A chatmail relay only forwards end-to-end encrypted mail.  It cannot decrypt,
but it can check that a message *looks* like what an encrypting client
produces: one or more encrypted session keys (PKESK, tag 1, or SKESK, tag 3)
followed by exactly one Symmetrically Encrypted and Integrity Protected Data
packet (SEIPD, tag 18) that ends exactly where the data ends.  Anything else
(literal data, compressed data, signatures, trailing bytes, truncated
lengths) could carry cleartext and is refused.

Everything here is a pure function over bytes or text; nothing raises on bad
input.
"""

from __future__ import annotations

import binascii
import re

TAG_PKESK = 1
TAG_SKESK = 3
TAG_SEIPD = 18
SESSION_KEY_TAGS = (TAG_PKESK, TAG_SKESK)

# Packets that RFC 9580 lets use partial body lengths (data packets).
PARTIAL_OK_TAGS = (8, 9, 11, 18, 20)
MIN_FIRST_PARTIAL = 512

ARMOR_BEGIN = "-----BEGIN PGP MESSAGE-----"
ARMOR_END = "-----END PGP MESSAGE-----"
_CRC_LINE = re.compile(r"=[A-Za-z0-9+/]{4}")
# a prefix: the value after ": " is bounded by ARMOR_HEADER_MAX
_HEADER_LINE = re.compile(r"[A-Za-z0-9-]+: ")
# Armour headers RFC 9580 6.2 names; they are cleartext next to the
# ciphertext, so only a few short ones pass (incoming mail only).
ARMOR_HEADER_NAMES = ("version", "comment", "charset", "hash", "messageid")
ARMOR_HEADER_MAX = 80
ARMOR_HEADER_LINES = 2


class PacketError(ValueError):
    """The packet stream is malformed (truncated, bad length encoding...)."""


def iter_packets(data: bytes):
    """Yield ``(tag, body_length, offset_after)`` for each packet of ``data``.

    Understands new-format headers (one-, two-, five-octet and partial body
    lengths) and old-format headers (one-, two-, four-octet and indeterminate
    lengths).  Raises :class:`PacketError` when a header or body runs past the
    end of ``data`` or a length encoding is not allowed for the packet.
    """
    i = 0
    end = len(data)
    while i < end:
        first = data[i]
        i += 1
        if not first & 0x80:
            raise PacketError(f"bit 7 of packet header {first:#04x} is not set")
        if first & 0x40:
            tag = first & 0x3F
            body_len = 0
            partial = False
            while True:
                if i >= end:
                    raise PacketError("truncated length")
                octet = data[i]
                if octet < 192:
                    chunk = octet
                    i += 1
                elif octet < 224:
                    if i + 2 > end:
                        raise PacketError("truncated two-octet length")
                    chunk = ((octet - 192) << 8) + data[i + 1] + 192
                    i += 2
                elif octet == 255:
                    if i + 5 > end:
                        raise PacketError("truncated five-octet length")
                    chunk = int.from_bytes(data[i + 1 : i + 5], "big")
                    i += 5
                else:
                    if tag not in PARTIAL_OK_TAGS:
                        raise PacketError(f"partial length in packet tag {tag}")
                    chunk = 1 << (octet & 0x1F)
                    if not partial and chunk < MIN_FIRST_PARTIAL:
                        raise PacketError("first partial length below 512")
                    partial = True
                    i += 1
                    if i + chunk > end:
                        raise PacketError("truncated partial body")
                    i += chunk
                    body_len += chunk
                    continue
                if i + chunk > end:
                    raise PacketError("truncated packet body")
                i += chunk
                body_len += chunk
                break
        else:
            tag = (first >> 2) & 0x0F
            length_type = first & 0x03
            if length_type == 3:
                body_len = end - i
            else:
                size = (1, 2, 4)[length_type]
                if i + size > end:
                    raise PacketError("truncated old-format length")
                body_len = int.from_bytes(data[i : i + size], "big")
                i += size
            if i + body_len > end:
                raise PacketError("truncated packet body")
            i += body_len
        yield tag, body_len, i


def is_encrypted_packet_stream(data: bytes) -> bool:
    """True iff ``data`` is PKESK/SKESK packets (at least one) and then exactly
    one SEIPD packet that ends at the end of ``data``."""
    session_keys = 0
    try:
        for tag, _length, offset in iter_packets(data):
            if tag == TAG_SEIPD:
                return session_keys > 0 and offset == len(data)
            if tag not in SESSION_KEY_TAGS:
                return False
            session_keys += 1
    except PacketError:
        return False
    return False


def crc24(data: bytes) -> int:
    """The CRC-24 of RFC 4880 section 6.1 (armour checksum), for writers."""
    crc = 0xB704CE
    for octet in data:
        crc ^= octet << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    return crc & 0xFFFFFF


def dearmor(text: str, allow_headers: bool = False) -> bytes | None:
    """Decode an ASCII-armoured ``PGP MESSAGE``; None if it is not exactly one.

    Only blank lines may surround the armour.  Armour headers (``Version:``,
    ``Comment:``...) are refused unless ``allow_headers``; then at most
    :data:`ARMOR_HEADER_LINES` of the names RFC 9580 defines, each at most
    :data:`ARMOR_HEADER_MAX` characters.  The CRC-24 line is optional and
    only syntax-checked.
    """
    lines = [line.rstrip(" \t\r") for line in text.split("\n")]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    if len(lines) < 2 or lines[0] != ARMOR_BEGIN or lines[-1] != ARMOR_END:
        return None
    body = lines[1:-1]
    if allow_headers:
        if body and _HEADER_LINE.match(body[0]):
            count = 0
            while body and body[0]:
                line = body.pop(0)
                count += 1
                name = line.split(":", 1)[0].lower()
                if (
                    not _HEADER_LINE.match(line)
                    or name not in ARMOR_HEADER_NAMES
                    or len(line) > ARMOR_HEADER_MAX
                    or count > ARMOR_HEADER_LINES
                ):
                    return None
            if not body:
                return None
    while body and not body[0]:
        body.pop(0)
    if body and _CRC_LINE.fullmatch(body[-1]):
        # RFC 9580 6.1: the CRC-24 footer is optional and need not be checked;
        # it is syntax-checked only (decoding 30 MB of CRC in Python is slow).
        body.pop()
    if not body or "" in body:
        return None
    try:
        return binascii.a2b_base64("".join(body), strict_mode=True)
    except (binascii.Error, ValueError):
        return None


def is_encrypted_armor(text: str, allow_headers: bool = False) -> bool:
    """True iff ``text`` is an armoured PKESK/SKESK+SEIPD message."""
    data = dearmor(text, allow_headers=allow_headers)
    return data is not None and is_encrypted_packet_stream(data)
