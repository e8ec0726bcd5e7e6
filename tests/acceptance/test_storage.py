"""Storage, quota, expiry on a live relay: ACCEPTANCE.md "Storage, quota, expiry".

Messages are real files in the account's Maildir with real (back-dated) mtimes;
the real commands run in the host as the vmail user.
"""

import json
import shlex
import time
import uuid

import pytest

from tests.harness.acceptance_relays import IP_DOMAIN_SETTINGS

from .conftest import INI, VENV_BIN
from .util import account, encrypted_message, imap_login, new_credentials, submit, user_dir

pytestmark = [pytest.mark.hosts, pytest.mark.acceptance]

DAY = 86400
MB = 1024 * 1024
QUOTA_WARNING = "/usr/local/bin/chatmail-quota-warning"
# as the relay runs these: uid vmail with the group that may read chatmail.ini
# (dovecot's extra_groups, the units' SupplementaryGroups)
VMAIL = "vmail:chatmail"


def put_message(relay, folder_dir, name, size, age_days):
    """A Maildir file of `size` bytes whose mtime is `age_days` ago."""
    path = f"{folder_dir}/cur/{name},S={size}:2,S"
    relay.host.sh(
        f"mkdir -p '{folder_dir}/cur' '{folder_dir}/new' '{folder_dir}/tmp' && "
        f"head -c {size} /dev/zero | tr '\\0' x > '{path}' && "
        f"touch -d @{int(time.time() - age_days * DAY)} '{path}' && "
        f"chown -R vmail:vmail '{folder_dir}'"
    )
    return path


def exists(relay, path):
    return relay.host.exec("test", "-e", path, check=False).returncode == 0


def test_expiry_dry_run_then_remove(relay1):
    addr, _pw = account(relay1)
    home = user_dir(relay1, addr)
    old_small = put_message(relay1, home, "1.old_small", 1000, 25)
    young_small = put_message(relay1, home, "2.young_small", 1000, 10)
    old_large = put_message(relay1, home, "3.old_large", 300_000, 10)
    young_large = put_message(relay1, home, "4.young_large", 300_000, 3)
    sub_old = put_message(relay1, f"{home}/.Archive", "5.sub_old", 1000, 25)
    sub_young = put_message(relay1, f"{home}/.Archive", "6.sub_young", 1000, 1)

    gone_user, _ = account(relay1)
    gone_home = user_dir(relay1, gone_user)
    relay1.host.exec("touch", "-d", f"@{int(time.time() - 100 * DAY)}", f"{gone_home}/password")

    expire = f"{VENV_BIN}/chatmail-expire"
    dry = relay1.host.exec(expire, INI, user=VMAIL).stdout
    for path in (old_small, old_large, sub_old):
        assert path.rsplit("/", 1)[1] in dry, dry
    assert gone_user in dry
    for path in (young_small, young_large, sub_young):
        assert path.rsplit("/", 1)[1] not in dry
    assert exists(relay1, old_small) and exists(relay1, gone_home)

    relay1.host.exec(expire, INI, "--remove", user=VMAIL)
    for path in (old_small, old_large, sub_old):
        assert not exists(relay1, path), path
    for path in (young_small, young_large, sub_young):
        assert exists(relay1, path), path
    assert not exists(relay1, gone_home)
    assert exists(relay1, f"{home}/password")


def test_quota_configured_with_warning_at_75_percent(relay1):
    conf = relay1.host.exec("doveconf", "-n").stdout
    assert "quota_rule = *:storage=500M" in conf
    assert "quota_warning = storage=75%% quota-warning 70" in conf
    # the same trim when a save passes 100% and when a session starts over quota;
    # a delivery to a full mailbox is deferred (retried), not bounced
    assert "quota_warning2 = storage=100%% quota-warning 70" in conf
    assert "quota_over_script = quota-warning 70" in conf
    assert "quota_full_tempfail = yes" in conf


def test_quota_warning_trims_oldest_keeps_young(relay1):
    """The script dovecot runs at the quota warning, with 1 % of 500M as target (5 MB)."""
    addr, _pw = account(relay1)
    home = user_dir(relay1, addr)
    mb = 1024 * 1024
    old = [put_message(relay1, home, f"{i:02d}.old", mb, 30 - i) for i in range(10)]
    young = [put_message(relay1, home, f"{i:02d}.young", mb, 0.01) for i in range(2)]
    relay1.host.exec(QUOTA_WARNING, "1", addr, home, user=VMAIL)
    kept_old = [p for p in old if exists(relay1, p)]
    assert all(exists(relay1, p) for p in young)
    assert 1 <= len(kept_old) <= 3, kept_old
    # the oldest went first
    assert kept_old == old[-len(kept_old) :]
    size = int(relay1.host.exec("du", "-sb", "--exclude=password", home).stdout.split()[0])
    assert size <= 5 * mb + 64 * 1024
    quota = relay1.host.exec("doveadm", "quota", "get", "-u", addr).stdout
    assert "STORAGE" in quota


def test_last_login_recorded_at_day_precision(relay1):
    addr, password = account(relay1)
    path = f"{user_dir(relay1, addr)}/password"
    relay1.host.exec("touch", "-d", f"@{int(time.time() - 5 * DAY)}", path)
    imap_login(relay1.ip, addr, password).logout()
    today = int(time.time()) // DAY * DAY
    deadline = time.monotonic() + 20
    while True:
        mtime = int(relay1.host.exec("stat", "-c", "%Y", path).stdout)
        if mtime == today or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert mtime == today


def test_fsreport_table_and_textfile(relay1):
    account(relay1)
    out = relay1.host.exec(
        f"{VENV_BIN}/chatmail-fsreport", INI, "--textfile", "/tmp/chatmail-fsreport.prom"
    ).stdout
    assert relay1.domain in out
    metrics = relay1.host.exec("cat", "/tmp/chatmail-fsreport.prom").stdout
    lines = [line for line in metrics.splitlines() if line and not line.startswith("#")]
    assert lines and all(relay1.domain in line or "{" not in line for line in lines), metrics
    assert any(relay1.domain in line for line in lines)


# --- A mailbox never blocks on full ------------------------------------------
# On relay3's IP-address domain, whose quota is small (IP_DOMAIN_SETTINGS), so
# that real 1 MB files fill it.  Mail is submitted by another account of that
# domain and goes the whole way: submission, filtermail, postfix, LMTP, Dovecot.


class SmallQuota:
    """Accounts of relay3's IP-address domain and what the tests do with them."""

    def __init__(self, relay):
        self.relay = relay
        self.host = relay.host
        self.domain = f"[{relay.ip}]"
        self.quota = IP_DOMAIN_SETTINGS["max_mailbox_size"]
        assert self.quota == "20M"
        self.limit = 20 * MB

    def account(self):
        addr, password = new_credentials(self.domain)
        imap_login(self.relay.ip, addr, password).logout()
        return addr, password, f"/home/vmail/mail/{self.relay.ip}/{addr}"

    def fill(self, home, sizes, newest_age_days):
        """Message files of the given sizes, oldest first, one minute apart, the
        last one `newest_age_days` old; written as vmail without Dovecot knowing."""
        now = time.time() - newest_age_days * DAY
        q = shlex.quote(home)
        paths, script = [], [f"mkdir -p {q}/cur {q}/new {q}/tmp"]
        for i, size in enumerate(sizes):
            path = f"{home}/cur/{1000 + i}.fill,S={size}:2,S"
            mtime = int(now - (len(sizes) - 1 - i) * 60)
            quoted = shlex.quote(path)
            script.append(f"head -c {size} /dev/zero | tr '\\0' x > {quoted}")
            script.append(f"touch -d @{mtime} {quoted}")
            paths.append(path)
        script.append(f"chown -R vmail:vmail {q}")
        self.host.sh(" && ".join(script))
        return paths

    def doveadm(self, *args):
        # quota_over_flag_lazy_check: this doveadm session itself must not start
        # the over-quota trim (the tests show which real event does)
        return self.host.exec(
            "doveadm", "-o", "plugin/quota_over_flag_lazy_check=yes", *args
        ).stdout

    def usage(self, addr):
        """Dovecot's STORAGE usage of addr (recounted): (KiB, percent of the limit)."""
        self.doveadm("quota", "recalc", "-u", addr)
        for line in self.doveadm("quota", "get", "-u", addr).splitlines():
            fields = line.split()
            if "STORAGE" in fields:
                value, limit, percent = fields[-3:]
                assert int(limit) == self.limit // 1024, line
                return int(value), int(percent)
        raise AssertionError("no STORAGE line")

    def percent(self, addr):
        return self.usage(addr)[1]

    def send(self, sender, sender_pw, rcpt):
        """Submit an encrypted message; returns its unique Message-ID token."""
        token = uuid.uuid4().hex
        msg = encrypted_message(sender, rcpt).replace(
            "enc.xYzEncBoundary42@example.org", f"{token}@example.org"
        )
        submit(self.relay.ip, sender, sender_pw, [rcpt], msg)
        return token

    def landed(self, home, token):
        q = shlex.quote(home)
        found = self.host.sh(f"grep -rlF {token} {q}/new {q}/cur || true")
        return bool(found.stdout.strip())

    def existing(self, paths):
        listing = self.host.sh(f"ls -1 {shlex.quote(paths[0].rsplit('/', 1)[0])}").stdout.split()
        return [p for p in paths if p.rsplit("/", 1)[1] in listing]

    def queued(self, rcpt):
        """{queue_id: delay_reason} of postfix's queue entries for rcpt."""
        out = {}
        for line in self.host.exec("postqueue", "-j").stdout.splitlines():
            entry = json.loads(line)
            for r in entry["recipients"]:
                if r["address"] == rcpt:
                    out[entry["queue_id"]] = r.get("delay_reason", "")
        return out

    def wait(self, what, timeout=90):
        deadline = time.monotonic() + timeout
        while True:
            result = what()
            if result or time.monotonic() > deadline:
                return result
            time.sleep(0.5)


@pytest.fixture
def small(relay3):
    return SmallQuota(relay3)


def test_over_quota_with_old_mail_unblocks_at_next_delivery(small):
    """A mailbox over 100% of old mail that no warning trimmed (e.g. a failed trim,
    a lowered quota): the next delivery is taken in, the oldest mail goes."""
    sender, sender_pw, _home = small.account()
    rcpt, _pw, home = small.account()
    old = small.fill(home, [MB] * 24, newest_age_days=2)
    assert small.percent(rcpt) == 120
    assert small.existing(old) == old  # nothing has trimmed it so far

    token = small.send(sender, sender_pw, rcpt)

    # Dovecot defers the attempt that finds the mailbox full (452 4.2.2) and
    # starts the trim; postfix's next retry (brought forward here, once the trim
    # is through) delivers.
    def delivered():
        if small.landed(home, token):
            return True
        if len(small.existing(old)) <= 14:
            for queue_id in small.queued(rcpt):
                small.host.exec("postqueue", "-i", queue_id)
        return False

    assert small.wait(delivered), small.queued(rcpt)
    kept = small.existing(old)
    assert kept == old[-14:]  # 14 MB = 70% of 20M, the oldest went first
    assert small.percent(rcpt) <= 71
    assert small.queued(rcpt) == {}


def test_save_passing_100_percent_trims_at_once(small):
    """The message that takes a mailbox past 100% is saved (quota grace) and the
    second quota warning trims the old mail: the next delivery needs no retry."""
    sender, sender_pw, _home = small.account()
    rcpt, _pw, home = small.account()
    old = small.fill(home, [MB] * 19 + [MB - 600], newest_age_days=3)
    young = small.fill(home + "/.Young", [100], newest_age_days=0.01)
    # 500 bytes below the limit (doveadm would show that rounded up as 100%)
    small.doveadm("quota", "recalc", "-u", rcpt)

    token = small.send(sender, sender_pw, rcpt)
    assert small.wait(lambda: small.landed(home, token))
    # 20M + the new message -> at most 14 MB (70%): the 7 oldest go
    assert small.wait(lambda: len(small.existing(old)) == 13), small.existing(old)
    assert small.existing(old) == old[-13:]
    assert small.existing(young) == young
    assert small.percent(rcpt) <= 71


def test_full_of_young_mail_refuses_until_it_ages_and_daily_expiry_runs(small):
    """Mail younger than a day is never trimmed: the mailbox refuses more (the
    signal its owner's client shows) and keeps all of it.  Once that mail is
    older than a day, the daily chatmail-expire job trims it and mail flows again."""
    sender, sender_pw, _home = small.account()
    rcpt, _pw, home = small.account()
    young = small.fill(home, [MB] * 22, newest_age_days=0.1)
    assert small.percent(rcpt) == 110

    token = small.send(sender, sender_pw, rcpt)
    reasons = small.wait(lambda: [r for r in small.queued(rcpt).values() if r])
    assert reasons and "4.2.2" in reasons[0] and "Quota exceeded" in reasons[0], reasons
    # the trim the refused attempt started (run here once more, synchronously)
    # leaves young mail alone
    small.host.exec(QUOTA_WARNING, "70", rcpt, home, user=VMAIL)
    assert small.existing(young) == young
    assert not small.landed(home, token)
    assert small.percent(rcpt) == 110

    # two days later: the same files are old; the timer's unit runs the daily job
    now = int(time.time())
    small.host.sh(
        " && ".join(
            f"touch -d @{now - 2 * DAY - (len(young) - i) * 60} {shlex.quote(p)}"
            for i, p in enumerate(young)
        )
    )
    unit = "chatmail-expire.service"
    assert "--remove" in small.host.exec("systemctl", "show", "-p", "ExecStart", unit).stdout
    small.host.exec("systemctl", "start", unit)  # oneshot: returns when done
    assert small.host.exec("systemctl", "show", "-p", "Result", unit).stdout.strip() == (
        "Result=success"
    )
    assert small.existing(young) == young[-14:]  # 14 MB = 70% of 20M, oldest went first
    assert small.percent(rcpt) <= 71

    # the deferred message lands at postfix's next retry, a new one right away
    for queue_id in small.queued(rcpt):
        small.host.exec("postqueue", "-i", queue_id)
    assert small.wait(lambda: small.landed(home, token))
    token2 = small.send(sender, sender_pw, rcpt)
    assert small.wait(lambda: small.landed(home, token2))
