"""An independent judge of what filtermail accepted as encrypted.

The invariant: an accepted message carries no byte of cleartext body
outside OpenPGP packets.  Checked here without any of chatmaild's code:
after the outer header block, every line of the message must be one of

* blank (whitespace only), or the fixed OpenPGP/MIME notice;
* a boundary line of the outer boundary (``--B`` / ``--B--``);
* a part header line from a fixed, short list (folded lines unfolded);
* ``Version: 1`` (the control part);
* the armour: BEGIN/END lines, base64 lines, the ``=XXXX`` checksum, and
  on incoming mail at most two short armour headers;

and the base64 inside the armour must decode to one or more PKESK/SKESK
packets followed by exactly one SEIPD packet ending at the end of the data
(walked here with an own packet parser).  Outer headers of outgoing mail
must have known names and a placeholder Subject.

Returns a reason string for a violation, None if the message is clean.
"""

from __future__ import annotations

import base64
import binascii
import re

NOTICES = (
    b"This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)",
    b"This is an OpenPGP/MIME encrypted message (RFC 2440 and 3156)",
    b"This is an OpenPGP/MIME encrypted message",
)
_FILE = rb'"?(?:encrypted|msg|message|openpgp)\.asc"?'
_CHARSET = rb'(?:;\s*charset="?(?:utf-8|us-ascii)"?\s*)?'
_PART_HEADER = re.compile(
    rb"(?i)(?:"
    rb"content-type:\s*application/pgp-encrypted\s*" + _CHARSET + rb";?"
    rb"|content-type:\s*application/octet-stream\s*(?:;\s*name=" + _FILE + rb"\s*)?"
    + _CHARSET + rb"(?:;\s*name=" + _FILE + rb"\s*)?;?"
    rb"|content-description:\s*(?:pgp/mime versions? identification"
    rb"|openpgp(?:/mime)? encrypted message)"
    rb"|content-disposition:\s*(?:inline|attachment)\s*(?:;\s*filename=" + _FILE + rb"\s*)?;?"
    rb"|content-transfer-encoding:\s*[78]bit"
    rb")\s*"
)
_ARMOR_HEADER = re.compile(rb"(?i)(?:version|comment|charset|hash|messageid): [ -~]{0,72}")
_B64_LINE = re.compile(rb"[A-Za-z0-9+/=]+")
_CRC = re.compile(rb"=[A-Za-z0-9+/]{4}")
OUTER_NAMES = {
    b"from", b"to", b"cc", b"date", b"message-id", b"in-reply-to", b"references", b"subject",
    b"mime-version", b"content-type", b"content-transfer-encoding", b"chat-version",
    b"chat-is-post-message", b"auto-submitted", b"autocrypt-setup-message", b"autocrypt",
    b"received", b"user-agent", b"content-language",
}  # fmt: skip
SUBJECTS = {b"[...]", b"...", b"", b"encrypted message", b"encrypted"}


def packets_ok(data: bytes) -> bool:
    """PKESK/SKESK (tags 1, 3) packets, then exactly one SEIPD (18) that ends
    at the end of ``data``."""
    i, n, keys = 0, len(data), 0
    while i < n:
        first = data[i]
        i += 1
        if not first & 0x80:
            return False
        if first & 0x40:
            tag = first & 0x3F
            while True:
                if i >= n:
                    return False
                o = data[i]
                if o < 192:
                    length, i = o, i + 1
                elif o < 224:
                    if i + 2 > n:
                        return False
                    length, i = ((o - 192) << 8) + data[i + 1] + 192, i + 2
                elif o == 255:
                    if i + 5 > n:
                        return False
                    length, i = int.from_bytes(data[i + 1 : i + 5], "big"), i + 5
                else:
                    if tag != 18:
                        return False
                    length, i = 1 << (o & 0x1F), i + 1
                    if i + length > n:
                        return False
                    i += length
                    continue
                if i + length > n:
                    return False
                i += length
                break
        else:
            tag = (first >> 2) & 0x0F
            kind = first & 3
            if kind == 3:
                length = n - i
            else:
                size = (1, 2, 4)[kind]
                if i + size > n:
                    return False
                length = int.from_bytes(data[i : i + size], "big")
                i += size
            if i + length > n:
                return False
            i += length
        if tag == 18:
            return keys > 0 and i == n
        if tag not in (1, 3):
            return False
        keys += 1
    return False


def _split(raw: bytes):
    nl = b"\r\n" if b"\r\n" in raw else b"\n"
    end = raw.find(nl + nl)
    if end < 0:
        return None
    return nl, raw[:end], raw[end + 2 * len(nl) :]


def _unfold(lines: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for line in lines:
        if line[:1] in (b" ", b"\t") and out:
            out[-1] += b" " + line.strip()
        else:
            out.append(line)
    return out


def violation(raw: bytes, outgoing: bool) -> str | None:
    split = _split(raw)
    if split is None:
        return "no header/body separator"
    nl, head, body = split
    headers = _unfold(head.split(nl))
    boundary = None
    for line in headers:
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        if outgoing and key not in OUTER_NAMES:
            return f"outer header {name[:40]!r}"
        if outgoing and key == b"subject" and value.strip().lower() not in SUBJECTS:
            return f"outer Subject {value[:40]!r}"
        if key == b"content-type":
            m = re.search(rb'(?i)boundary="?([^";\s]+)"?', value)
            if m:
                boundary = m.group(1)
    if not boundary:
        return "no boundary"
    lines = body.split(nl)
    state = "free"  # free | headers | body | armor-head | armor
    armor: list[bytes] = []
    armors: list[bytes] = []
    pending: list[bytes] = []
    armor_headers = 0
    for line in lines:
        stripped = line.strip(b" \t")
        if state in ("free", "body") and line.rstrip(b" \t") in (
            b"--" + boundary,
            b"--" + boundary + b"--",
        ):
            state = "headers"
            pending = []
            continue
        if state == "headers":
            if stripped == b"":
                for header in _unfold(pending):
                    if not _PART_HEADER.fullmatch(header):
                        return f"part header {header[:60]!r}"
                state = "body"
            else:
                pending.append(line)
            continue
        if state == "armor-head":
            if stripped == b"":
                state = "armor"
            elif not outgoing and _ARMOR_HEADER.fullmatch(stripped) and armor_headers < 2:
                armor_headers += 1
            elif _B64_LINE.fullmatch(stripped):
                armor.append(stripped)
                state = "armor"
            else:
                return f"armour header {stripped[:60]!r}"
            continue
        if state == "armor":
            if stripped == b"-----END PGP MESSAGE-----":
                armors.append(b"".join(a for a in armor if not _CRC.fullmatch(a)))
                armor = []
                state = "body"
            elif _B64_LINE.fullmatch(stripped):
                armor.append(stripped)
            elif stripped:
                return f"line inside the armour {stripped[:60]!r}"
            continue
        if stripped == b"" or stripped in NOTICES and state == "free":
            continue
        if state == "body" and stripped == b"Version: 1":
            continue
        if state == "body" and stripped == b"-----BEGIN PGP MESSAGE-----":
            state = "armor-head"
            armor_headers = 0
            continue
        return f"cleartext line {stripped[:60]!r}"
    if state not in ("free", "body"):
        return f"ends inside {state}"
    if len(armors) != 1:
        return f"{len(armors)} armoured messages"
    try:
        data = base64.b64decode(armors[0], validate=True)
    except (binascii.Error, ValueError):
        return "armour is not base64"
    if not packets_ok(data):
        return "armour is not PKESK/SKESK + SEIPD"
    return None
