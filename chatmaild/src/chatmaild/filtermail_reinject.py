"""Minimal asyncio SMTP client that hands an accepted mail back to Postfix.

Filtermail must pass the exact bytes it received, with the same envelope, to
Postfix's reinjection listener and report Postfix's answer to its own client.
``smtplib`` rewrites bare line feeds and turns every error into an exception,
and it would block a worker thread per message; this client speaks just enough
SMTP (EHLO, MAIL, RCPT, DATA, QUIT) on the event loop and returns the reply
line that decides the transaction.
"""

from __future__ import annotations

import asyncio
import re

TIMEOUT = 120.0
_LEADING_DOT = re.compile(rb"(^|\n)\.", re.MULTILINE)


class ReinjectError(Exception):
    """The reinjection server misbehaved or could not be reached."""


def dot_stuff(content: bytes) -> bytes:
    """The DATA payload for ``content``: leading dots doubled, CRLF-terminated,
    followed by the end-of-data line."""
    stuffed = _LEADING_DOT.sub(rb"\1..", content)
    if not stuffed.endswith(b"\n"):
        stuffed += b"\r\n"
    return stuffed + b".\r\n"


async def _read_reply(reader: asyncio.StreamReader) -> tuple[int, str]:
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            raise ReinjectError("connection closed by reinjection server")
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        if len(text) < 3 or not text[:3].isdigit():
            raise ReinjectError(f"bad reply line {text!r}")
        lines.append(text[4:])
        if text[3:4] != "-":
            return int(text[:3]), "\n".join(lines)


def _format(code: int, text: str) -> str:
    # aiosmtpd sends the status as given; keep only the last line.
    last = text.splitlines()[-1] if text else ""
    return f"{code} {last}".rstrip()


async def reinject(
    host: str,
    port: int,
    mail_from: str,
    rcpt_tos: list[str],
    content: bytes,
    mail_options: tuple[str, ...] = (),
    timeout: float = TIMEOUT,
) -> str:
    """Send one message; return the status line for the filter's client.

    A refusal by the server (MAIL, any RCPT or DATA) is returned as the
    server's reply; connection problems become ``451 4.4.0``.
    """
    try:
        return await asyncio.wait_for(
            _transaction(host, port, mail_from, rcpt_tos, content, mail_options),
            timeout,
        )
    except (TimeoutError, OSError, ReinjectError) as exc:
        return f"451 4.4.0 reinjection to {host}:{port} failed: {str(exc) or type(exc).__name__}"


async def _transaction(host, port, mail_from, rcpt_tos, content, mail_options):
    reader, writer = await asyncio.open_connection(host, port)
    try:
        code, text = await _read_reply(reader)
        if code != 220:
            return _format(code, text)

        async def command(line: str) -> tuple[int, str]:
            writer.write(line.encode("utf-8") + b"\r\n")
            return await _read_reply(reader)

        code, text = await command("EHLO localhost")
        if code != 250:
            return _format(code, text)
        options = "".join(f" {opt}" for opt in mail_options)
        code, text = await command(f"MAIL FROM:<{mail_from}>{options}")
        if code != 250:
            return _format(code, text)
        for rcpt in rcpt_tos:
            code, text = await command(f"RCPT TO:<{rcpt}>")
            if code not in (250, 251):
                return _format(code, text)
        code, text = await command("DATA")
        if code != 354:
            return _format(code, text)
        writer.write(dot_stuff(content))
        code, text = await _read_reply(reader)
        result = _format(code, text)
        try:
            writer.write(b"QUIT\r\n")
            await asyncio.wait_for(_read_reply(reader), 5)
        except (TimeoutError, OSError, ReinjectError):
            pass
        return result
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
