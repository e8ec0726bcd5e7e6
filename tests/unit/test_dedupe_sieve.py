"""Exactly once per mailbox (params dedupe_period, docs/dovecot.md): the
relay's rendered Dovecot settings and its Sieve script, run by a private
Dovecot LMTP on this machine (Debian's dovecot-lmtpd and dovecot-sieve, as
root; the mailboxes belong to dovenull).  The relay itself is probed in
tests/hosts/test_relay.py."""

import os
import pwd
import re
import shutil
import smtplib
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.unit.test_mail_render import REPO, certs, render  # noqa: F401 (fixtures)

SIEVE = REPO / "salt" / "chatmail" / "dovecot" / "files" / "chatmail-dedupe.sieve"
RELAY_SIEVE = "/etc/dovecot/chatmail-dedupe.sieve"
MAIL_USER = "dovenull"
DOMAIN = "chat.example.net"


def _missing():
    if os.geteuid() != 0:
        return "needs root (a private dovecot master)"
    for tool in ("dovecot", "sievec"):
        if not shutil.which(tool):
            return f"{tool} is not installed (dovecot-lmtpd, dovecot-sieve)"
    if not Path("/usr/lib/dovecot/modules/lib90_sieve_plugin.so").exists():
        return "dovecot-sieve is not installed"
    try:
        pwd.getpwnam(MAIL_USER)
    except KeyError:
        return f"no user {MAIL_USER}"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))


@pytest.fixture(scope="module")
def rendered(render, certs):  # noqa: F811
    """The relay's dovecot.conf and states with the dedupe script on (a day)."""
    pillar = {
        "domains": {DOMAIN: {"tls": {"mode": "external", **certs}}},
        "params": {"dedupe_period": 86400},
    }
    return render(pillar, sls=["chatmail.dovecot"])


@pytest.fixture(scope="module")
def off(render, certs):  # noqa: F811
    """The default pillar: the script is off (it costs LMTP's hard links)."""
    pillar = {"domains": {DOMAIN: {"tls": {"mode": "external", **certs}}}}
    return render(pillar, sls=["chatmail.dovecot"])


def block(conf, start):
    """The text of the `start { ... }` block of conf that begins with `start`."""
    i = conf.index(start)
    depth = 0
    for j in range(i, len(conf)):
        if conf[j] == "{":
            depth += 1
        elif conf[j] == "}":
            depth -= 1
            if depth == 0:
                return conf[i : j + 1]
    raise AssertionError(f"unclosed {start}")


def dedupe_plugin_block(conf):
    m = re.search(r"^plugin \{\n  sieve =\n.*?^\}", conf, re.M | re.S)
    assert m, "no dedupe plugin block"
    return m.group(0)


def test_rendered_settings(rendered):
    conf = rendered["files"]["/etc/dovecot/dovecot.conf"]
    lmtp = block(conf, "protocol lmtp {")
    assert re.search(r"mail_plugins = .* push_notification_lua sieve\n", lmtp), lmtp
    plugin = dedupe_plugin_block(conf)
    # no personal scripts: only the relay's, compiled by the state
    assert "  sieve =\n" in plugin
    assert f"  sieve_before = {RELAY_SIEVE}\n" in plugin
    assert "  sieve_duplicate_default_period = 86400s\n" in plugin
    assert "  sieve_duplicate_max_period = 86400s\n" in plugin
    assert "managesieve" not in conf and "protocols = imap lmtp\n" in conf
    # lock files (the duplicate check's among them) outside the Maildir++ folders
    assert "mail_location = maildir:~:VOLATILEDIR=~/dovecot-volatile\n" in conf
    states = rendered["states"]
    compiled = states["chatmail-dovecot-config-dedupe-sieve-compiled-cmd-run"]["cmd"]
    args = {k: v for a in compiled if isinstance(a, dict) for k, v in a.items()}
    assert args["name"].startswith(f"sievec {RELAY_SIEVE} /etc/dovecot/chatmail-dedupe.svbin")
    assert "dpkg-query -W -f='${Version}' dovecot-sieve" in args["unless"]
    running = states["chatmail-dovecot-service-running"]["service"]
    require = next(a["require"] for a in running if isinstance(a, dict) and "require" in a)
    assert {"cmd": "chatmail-dovecot-config-dedupe-sieve-compiled-cmd-run"} in require


def test_dedupe_off(off):
    conf = off["files"]["/etc/dovecot/dovecot.conf"]
    assert "sieve" not in block(conf, "protocol lmtp {")
    assert "sieve_before" not in conf
    states = off["states"]
    assert "chatmail-dovecot-config-dedupe-sieve-compiled-cmd-run" not in states
    absent = states["chatmail-dovecot-config-dedupe-sieve-file-absent"]["file"]
    names = next(a["names"] for a in absent if isinstance(a, dict) and "names" in a)
    assert RELAY_SIEVE in names and "/etc/dovecot/chatmail-dedupe.svbin" in names


# --- the script in a private LMTP ---------------------------------------------------

CONF = """\
instance_name = cmdedupe-{name}
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
mail_debug = yes
protocols = lmtp
ssl = no
first_valid_uid = 1
mail_uid = {user}
mail_gid = {user}
mail_home = {base}/mail/%d/%u
{mail_location}
userdb {{
  driver = static
  args = uid={user} gid={user} home={base}/mail/%d/%u allow_all_users=yes
}}
passdb {{
  driver = static
  args = nopassword=y
}}
service auth {{
  user = root
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
}}
mail_plugins = quota
plugin {{
  quota = maildir:User quota
  quota_rule = *:storage=64K
  quota_grace = 0%%
}}
quota_full_tempfail = yes
protocol lmtp {{
  mail_plugins = $mail_plugins sieve
  mail_fsync = never
}}
lmtp_add_received_header = no
{plugin}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lmtp:
    """A private Dovecot LMTP with the relay's dedupe settings."""

    def __init__(self, conf_text, compile_state, period=None):
        self.base = Path(tempfile.mkdtemp(prefix="cmdedupe-", dir="/tmp"))
        self.base.chmod(0o755)
        pw = pwd.getpwnam(MAIL_USER)
        (self.base / "mail").mkdir()
        os.chown(self.base / "mail", pw.pw_uid, pw.pw_gid)
        (self.base / "run").mkdir()
        (self.base / "state").mkdir()
        sieve_dir = self.base / "sieve"  # root's, like /etc/dovecot: LMTP cannot write it
        sieve_dir.mkdir(mode=0o755)
        self.script = sieve_dir / "chatmail-dedupe.sieve"
        shutil.copy(SIEVE, self.script)
        self.svbin = sieve_dir / "chatmail-dedupe.svbin"
        plugin = dedupe_plugin_block(conf_text).replace(RELAY_SIEVE, str(self.script))
        if period is not None:
            plugin = plugin.replace("86400s", f"{period}s")
        location = re.search(r"^mail_location = .*$", conf_text, re.M).group(0)
        self.port = free_port()
        self.conf = self.base / "dovecot.conf"
        self.conf.write_text(
            CONF.format(
                name=self.base.name,
                base=self.base,
                user=MAIL_USER,
                port=self.port,
                mail_location=location,
                plugin=plugin,
            )
        )

        # the state's command (sievec, chmod, stamp) and its unless, on these paths
        def here(cmd):
            cmd = cmd.replace("sievec ", f"sievec -c {self.conf} ", 1)
            return cmd.replace(RELAY_SIEVE[: -len(".sieve")], str(self.script)[: -len(".sieve")])

        self.unless = here(compile_state["unless"])
        self.compiled_before = self.up_to_date()
        subprocess.run(
            ["sh", "-ec", here(compile_state["name"])],
            check=True,
            capture_output=True,
            stdin=subprocess.DEVNULL,
        )
        self.proc = subprocess.Popen(
            ["/usr/sbin/dovecot", "-F", "-c", str(self.conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise AssertionError("private dovecot did not start: " + self.log()) from None
                time.sleep(0.1)

    def up_to_date(self):
        """The state's unless: True when it would not compile again."""
        proc = subprocess.run(["sh", "-c", self.unless], capture_output=True)
        return proc.returncode == 0

    def log(self):
        try:
            return (self.base / "dovecot.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, needle, timeout=10):
        """The log once it holds `needle` (case-insensitive), or as it is
        after `timeout`: LMTP answers before Dovecot's log process has
        written the lines of that delivery."""
        deadline = time.monotonic() + timeout
        while needle not in self.log().lower() and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.log()

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.base, ignore_errors=True)

    def deliver(self, rcpts, text):
        """One LMTP transaction; the reply for each recipient: [(code, text)]."""
        data = text.replace("\r\n", "\n").replace("\n", "\r\n").encode()
        with smtplib.LMTP("127.0.0.1", self.port, timeout=30) as lmtp:
            lmtp.ehlo_or_helo_if_needed()
            code, resp = lmtp.mail("sender@example.org")
            assert code == 250, resp
            for rcpt in rcpts:
                code, resp = lmtp.rcpt(rcpt)
                assert code == 250, resp
            lmtp.putcmd("data")
            code, resp = lmtp.getreply()
            assert code == 354, resp
            lmtp.send(smtplib._quote_periods(data) + b".\r\n")
            return [lmtp.getreply() for _ in rcpts]

    def home(self, addr):
        return self.base / "mail" / addr.split("@")[1] / addr

    def files(self, addr):
        """Message files in the inbox of addr (new/ and cur/)."""
        home = self.home(addr)
        return sorted(
            p for sub in ("new", "cur") if (home / sub).is_dir() for p in (home / sub).iterdir()
        )


@pytest.fixture
def lmtp(rendered):
    servers = []

    state = rendered["states"]["chatmail-dovecot-config-dedupe-sieve-compiled-cmd-run"]["cmd"]
    compile_state = {k: v for a in state if isinstance(a, dict) for k, v in a.items()}

    def start(period=None):
        server = Lmtp(rendered["files"]["/etc/dovecot/dovecot.conf"], compile_state, period)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def message(from_hdr, msg_id=None, body="hello", extra=""):
    head = f"From: {from_hdr}\nTo: <bob@{DOMAIN}>\nSubject: s\n"
    if msg_id is not None:
        head += f"Message-ID: {msg_id}\n"
    return head + extra + "\n" + body + "\n"


def addr(name="bob"):
    return f"{name}@{DOMAIN}"


def test_compiled_by_the_state_only_when_needed(lmtp):
    server = lmtp()
    assert not server.compiled_before and server.up_to_date()
    assert server.svbin.stat().st_mode & 0o777 == 0o644
    # a changed script: compiled again
    server.script.write_text(server.script.read_text() + "# changed\n")
    assert not server.up_to_date()
    server.svbin.unlink()
    assert not server.up_to_date()


def test_second_copy_is_dropped_with_250(lmtp):
    server = lmtp()
    msg = message("<alice@example.org>", "<m1@example.org>")
    first = server.deliver([addr()], msg)
    second = server.deliver([addr()], msg)
    # the sender is told 250 for the copy it will not see again: no retry loop
    assert [c for c, _ in first + second] == [250, 250], (first, second)
    assert len(server.files(addr())) == 1
    log = server.wait_log("discard")
    assert "discard" in log.lower(), log[-3000:]
    # compiled by sievec beforehand: LMTP loads the binary, never compiles
    assert "failed to save" not in log.lower() and "compile" not in log.lower(), log[-3000:]
    home = server.home(addr())
    # the duplicate database and its locks: none of them an IMAP folder
    assert (home / ".dovecot.lda-dupes").is_file()
    assert (home / "dovecot-volatile" / ".dovecot.lda-dupes.locks").is_dir()
    folders = [p.name for p in home.iterdir() if p.name.startswith(".") and p.is_dir()]
    assert folders == [], folders


def test_each_mailbox_once_in_one_transaction(lmtp):
    server = lmtp()
    msg = message("<alice@example.org>", "<m2@example.org>")
    replies = server.deliver([addr("bob"), addr("carol")], msg)
    assert [c for c, _ in replies] == [250, 250]
    replies = server.deliver([addr("bob"), addr("carol"), addr("dave")], msg)
    assert [c for c, _ in replies] == [250, 250, 250]
    for name in ("bob", "carol", "dave"):
        assert len(server.files(addr(name))) == 1, name


def test_same_message_id_from_another_sender_is_delivered(lmtp):
    """Nobody but the sender (filtermail: the login, or the DKIM-aligned
    domain) can make a mailbox drop the sender's message by sending its
    Message-ID first."""
    server = lmtp()
    server.deliver([addr()], message("<mallory@evil.example>", "<m3@example.org>"))
    server.deliver([addr()], message("Alice <alice@example.org>", "<m3@example.org>"))
    # the same address with another display name is another From header
    server.deliver([addr()], message("<alice@example.org>", "<m3@example.org>"))
    assert len(server.files(addr())) == 3


def test_another_message_with_same_from_and_message_id_is_dropped(lmtp):
    """Within the period the Message-ID is the message's identity (as for
    Delta Chat, which shows one message per Message-ID)."""
    server = lmtp()
    server.deliver([addr()], message("<alice@example.org>", "<m4@example.org>", body="one"))
    server.deliver([addr()], message("<alice@example.org>", "<m4@example.org>", body="two"))
    files = server.files(addr())
    assert len(files) == 1 and b"one" in files[0].read_bytes()


def test_without_a_single_message_id_and_from_nothing_is_dropped(lmtp):
    server = lmtp()
    for _ in range(2):
        server.deliver([addr()], message("<alice@example.org>"))
        server.deliver([addr()], message("<alice@example.org>", "<>"))
        server.deliver([addr()], message("<alice@example.org>", "<no-at-sign>"))
        server.deliver([addr()], message("<>", "<m10@example.org>"))
        two_ids = message("<alice@example.org>", "<m5@example.org>", extra="Message-ID: <x@y>\n")
        server.deliver([addr()], two_ids)
        two_froms = message("<alice@example.org>", "<m6@example.org>", extra="From: <a@b.c>\n")
        server.deliver([addr()], two_froms)
    assert len(server.files(addr())) == 12


def test_dropped_only_within_the_period(lmtp):
    server = lmtp(period=2)
    msg = message("<alice@example.org>", "<m7@example.org>")
    server.deliver([addr()], msg)
    server.deliver([addr()], msg)
    assert len(server.files(addr())) == 1
    time.sleep(3.2)
    server.deliver([addr()], msg)
    assert len(server.files(addr())) == 2


def test_a_refused_delivery_is_not_remembered(lmtp):
    """Over quota (as on a full disk) the delivery is deferred (452) and the
    id not marked: the sender's retry is stored once there is room."""
    server = lmtp()
    rcpt = addr()
    server.deliver([rcpt], message("<alice@example.org>", "<filler@example.org>", body="x" * 50000))
    msg = message("<alice@example.org>", "<m8@example.org>", body="y" * 20000)
    ((code, resp),) = server.deliver([rcpt], msg)
    assert code == 452, resp
    assert len(server.files(rcpt)) == 1
    for path in server.files(rcpt):
        path.unlink()
    (server.home(rcpt) / "maildirsize").unlink(missing_ok=True)
    ((code, resp),) = server.deliver([rcpt], msg)
    assert code == 250, resp
    files = server.files(rcpt)
    assert len(files) == 1 and b"yyyy" in files[0].read_bytes()


def test_concurrent_copies_are_stored_once(lmtp):
    """The original (delayed in a queue) and the retry arriving together: the
    duplicate check locks the id, so exactly one copy is stored."""
    server = lmtp()
    msg = message("<alice@example.org>", "<m9@example.org>", body="z" * 3000)
    replies = []
    threads = [
        threading.Thread(target=lambda: replies.extend(server.deliver([addr()], msg)))
        for _ in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [c for c, _ in replies] == [250] * 6, replies
    assert len(server.files(addr())) == 1
