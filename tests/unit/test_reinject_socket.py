"""filtermail's reinjection client over a UNIX socket (relays reinject
through sockets only filtermail's group can reach, not a TCP port any local
process could use): socket_path or $CHATMAILD_REINJECT_SOCKET replaces
host:port, the bytes and the envelope arrive unchanged."""

import asyncio

import pytest


async def fake_postfix(path, received):
    """A minimal SMTP server on a UNIX socket that keeps each transaction."""

    async def session(reader, writer):
        writer.write(b"220 fake ESMTP\r\n")
        data, envelope = None, {"rcpt": []}
        while line := await reader.readline():
            if data is not None:
                if line == b".\r\n":
                    envelope["data"] = b"".join(data)
                    received.append(envelope)
                    data, envelope = None, {"rcpt": []}
                    writer.write(b"250 2.0.0 queued\r\n")
                else:
                    data.append(line)
                continue
            cmd = line.decode().strip()
            if cmd.startswith("EHLO"):
                writer.write(b"250-fake\r\n250 8BITMIME\r\n")
            elif cmd.startswith("MAIL FROM:"):
                envelope["from"] = cmd[10:]
                writer.write(b"250 ok\r\n")
            elif cmd.startswith("RCPT TO:"):
                envelope["rcpt"].append(cmd[8:])
                writer.write(b"250 ok\r\n")
            elif cmd == "DATA":
                data = []
                writer.write(b"354 go\r\n")
            elif cmd == "QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(session, path)


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_reinject_over_unix_socket(tmp_path, monkeypatch, how):
    from chatmaild.filtermail_reinject import SOCKET_ENV, ReinjectClient

    path = str(tmp_path / "reinject")
    received = []

    async def run():
        server = await fake_postfix(path, received)
        try:
            if how == "argument":
                client = ReinjectClient("127.0.0.1", 1, socket_path=path)
            else:
                monkeypatch.setenv(SOCKET_ENV, path)
                client = ReinjectClient("127.0.0.1", 1)
            # port 1 would refuse: only the socket can answer
            reply = await client.send("a@x.test", ["b@y.test"], b"Subject: s\r\n\r\n.dot\r\n")
            client.close()
            return reply
        finally:
            server.close()

    assert asyncio.run(run()) == "250 2.0.0 queued"
    assert received == [
        {"from": "<a@x.test>", "rcpt": ["<b@y.test>"], "data": b"Subject: s\r\n\r\n..dot\r\n"}
    ]


def test_unreachable_socket_is_a_temporary_error(tmp_path, monkeypatch):
    from chatmaild.filtermail_reinject import ReinjectClient

    monkeypatch.delenv("CHATMAILD_REINJECT_SOCKET", raising=False)
    client = ReinjectClient("127.0.0.1", 1, socket_path=str(tmp_path / "missing"))
    reply = asyncio.run(client.send("a@x.test", ["b@y.test"], b"x\r\n"))
    assert reply.startswith("451 4.4.0 reinjection to ") and "missing" in reply
