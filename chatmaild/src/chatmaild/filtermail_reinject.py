"""Minimal asyncio SMTP client that hands an accepted mail back to Postfix.

Filtermail must pass the exact bytes it received, with the same envelope, to
Postfix's reinjection listener and report Postfix's answer to its own client.
``smtplib`` rewrites bare line feeds, turns every error into an exception and
would block a worker thread per message; this client speaks just enough SMTP
(EHLO, MAIL, RCPT, DATA, RSET, QUIT) on the event loop and returns the reply
line that decides the transaction.

Connections are kept open and reused (like Postfix's own connection cache):
a new TCP connection, greeting and EHLO per message would cost more than the
filtering itself.  A cached connection that the server has closed meanwhile is
noticed at MAIL and the message is retried once on a fresh connection.

On relays the reinjection listeners are UNIX sockets that only filtermail's
group may reach (a TCP port on 127.0.0.1 takes mail from any local process
past the filter): ``socket_path``, or the environment variable
``CHATMAILD_REINJECT_SOCKET`` that each filtermail unit sets, replaces
host and port.
"""

from __future__ import annotations

import asyncio
import os
import re
import time

# Below Postfix's smtpd_proxy_timeout (100 s), so our 451 reaches the client.
TIMEOUT = 60.0
# A UNIX socket to reinject to instead of host:port (set by the systemd unit).
SOCKET_ENV = "CHATMAILD_REINJECT_SOCKET"
_LEADING_DOT = re.compile(rb"(^|\n)\.", re.MULTILINE)


class ReinjectError(Exception):
    """The reinjection server misbehaved or could not be reached."""


class _Stale(Exception):
    """A cached connection turned out to be closed before MAIL was accepted."""


def dot_stuff(content: bytes) -> bytes:
    """The DATA payload for ``content``: leading dots doubled, CRLF-terminated,
    followed by the end-of-data line."""
    stuffed = _LEADING_DOT.sub(rb"\1..", content)
    if not stuffed.endswith(b"\n"):
        stuffed += b"\r\n"
    return stuffed + b".\r\n"


def _format(code: int, text: str) -> str:
    last = text.splitlines()[-1] if text else ""
    return f"{code} {last}".rstrip()


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.idle_since = time.monotonic()

    async def reply(self) -> tuple[int, str]:
        lines = []
        while True:
            line = await self.reader.readline()
            if not line:
                raise ReinjectError("connection closed by reinjection server")
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            if len(text) < 3 or not text[:3].isdigit():
                raise ReinjectError(f"bad reply line {text!r}")
            lines.append(text[4:])
            if text[3:4] != "-":
                return int(text[:3]), "\n".join(lines)

    async def command(self, line: str) -> tuple[int, str]:
        self.writer.write(line.encode("utf-8") + b"\r\n")
        return await self.reply()

    def close(self):
        self.writer.close()


class ReinjectClient:
    """Sends messages to one SMTP server, reusing up to ``max_idle`` connections.

    The server is ``socket_path`` (a UNIX socket) if given, else the one in
    ``$CHATMAILD_REINJECT_SOCKET`` if set, else ``host``:``port``."""

    def __init__(
        self,
        host: str,
        port: int,
        max_idle=16,
        idle_seconds=30.0,
        timeout=TIMEOUT,
        socket_path: str | None = None,
    ):
        self.host = host
        self.port = port
        if socket_path is None:
            socket_path = os.environ.get(SOCKET_ENV) or None
        self.socket_path = socket_path
        self.target = socket_path or f"{host}:{port}"
        self.max_idle = max_idle
        self.idle_seconds = idle_seconds
        self.timeout = timeout
        self._idle: list[_Connection] = []

    async def send(
        self,
        mail_from: str,
        rcpt_tos: list[str],
        content: bytes,
        mail_options: tuple[str, ...] = (),
    ) -> str:
        """Send one message; return the status line for the filter's client.

        A refusal by the server (MAIL, any RCPT or DATA) is returned as the
        server's reply; connection problems become ``451 4.4.0``.
        """
        try:
            return await asyncio.wait_for(
                self._send(mail_from, rcpt_tos, content, mail_options), self.timeout
            )
        except (TimeoutError, OSError, ReinjectError) as exc:
            reason = str(exc) or type(exc).__name__
            return f"451 4.4.0 reinjection to {self.target} failed: {reason}"

    def close(self):
        while self._idle:
            self._idle.pop().close()

    def _take(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if now - conn.idle_since < self.idle_seconds and not conn.reader.at_eof():
                return conn
            conn.close()
        return None

    def _give_back(self, conn: _Connection):
        if len(self._idle) < self.max_idle:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()

    async def _connect(self) -> _Connection:
        if self.socket_path:
            reader, writer = await asyncio.open_unix_connection(self.socket_path)
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        conn = _Connection(reader, writer)
        try:
            code, text = await conn.reply()
            if code != 220:
                raise ReinjectError(_format(code, text))
            code, text = await conn.command("EHLO localhost")
            if code != 250:
                raise ReinjectError(_format(code, text))
        except BaseException:
            conn.close()
            raise
        return conn

    async def _send(self, mail_from, rcpt_tos, content, mail_options):
        conn = self._take()
        if conn is not None:
            try:
                return await self._transaction(conn, mail_from, rcpt_tos, content, mail_options)
            except _Stale:
                pass
        conn = await self._connect()
        return await self._transaction(conn, mail_from, rcpt_tos, content, mail_options, True)

    async def _transaction(self, conn, mail_from, rcpt_tos, content, mail_options, fresh=False):
        reusable = False
        try:
            options = "".join(f" {opt}" for opt in mail_options)
            try:
                code, text = await conn.command(f"MAIL FROM:<{mail_from}>{options}")
            except (OSError, ReinjectError):
                if fresh:
                    raise
                raise _Stale() from None
            if code == 421 and not fresh:
                raise _Stale()
            if code != 250:
                result = _format(code, text)
                reusable = code != 421
                return result
            for rcpt in rcpt_tos:
                code, text = await conn.command(f"RCPT TO:<{rcpt}>")
                if code not in (250, 251):
                    return await self._abort(conn, code, text)
            code, text = await conn.command("DATA")
            if code != 354:
                return await self._abort(conn, code, text)
            conn.writer.write(dot_stuff(content))
            code, text = await conn.reply()
            reusable = code != 421
            return _format(code, text)
        except BaseException:
            reusable = False
            raise
        finally:
            if reusable:
                self._give_back(conn)
            elif conn in self._idle:
                pass
            else:
                conn.close()

    async def _abort(self, conn, code, text) -> str:
        """Return the refusal; reset the transaction so the connection can be
        reused (an exception here closes it)."""
        result = _format(code, text)
        if code != 421:
            rset, _ = await conn.command("RSET")
            if rset == 250:
                self._give_back(conn)
        return result
