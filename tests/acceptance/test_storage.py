"""Storage, quota, expiry on a live relay: ACCEPTANCE.md "Storage, quota, expiry".

Messages are real files in the account's Maildir with real (back-dated) mtimes;
the real commands run in the host as the vmail user.
"""

import time

import pytest

from .conftest import INI, VENV_BIN
from .util import account, imap_login, user_dir

pytestmark = [pytest.mark.hosts, pytest.mark.acceptance]

DAY = 86400


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
    dry = relay1.host.exec(expire, INI, user="vmail").stdout
    for path in (old_small, old_large, sub_old):
        assert path.rsplit("/", 1)[1] in dry, dry
    assert gone_user in dry
    for path in (young_small, young_large, sub_young):
        assert path.rsplit("/", 1)[1] not in dry
    assert exists(relay1, old_small) and exists(relay1, gone_home)

    relay1.host.exec(expire, INI, "--remove", user="vmail")
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


def test_quota_warning_trims_oldest_keeps_young(relay1):
    """The script dovecot runs at the quota warning, with 1 % of 500M as target (5 MB)."""
    addr, _pw = account(relay1)
    home = user_dir(relay1, addr)
    mb = 1024 * 1024
    old = [put_message(relay1, home, f"{i:02d}.old", mb, 30 - i) for i in range(10)]
    young = [put_message(relay1, home, f"{i:02d}.young", mb, 0.01) for i in range(2)]
    relay1.host.exec("/usr/local/bin/chatmail-quota-warning", "1", addr, home, user="vmail")
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
