"""A quick recogniser for the common case: a plain OpenPGP/MIME message.

Python's ``email`` parser needs about 0.25 ms for a small mail, most of the
cost of filtering it.  Nearly every outgoing chatmail message has the same
simple shape (ASCII headers, one From address, ``multipart/encrypted`` with
exactly two 7-bit parts), which this module checks directly on the bytes.

It only ever says "yes, this is unambiguously an encrypted message from
<address>".  Whenever anything looks unusual (non-ASCII or duplicate
headers, quoted display names, transfer encodings, an odd part count...) it
answers ``None`` and the caller falls back to the full parser, which makes
the real decision.  So the fast path can make filtermail faster, never more
permissive than the full path.
"""

from __future__ import annotations

import re

from .openpgp import is_encrypted_armor

_HEADER_NAME = re.compile(rb"[!-9;-~]+")
_ADDR = r"[^<>\s\"(),;:@\\\[\]]+@[^<>\s\"(),;:@\\]+"
_SIMPLE_FROM = re.compile(rf"(?:[A-Za-z0-9 ._-]*<({_ADDR})>|({_ADDR}))")
_PLAIN_CTE = (None, "7bit", "8bit")
_CTYPE = re.compile(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+")
_PARAM = re.compile(r'[ \t]*;[ \t]*([A-Za-z0-9-]+)=(?:"([^"\\\r\n]*)"|([^\s;"\\()<>@,:/\[\]?=]+))')


def split_headers(block: bytes) -> dict[str, list[str]] | None:
    """Headers of a CRLF-terminated ASCII header block, unfolded, keyed by
    lower-case name; None if any line is not a clean header line."""
    headers: dict[str, list[str]] = {}
    last = None
    for line in block.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if last is None:
                return None
            values = headers[last]
            values[-1] = values[-1] + " " + line.strip().decode("ascii")
            continue
        name, sep, value = line.partition(b":")
        if not sep or not _HEADER_NAME.fullmatch(name):
            return None
        last = name.decode("ascii").lower()
        headers.setdefault(last, []).append(value.strip().decode("ascii"))
    return headers


def _head_body(data: bytes):
    end = data.find(b"\r\n\r\n")
    if end <= 0:
        return None, None
    try:
        headers = split_headers(data[:end])
    except UnicodeDecodeError:
        return None, None
    return headers, data[end + 4 :]


def _one(headers: dict, name: str) -> str | None:
    values = headers.get(name)
    if values is None:
        return None
    if len(values) != 1:
        raise ValueError(name)
    return values[0]


def _cte(headers: dict) -> str | None:
    value = _one(headers, "content-transfer-encoding")
    return None if value is None else value.lower()


def content_type(value: str) -> tuple[str, dict[str, str]] | None:
    """``type/subtype`` (lower-case) and parameters of a simple Content-Type
    value: plain ``name=token`` or ``name="quoted"`` parameters only (no
    escapes, no RFC 2231, no duplicates).  None for anything else."""
    main, _, rest = value.partition(";")
    ctype = main.strip().lower()
    if not _CTYPE.fullmatch(ctype):
        return None
    params: dict[str, str] = {}
    pos = 0
    rest = rest.rstrip(" \t;")
    if rest:
        rest = ";" + rest
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if not m:
            return None
        name = m.group(1).lower()
        if name in params:
            return None
        params[name] = m.group(2) if m.group(2) is not None else m.group(3)
        pos = m.end()
    return ctype, params


def split_multipart(body: bytes, boundary: bytes) -> list[bytes] | None:
    """The parts of a CRLF multipart body, cut at delimiter lines as
    email.feedparser does (``--boundary``, optional ``--``, optional blanks);
    None without a closing delimiter."""
    data = b"\r\n" + body
    delimiter = b"\r\n--" + boundary
    parts = []
    start = None
    pos = 0
    while True:
        found = data.find(delimiter, pos)
        if found < 0:
            return None
        line_end = data.find(b"\r\n", found + 2)
        if line_end < 0:
            line_end = len(data)
        rest = data[found + len(delimiter) : line_end]
        closing = rest.startswith(b"--")
        if closing:
            rest = rest[2:]
        if rest.strip(b" \t"):
            pos = found + 2
            continue
        if start is not None:
            parts.append(data[start:found])
        if closing:
            return parts if start is not None else None
        start = line_end + 2
        pos = line_end


def encrypted_sender(content: bytes) -> str | None:
    """The ``From:`` address if ``content`` is plainly an OpenPGP/MIME
    message with a valid PKESK/SKESK+SEIPD payload; otherwise None."""
    try:
        return _encrypted_sender(content)
    except (ValueError, UnicodeDecodeError):
        return None


def _encrypted_sender(content: bytes) -> str | None:
    # Bare CR or LF would split lines differently in other parsers.
    crlf = content.count(b"\r\n")
    if content.count(b"\n") != crlf or content.count(b"\r") != crlf:
        return None
    headers, body = _head_body(content)
    if headers is None:
        return None
    from_value = _one(headers, "from")
    match = _SIMPLE_FROM.fullmatch(from_value or "")
    if not match:
        return None
    if _cte(headers) not in _PLAIN_CTE:
        return None
    parsed = content_type(_one(headers, "content-type") or "")
    if parsed is None or parsed[0] != "multipart/encrypted":
        return None
    protocol = parsed[1].get("protocol", "")
    boundary = parsed[1].get("boundary", "")
    if protocol.lower() != "application/pgp-encrypted" or not boundary:
        return None
    parts = split_multipart(body, boundary.encode("ascii"))
    if parts is None or len(parts) != 2:
        return None

    control_headers, control_body = _head_body(parts[0])
    data_headers, data_body = _head_body(parts[1])
    if control_headers is None or data_headers is None:
        return None
    for part_headers, wanted in (
        (control_headers, "application/pgp-encrypted"),
        (data_headers, "application/octet-stream"),
    ):
        if _cte(part_headers) not in _PLAIN_CTE:
            return None
        parsed = content_type(_one(part_headers, "content-type") or "")
        if parsed is None or parsed[0] != wanted:
            return None
    if control_body.strip() != b"Version: 1":
        return None
    if not is_encrypted_armor(data_body.decode("ascii")):
        return None
    return match.group(1) or match.group(2)
