"""A quick recogniser for the common case: a plain OpenPGP/MIME message.

Python's ``email`` parser needs about 0.25 ms for a small mail, most of the
cost of filtering it.  Nearly every outgoing chatmail message has the same
simple shape (ASCII headers, one From address, ``multipart/encrypted`` with
exactly two 7-bit parts), which this module checks directly on the bytes.

It only ever says "yes, this is unambiguously an encrypted message from
<address>".  Whenever anything looks unusual (non-ASCII or duplicate
headers, bare CR or LF, transfer encodings, an odd part count...) it
answers ``None`` and the caller falls back to the full parser, which makes
the real decision.

Why it is never more permissive than the full path: it accepts a strict
subset of the byte layouts the full parser reads the same way (CRLF only,
ASCII, clean header lines, one delimiter grammar), and on what it found it
calls the very functions the full path calls: the sender is
:func:`chatmaild.pgpmime.from_address` of the From value, preamble,
epilogue, part headers and (outgoing) outer headers go through
:mod:`chatmaild.pgpmime`, the armour through :mod:`chatmaild.openpgp`.
``test_filtermail_fastpath.py`` checks the claim differentially on a large
generated corpus.
"""

from __future__ import annotations

import re

from .openpgp import is_encrypted_armor
from .pgpmime import (
    CONTROL_TYPE,
    DATA_TYPE,
    content_type,
    epilogue_ok,
    from_address,
    outer_headers_problem,
    part_headers_problem,
    preamble_ok,
    unfold,
)

__all__ = ["content_type", "encrypted_sender", "split_headers", "split_multipart"]

_HEADER_NAME = re.compile(rb"[!-9;-~]+")
_PLAIN_CTE = (None, "7bit", "8bit")
# Headers the full parser must see exactly once for both to agree.
_SINGLE = ("from", "content-type", "content-transfer-encoding")


def split_headers(block: bytes) -> list[tuple[str, str]] | None:
    """``(name, raw value)`` pairs of a CRLF-separated ASCII header block
    (values keep their folding); None if any line is not a clean header
    line."""
    items: list[tuple[str, str]] = []
    for line in block.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if not items or not line.strip(b" \t"):
                return None
            name, value = items[-1]
            items[-1] = (name, value + "\r\n" + line.decode("ascii"))
            continue
        name, sep, value = line.partition(b":")
        if not sep or not _HEADER_NAME.fullmatch(name):
            return None
        items.append((name.decode("ascii"), value.decode("ascii")))
    return items


def _head_body(data: bytes):
    end = data.find(b"\r\n\r\n")
    if end <= 0:
        return None, None
    try:
        items = split_headers(data[:end])
    except UnicodeDecodeError:
        return None, None
    return items, data[end + 4 :]


def _one(items, name: str) -> str | None:
    values = [unfold(v) for n, v in items if n.lower() == name]
    if not values:
        return None
    if len(values) != 1:
        raise ValueError(name)
    return values[0]


def split_multipart(body: bytes, boundary: bytes):
    """``(preamble, parts, epilogue)`` of a CRLF multipart body cut at
    delimiter lines that are exactly ``--boundary`` or ``--boundary--``; None
    if the layout is anything else (a line that starts with the delimiter
    but goes on, no closing delimiter)."""
    data = b"\r\n" + body
    delimiter = b"\r\n--" + boundary
    pieces = data.split(delimiter)
    preamble, rest = pieces[0], pieces[1:]
    parts = []
    for i, piece in enumerate(rest):
        if piece.startswith(b"--\r\n") or piece == b"--":
            if i != len(rest) - 1 or not parts:
                return None
            return preamble, parts, piece[2:]
        if not piece.startswith(b"\r\n"):
            return None
        parts.append(piece[2:])
    return None


def encrypted_sender(content: bytes, outgoing: bool = False) -> str | None:
    """The ``From:`` address if ``content`` is plainly an OpenPGP/MIME
    message with a valid PKESK/SKESK+SEIPD payload and nothing readable
    beside it (``outgoing``: outer headers too); otherwise None."""
    try:
        return _encrypted_sender(content, outgoing)
    except (ValueError, UnicodeDecodeError):
        return None


def _encrypted_sender(content: bytes, outgoing: bool) -> str | None:
    # Bare CR or LF would split lines differently in other parsers.
    crlf = content.count(b"\r\n")
    if content.count(b"\n") != crlf or content.count(b"\r") != crlf:
        return None
    if not content.isascii():
        return None
    items, body = _head_body(content)
    if items is None:
        return None
    for name in _SINGLE:
        _one(items, name)
    if _one(items, "content-transfer-encoding") not in _PLAIN_CTE:
        return None
    parsed = content_type(_one(items, "content-type") or "")
    if parsed is None or parsed[0] != "multipart/encrypted":
        return None
    protocol = parsed[1].get("protocol", "")
    boundary = parsed[1].get("boundary", "")
    if protocol.lower() != "application/pgp-encrypted" or not boundary:
        return None
    if outgoing and outer_headers_problem(items):
        return None
    split = split_multipart(body, boundary.encode("ascii"))
    if split is None:
        return None
    preamble, parts, epilogue = split
    if len(parts) != 2 or not preamble_ok(preamble.decode()) or not epilogue_ok(epilogue.decode()):
        return None

    control_items, control_body = _head_body(parts[0])
    data_items, data_body = _head_body(parts[1])
    if control_items is None or data_items is None:
        return None
    if part_headers_problem(control_items, CONTROL_TYPE):
        return None
    if part_headers_problem(data_items, DATA_TYPE):
        return None
    if control_body.strip() != b"Version: 1":
        return None
    if not is_encrypted_armor(data_body.decode("ascii")):
        return None
    return from_address(_one(items, "from") or "")
