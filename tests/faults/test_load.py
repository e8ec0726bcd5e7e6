"""The load generator and the accounting of tests/faults/load.py against a
local SMTP server that writes Maildirs on this machine (no test hosts): each
kind of wrong outcome is seen and counted."""

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from tests.harness.ports import free_port

from . import load as L


class LocalHost:
    """Stands in for a hosts.Host: runs the accounting commands here."""

    def __init__(self, root):
        self.root = root

    def exec(self, *cmd, input=None, check=True, timeout=60):
        if cmd[0] == "postqueue":
            return subprocess.CompletedProcess(cmd, 0, "", "")
        cmd = list(cmd)
        return subprocess.run(cmd, input=input, capture_output=True, text=True, check=check)

    def sh(self, script, check=True, timeout=60):
        return subprocess.CompletedProcess(script, 1, "", "")


@dataclass
class LocalRelay:
    domain: str
    host: LocalHost
    ip: str = "127.0.0.1"


class PlainSender:
    """A sender without TLS or login, for the local server."""

    def __init__(self, port, domain):
        self.port = port
        self.addr = f"sender{port}@{domain}"
        self.via = "plain"

    def connect(self):
        import smtplib

        return smtplib.SMTP("127.0.0.1", self.port, timeout=10)

    def data(self, rcpt, msg_id):
        return L.crlf(L.message(self.addr, rcpt, msg_id))


def message_id(content):
    """The Message-ID header's value of a message's bytes."""
    return content.split(b"Message-ID:", 1)[-1].split(b"\r\n", 1)[0]


class Server:
    """Stores each message in <root>/<domain>/<rcpt>/new/; `mode(n)` picks
    what to do with the n-th message: ok, refuse (451), reject (550),
    store-and-refuse, twice (stored two times, 250), cut (stored without its
    end, 250).  `dedupe`: a message already stored for a recipient (by its
    Message-ID) is not stored again, as the relay's LMTP does.  `refuse_once`:
    a message refused (451) once is taken at its next try (else a retry may
    land on the refusing turn again, which under load it did)."""

    def __init__(self, root, mode, dedupe=False, refuse_once=False):
        self.root, self.mode, self.n, self.dedupe = Path(root), mode, 0, dedupe
        self.refuse_once, self.refused = refuse_once, set()
        self.stored = set()
        server = self

        class Handler:
            async def handle_DATA(self, _srv, _session, envelope):
                server.n += 1
                what = server.mode(server.n)
                content = envelope.original_content
                msg_id = message_id(content)
                if what == "refuse" and server.refuse_once:
                    what = "ok" if msg_id in server.refused else what
                    server.refused.add(msg_id)
                if what == "cut":
                    content = content[: len(content) // 2]
                if what not in ("refuse", "reject"):
                    for rcpt in envelope.rcpt_tos:
                        for copy in range(2 if what == "twice" else 1):
                            server.store(rcpt, content, copy)
                if what == "reject":
                    return "550 5.7.1 no"
                return "451 4.3.0 try later" if what in ("refuse", "store-refuse") else "250 OK"

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def store(self, rcpt, content, copy):
        key = (rcpt, message_id(content))
        if self.dedupe and key in self.stored:
            return
        self.stored.add(key)
        new = self.root / rcpt.rsplit("@", 1)[1] / rcpt / "new"
        new.mkdir(parents=True, exist_ok=True)
        (new / f"{time.time_ns()}.{copy}").write_bytes(content)

    def close(self):
        self.controller.stop()


def run(tmp_path, mode, seconds=1.5, rate=40.0, attempts=1, dedupe=False, refuse_once=False):
    server = Server(tmp_path, mode, dedupe, refuse_once)
    relay = LocalRelay("local.test", LocalHost(tmp_path))
    rcpts = [(relay, f"rcpt{i}@local.test") for i in range(3)]
    try:
        senders = [PlainSender(server.port, "local.test") for _ in range(3)]
        load = L.Load(senders, rcpts, rate, attempts=attempts, retry_delay=0.05)
        load.start()
        time.sleep(seconds)
        load.stop()
    finally:
        server.close()
    original = L.count

    def count(relay, addrs, root=None):
        return original(relay, addrs, root=str(tmp_path))

    L.count = count
    try:
        return load, L.tally(load, [relay], time.time(), recovered_at=load.subs[0].start)
    finally:
        L.count = original


def test_clean_run_has_no_problems(tmp_path):
    load, t = run(tmp_path, lambda n: "ok")
    assert t.sent >= 40, t  # the rate holds
    assert t.accepted == t.delivered == t.sent
    assert t.problems() == []
    assert t.recovery is not None and t.recovery < 2


@pytest.mark.parametrize(
    "what, field",
    [
        ("twice", "duplicated"),
        ("cut", "partial"),
        ("store-refuse", "refused_delivered"),
    ],
)
def test_each_wrong_outcome_is_counted(tmp_path, what, field):
    load, t = run(tmp_path, lambda n: what if n % 5 == 0 else "ok")
    assert getattr(t, field) == t.sent // 5, t
    assert any(p.startswith(field) for p in t.problems())


def test_refused_and_missing(tmp_path):
    load, t = run(tmp_path, lambda n: "refuse" if n % 4 == 0 else "ok")
    assert t.refused == t.sent // 4 and t.problems() == [], t
    # a message the server accepted that is nowhere: missing
    victim = next(s for s in load.subs if s.outcome == "accepted")
    for path in tmp_path.rglob("*"):
        if path.is_file() and victim.id.encode() in path.read_bytes():
            path.unlink()
    t2 = L.tally(load, [], time.time())
    assert t2.missing == t2.accepted  # no relay counted: everything is missing
    assert "missing" in json.dumps(t2.problems())


def test_a_refused_message_is_tried_again_and_counted_once(tmp_path):
    """A 4xx is tried again (the same message, a new connection); it is one
    submission, accepted at last, and in its mailbox once."""
    load, t = run(
        tmp_path, lambda n: "refuse" if n % 4 == 0 else "ok", attempts=3, refuse_once=True
    )
    assert t.retried > 0 and t.retried_accepted == t.retried, t
    assert t.accepted == t.delivered == t.sent and t.refused == 0, t
    assert t.problems() == [], t
    retried = [s for s in load.subs if s.attempts > 1]
    assert all(s.history[0][:2] == ("refused", 451) and s.outcome == "accepted" for s in retried)


def test_a_5xx_is_final(tmp_path):
    load, t = run(tmp_path, lambda n: "reject" if n % 4 == 0 else "ok", attempts=3)
    assert t.retried == 0 and t.refused == t.sent // 4, t
    assert t.problems() == [], t


def test_queued_but_refused_then_retried_is_a_duplicate_unless_the_relay_drops_it(tmp_path):
    """The defect of docs/faults.md: the message was queued although the
    sender was told 4xx; its retry delivers it again.  A relay that stores a
    message once per mailbox (dedupe_period) shows it exactly once."""
    mode = lambda n: "store-refuse" if n % 5 == 0 else "ok"  # noqa: E731
    load, t = run(tmp_path / "plain", mode, attempts=3)
    assert t.duplicated == t.retried > 0 and t.refused_delivered == 0, t
    assert any(p.startswith("duplicated") for p in t.problems())
    load, t = run(tmp_path / "dedupe", mode, attempts=3, dedupe=True)
    assert t.retried > 0 and t.problems() == [], t


def test_lost_connection_after_the_data_is_unknown():
    class Broken:
        def ehlo_or_helo_if_needed(self):
            pass

        def mail(self, _a):
            return 250, b"ok"

        def rcpt(self, _a):
            return 250, b"ok"

        def putcmd(self, _c):
            pass

        def getreply(self):
            if getattr(self, "sent", False):
                raise OSError("reset")
            return 354, b"go"

        def send(self, _d):
            self.sent = True

    with pytest.raises(L.Lost) as lost:
        L.transaction(Broken(), "a@b", "c@d", b"x\r\n")
    assert lost.value.sent

    class Early(Broken):
        def rcpt(self, _a):
            raise OSError("reset")

    with pytest.raises(L.Lost) as lost:
        L.transaction(Early(), "a@b", "c@d", b"x\r\n")
    assert not lost.value.sent


def test_count_script_sees_tmp_and_other_files(tmp_path):
    box = tmp_path / "local.test" / "a@local.test"
    for sub in ("new", "cur", "tmp", ".Trash/cur"):
        (box / sub).mkdir(parents=True)
    (box / "tmp" / "half").write_bytes(b"Message-ID: <fault-x-1@faults.test>\r\n")
    (box / "cur" / "dsn").write_bytes(b"Subject: Undelivered Mail\r\n\r\nsorry\r\n")
    msg = L.crlf(L.message("s@local.test", "a@local.test", "fault-x-2"))
    (box / ".Trash" / "cur" / "m").write_bytes(msg)
    got = L.count(LocalRelay("local.test", LocalHost(tmp_path)), ["a@local.test"], str(tmp_path))
    assert len(got["tmp"]) == 1 and len(got["other"]) == 1
    [[addr, _mtime, complete]] = got["ids"]["fault-x-2"]
    assert addr == "a@local.test" and complete
    assert os.path.exists(got["tmp"][0])
