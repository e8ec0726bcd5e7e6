"""What may stand around the ciphertext of an OpenPGP/MIME message.

:mod:`chatmaild.openpgp` checks the armoured packets.  This module checks
everything else a PGP/MIME message carries, so that no readable text
travels next to the ciphertext.  Both of filtermail's parsers (the byte-level
fast path and the full :mod:`email` parser) call these functions on the
headers and texts they found, so the two can never apply different rules.

The rules (``docs/security-chatmaild.md`` gives the reasoning):

* preamble (before the first boundary): whitespace, or one of the notices
  clients write (:data:`PREAMBLE_NOTICES`); epilogue: whitespace only;
* part headers: ``Content-Type`` (the part's type; the data part may name
  itself with a well-known file name), ``Content-Transfer-Encoding``
  (``7bit``/``8bit``: an identity encoding, so no bytes hide in an
  encoding), ``Content-Description`` and ``Content-Disposition`` with values
  from short fixed lists; nothing else;
* outer headers of outgoing mail: the names a Delta Chat (or another
  Autocrypt) client writes on an encrypted message, each bounded in length
  and, where a value has a fixed form, checked against it; ``Subject`` only
  as one of the placeholders clients use for a protected subject; display
  names bounded in total; any other header refused.
"""

from __future__ import annotations

import binascii
import re
from email.headerregistry import HeaderRegistry

PREAMBLE_NOTICES = (
    "This is an OpenPGP/MIME encrypted message (RFC 4880 and 3156)",
    "This is an OpenPGP/MIME encrypted message (RFC 2440 and 3156)",
    "This is an OpenPGP/MIME encrypted message",
)
PART_DESCRIPTIONS = (
    "pgp/mime version identification",
    "pgp/mime versions identification",
    "openpgp encrypted message",
    "openpgp/mime encrypted message",
)
# the only charset values a part's Content-Type may name (no free text)
PART_CHARSETS = ("utf-8", "us-ascii")
PART_FILENAMES = ("encrypted.asc", "msg.asc", "message.asc", "openpgp.asc")
SUBJECT_PLACEHOLDERS = ("[...]", "...", "", "encrypted message", "encrypted")
IDENTITY_ENCODINGS = ("7bit", "8bit")

CONTROL_TYPE = "application/pgp-encrypted"
DATA_TYPE = "application/octet-stream"

# Outer header name -> longest unfolded value.  Anything not listed is
# refused on outgoing encrypted mail.
OUTER_HEADER_LIMITS = {
    "from": 512,
    "to": 65536,
    "cc": 65536,
    "date": 64,
    "message-id": 256,
    "in-reply-to": 1024,
    "references": 16384,
    "subject": 32,
    "mime-version": 3,
    "content-type": 256,
    "content-transfer-encoding": 4,
    "chat-version": 8,
    "chat-is-post-message": 8,
    "auto-submitted": 32,
    "autocrypt-setup-message": 2,
    "autocrypt": 16384,
    # Postfix prepends its own Received before handing mail to filtermail.
    "received": 1024,
    # Thunderbird and other MUAs; bounded, not free for prose
    "user-agent": 128,
    "content-language": 35,
}
SINGLE_OUTER = (
    "from",
    "to",
    "cc",
    "date",
    "message-id",
    "in-reply-to",
    "references",
    "subject",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "chat-version",
    "chat-is-post-message",
    "auto-submitted",
    "autocrypt-setup-message",
    "autocrypt",
    "user-agent",
    "content-language",
)
MAX_RECEIVED = 3
MAX_OUTER_HEADER_BYTES = 128 * 1024
# Display names (From/To/Cc) together: a few names, not a letter.
MAX_DISPLAY_NAME_BYTES = 512
MAX_BOUNDARY = 70

_PARAM = re.compile(r'[ \t]*;[ \t]*([A-Za-z0-9-]+)=(?:"([^"\\\r\n]*)"|([^\s;"\\()<>@,:/\[\]?=]+))')
_TOKEN_TYPE = re.compile(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+")
_TOKEN = re.compile(r"[a-z0-9!#$&^_.+-]+")
_BOUNDARY = re.compile(r"[A-Za-z0-9'()+_,./:=?-]{0,69}[A-Za-z0-9'()+_,./:=?-]")
_MSG_ID = r"<[!-;=?-~]{1,250}>"
_MSG_IDS = re.compile(rf"{_MSG_ID}(?:[ \t]*{_MSG_ID})*")
_CHAT_VERSION = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}")
_AUTO_SUBMITTED = re.compile(r"(?i)(?:no|auto-generated|auto-replied|auto-notified)")
_DATE = re.compile(
    r"(?:[A-Z][a-z]{2}, )?[0-9]{1,2} [A-Z][a-z]{2} [0-9]{4} "
    r"[0-9]{2}:[0-9]{2}(?::[0-9]{2})? (?:[+-][0-9]{4}|[A-Z]{1,5})(?: \([A-Z]{1,5}\))?"
)
_LANGUAGE = re.compile(r"[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8}){0,3}")
_AUTOCRYPT_ATTR = re.compile(r"[ \t]*([a-z-]+)[ \t]*=[ \t]*([^;]*);?")
_BASE64 = re.compile(r"[A-Za-z0-9+/=\s]+")


def unfold(value: str) -> str:
    """A header value with folding undone and outer whitespace removed: the
    one spelling both parsers measure.  (``email``'s compat32 parser hands
    out :class:`email.header.Header` objects for non-ASCII values.)"""
    value = str(value)
    return " ".join(seg.strip(" \t") for seg in re.split(r"\r\n|\r|\n", value)).strip(" \t")


def header_params(value: str) -> tuple[str, dict[str, str]] | None:
    """The lower-cased first token and the parameters of a simple header
    value (``name=token`` or ``name="quoted"``, no escapes, no RFC 2231, no
    duplicates); None for anything else."""
    main, _, rest = value.partition(";")
    params: dict[str, str] = {}
    rest = rest.rstrip(" \t;")
    if rest:
        rest = ";" + rest
    pos = 0
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        if not m:
            return None
        name = m.group(1).lower()
        if name in params:
            return None
        params[name] = m.group(2) if m.group(2) is not None else m.group(3)
        pos = m.end()
    return main.strip(" \t").lower(), params


def content_type(value: str) -> tuple[str, dict[str, str]] | None:
    """``type/subtype`` and parameters of a simple Content-Type, else None."""
    parsed = header_params(value)
    if parsed is None or not _TOKEN_TYPE.fullmatch(parsed[0]):
        return None
    return parsed


def preamble_ok(text: str | None) -> bool:
    text = (text or "").strip(" \t\r\n")
    return text == "" or text in PREAMBLE_NOTICES


def epilogue_ok(text: str | None) -> bool:
    return (text or "").strip(" \t\r\n") == ""


def part_headers_problem(items, wanted_type: str) -> str | None:
    """Why the headers ``items`` (``(name, value)`` pairs) of a PGP/MIME
    part of type ``wanted_type`` carry more than its structure needs; None
    if they do not."""
    seen = set()
    for name, raw in items:
        key = name.lower()
        value = unfold(raw)
        if key in seen:
            return f"part header {key} twice"
        seen.add(key)
        if key == "content-type":
            parsed = content_type(value)
            if parsed is None or parsed[0] != wanted_type:
                return f"part Content-Type {value[:60]!r}"
            for pname, pvalue in parsed[1].items():
                if pname == "charset" and pvalue.lower() in PART_CHARSETS:
                    continue  # Delta Chat 2.x writes charset="utf-8" on both parts
                if pname != "name" or wanted_type != DATA_TYPE or pvalue not in PART_FILENAMES:
                    return f"part Content-Type parameter {pname}"
        elif key == "content-transfer-encoding":
            if value.lower() not in IDENTITY_ENCODINGS:
                return f"part Content-Transfer-Encoding {value[:20]!r}"
        elif key == "content-description":
            if value.lower() not in PART_DESCRIPTIONS:
                return "part Content-Description is not a known one"
        elif key == "content-disposition":
            parsed = header_params(value)
            if parsed is None or parsed[0] not in ("inline", "attachment"):
                return "part Content-Disposition"
            for pname, pvalue in parsed[1].items():
                if pname != "filename" or pvalue not in PART_FILENAMES:
                    return f"part Content-Disposition parameter {pname}"
        else:
            return f"part header {key} not allowed"
    if "content-type" not in seen:
        return "part without Content-Type"
    return None


_HEADERS = HeaderRegistry()

# Plain forms whose parse needs no RFC 5322 parser (it costs ~0.1 ms a
# header): a dot-atom localpart and a dot-atom domain or IPv4 literal, bare
# or in angle brackets.  The full parser reads exactly these the same way
# (test_pgpmime.py checks it); anything else goes to the full parser.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_ADDR = (
    rf"{_ATOM}(?:\.{_ATOM})*@(?:{_ATOM}(?:\.{_ATOM})*|\[[0-9]{{1,3}}(?:\.[0-9]{{1,3}}){{3}}\])"
)
_PLAIN_MAILBOX = re.compile(rf"<?({_PLAIN_ADDR})>?")
_PLAIN_LIST = re.compile(
    rf"(?:<{_PLAIN_ADDR}>|{_PLAIN_ADDR})(?:[ \t]*,[ \t]*(?:<{_PLAIN_ADDR}>|{_PLAIN_ADDR}))*"
)
_HIDDEN_RECIPIENTS = '"hidden-recipients": ;'


def _display_name_bytes(name: str, value: str) -> int | None:
    """Bytes of display and group names in an address header, None if it
    does not parse cleanly."""
    if _PLAIN_LIST.fullmatch(value):
        return 0
    if value == _HIDDEN_RECIPIENTS:
        return len("hidden-recipients")
    return _display_name_bytes_parsed(name, value)


def _display_name_bytes_parsed(name: str, value: str) -> int | None:
    try:
        header = _HEADERS(name, value)
        groups = header.groups
    except Exception:  # the parser's errors are not part of its API
        return None
    if header.defects:
        return None
    total = 0
    for group in groups:
        total += len(group.display_name or "")
        total += sum(len(a.display_name or "") for a in group.addresses)
    return total


def _autocrypt_problem(value: str) -> str | None:
    attrs = {}
    pos = 0
    while pos < len(value):
        m = _AUTOCRYPT_ATTR.match(value, pos)
        if not m or m.end() == pos:
            return "Autocrypt header syntax"
        if m.group(1) in attrs:
            return "Autocrypt attribute twice"
        attrs[m.group(1)] = m.group(2).strip()
        pos = m.end()
    if set(attrs) - {"addr", "prefer-encrypt", "keydata"} or "keydata" not in attrs:
        # "_name" attributes may be ignored by readers, so they could carry text
        return "Autocrypt attributes other than addr, prefer-encrypt, keydata"
    if attrs.get("prefer-encrypt", "mutual") not in ("mutual", "nopreference"):
        return "Autocrypt prefer-encrypt"
    if len(attrs.get("addr", "")) > 320 or any(c.isspace() for c in attrs.get("addr", "")):
        return "Autocrypt addr"
    keydata = attrs["keydata"]
    if not _BASE64.fullmatch(keydata):
        return "Autocrypt keydata is not base64"
    try:
        binascii.a2b_base64("".join(keydata.split()), strict_mode=True)
    except (binascii.Error, ValueError):
        return "Autocrypt keydata is not base64"
    return None


def outer_headers_problem(items) -> str | None:
    """Why the outer headers ``items`` of an outgoing encrypted message could
    carry readable text (the policy in the module docstring); None if not."""
    counts: dict[str, int] = {}
    total = 0
    names = 0
    for name, raw in items:
        key = name.lower()
        value = unfold(raw)
        total += len(name) + len(value) + 4
        limit = OUTER_HEADER_LIMITS.get(key)
        if limit is None:
            return f"header {key[:40]} is not allowed on encrypted mail"
        if len(value) > limit:
            return f"header {key} longer than {limit}"
        counts[key] = counts.get(key, 0) + 1
        if key in SINGLE_OUTER and counts[key] > 1:
            return f"header {key} twice"
        if key == "received" and counts[key] > MAX_RECEIVED:
            return "too many Received headers"
        if key == "subject" and value.lower() not in SUBJECT_PLACEHOLDERS:
            return "Subject is not a placeholder such as [...]"
        if key == "mime-version" and value != "1.0":
            return "MIME-Version"
        if key == "content-transfer-encoding" and value.lower() not in IDENTITY_ENCODINGS:
            return "Content-Transfer-Encoding"
        if key == "chat-version" and not _CHAT_VERSION.fullmatch(value):
            return "Chat-Version"
        if key == "chat-is-post-message" and not _TOKEN.fullmatch(value.lower()):
            return "Chat-Is-Post-Message"
        if key == "auto-submitted" and not _AUTO_SUBMITTED.fullmatch(value):
            return "Auto-Submitted"
        if key == "content-language" and not _LANGUAGE.fullmatch(value):
            return "Content-Language"
        if key == "autocrypt-setup-message" and value.lower() != "v1":
            return "Autocrypt-Setup-Message"
        if key in ("message-id", "in-reply-to", "references") and not _MSG_IDS.fullmatch(value):
            return f"{key} is not a list of message ids"
        if key == "message-id" and value.count("<") != 1:
            return "Message-ID"
        if key == "date" and not _DATE.fullmatch(value):
            return "Date"
        if key == "content-type":
            parsed = content_type(value)
            if parsed is None or set(parsed[1]) - {"protocol", "boundary"}:
                return "Content-Type parameters"
            if not _BOUNDARY.fullmatch(parsed[1].get("boundary", "")):
                return "Content-Type boundary"
        if key == "autocrypt":
            problem = _autocrypt_problem(value)
            if problem:
                return problem
        if key in ("from", "to", "cc"):
            size = _display_name_bytes(key, value)
            if size is None:
                return f"{key} does not parse as addresses"
            names += size
            if names > MAX_DISPLAY_NAME_BYTES:
                return f"display names longer than {MAX_DISPLAY_NAME_BYTES} in total"
    if total > MAX_OUTER_HEADER_BYTES:
        return f"headers longer than {MAX_OUTER_HEADER_BYTES} in total"
    return None


def from_address(value: str) -> str | None:
    """The address of a ``From:`` value with exactly one mailbox.

    Parsed with the RFC 5322 parser of :mod:`email.headerregistry`:
    ``email.utils.getaddresses`` in patched CPython releases (Debian 12's
    3.11.2 among them) returns nothing for domain literals such as
    ``user@[1.2.3.4]``, the addresses of IP-only relays.  A value the parser
    had to repair (defects) counts as no address at all, and so does one
    with control characters.  Both of filtermail's parsers call this, so
    they always agree on the sender."""
    if any(c < " " and c not in "\t\r\n" or c == "\x7f" for c in value):
        return None
    plain = _PLAIN_MAILBOX.fullmatch(value)
    if plain and (value[0] == "<") == (value[-1] == ">"):
        return plain.group(1)
    return _from_address_parsed(value)


def _from_address_parsed(value: str) -> str | None:
    try:
        header = _HEADERS("from", value)
        addrs = header.addresses
    except Exception:  # the parser's errors are not part of its API
        return None
    if header.defects or len(addrs) != 1:
        return None
    addr = addrs[0].addr_spec
    if not addr or addr.count("@") != 1 or addrs[0].username == "" or addrs[0].domain == "":
        return None
    return addr
