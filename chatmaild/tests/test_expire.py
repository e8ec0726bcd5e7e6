"""chatmail-expire on real maildir trees, run as the installed console script."""

import os
import subprocess
import time

import pytest
from conftest import script_path

DAY = 86400
DOMAIN = "chat.example.org"


def run(*args):
    return subprocess.run(
        [script_path("chatmail-expire"), *map(str, args)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


def make_account(base, addr, login_days_ago=0, now=None):
    now = now or time.time()
    acc = base / addr.split("@")[1] / addr
    for sub in ("cur", "new", "tmp"):
        (acc / sub).mkdir(parents=True, exist_ok=True)
    pw = acc / "password"
    pw.write_text("{SHA512-CRYPT}$6$x$y\n")
    t = now - login_days_ago * DAY
    os.utime(pw, (t, t))
    return acc


def add_message(acc, name, days_ago, size=100, folder="", sub="cur", now=None):
    now = now or time.time()
    d = acc / folder / sub if folder else acc / sub
    d.mkdir(parents=True, exist_ok=True)
    path = d / name
    path.write_bytes(b"x" * size)
    t = now - days_ago * DAY
    os.utime(path, (t, t))
    return path


@pytest.fixture
def tree(make_ini, tmp_path):
    ini = make_ini(delete_mails_after=20, delete_large_after=7, delete_inactive_users_after=90)
    mb = tmp_path / "mailboxes"
    now = time.time()
    acc = make_account(mb, f"active123@{DOMAIN}", login_days_ago=1, now=now)
    paths = {
        "old": add_message(acc, "1.M1.host,S=100:2,S", 25, now=now),
        "fresh": add_message(acc, "2.M2.host,S=100:2,S", 3, now=now),
        "old_new": add_message(acc, "3.M3.host,S=100", 21, sub="new", now=now),
        "old_sub": add_message(acc, "4.M4.host,S=100:2,S", 30, folder=".DeltaChat", now=now),
        "fresh_sub": add_message(acc, "5.M5.host,S=100:2,S", 1, folder=".DeltaChat", now=now),
        # large by S= tag although small on disk, seen, 10 days old -> goes
        "large_tag": add_message(acc, "6.M6.host,S=300000:2,S", 10, now=now),
        # large by file size, no tag, in a subfolder -> goes
        "large_size": add_message(acc, "7.M7.host:2,S", 8, size=250_000, folder=".Big"),
        # large but young -> stays
        "large_young": add_message(acc, "8.M8.host,S=300000:2,S", 3, now=now),
        # large, old enough, not yet fetched by a client (new/) -> goes as well
        "large_unseen": add_message(acc, "9.M9.host,S=300000", 10, sub="new", now=now),
        # exactly at the threshold is not large
        "limit": add_message(acc, "10.M10.host,S=200000:2,S", 10, now=now),
    }
    (acc / "maildirsize").write_text("524288000S\n")
    inactive = make_account(mb, f"sleepy123@{DOMAIN}", login_days_ago=91, now=now)
    add_message(inactive, "1.M1.host,S=10:2,S", 1, now=now)
    return ini, mb, acc, inactive, paths


def test_dry_run_changes_nothing(tree):
    ini, mb, acc, inactive, paths = tree
    before = sorted(str(p) for p in mb.rglob("*"))
    res = run(ini)
    assert res.returncode == 0, res.stderr
    assert sorted(str(p) for p in mb.rglob("*")) == before
    out = res.stdout
    for key in ("old", "old_new", "old_sub", "large_tag", "large_size", "large_unseen"):
        assert f"would remove message {paths[key]} " in out
    for key in ("fresh", "fresh_sub", "large_young", "limit"):
        assert str(paths[key]) not in out
    assert f"would remove account {inactive} " in out
    assert "would remove 1 of 2 accounts and 6 of 10 messages" in out


def test_remove(tree):
    ini, mb, acc, inactive, paths = tree
    res = run(ini, "--remove")
    assert res.returncode == 0, res.stderr
    gone = {"old", "old_new", "old_sub", "large_tag", "large_size", "large_unseen"}
    for key, path in paths.items():
        assert path.exists() == (key not in gone), key
    assert not inactive.exists()
    assert (acc / "password").exists()
    assert not (acc / "maildirsize").exists()  # dovecot recounts the quota
    assert res.stdout.strip().splitlines() == [
        "removed 1 of 2 accounts and 6 of 10 messages (850300 bytes) in the remaining accounts;"
        " 0 mailbox(es) trimmed to 70% of quota"
    ]
    # a second run finds nothing more
    res = run(ini, "--remove")
    assert "removed 0 of 1 accounts and 0 of 4 messages" in res.stdout


def test_dedupe_database_and_locks_are_neither_messages_nor_folders(make_ini, tmp_path):
    """LMTP's dedupe script (dedupe_period) keeps its ids in
    .dovecot.lda-dupes and its locks under dovecot-volatile/: expiry neither
    counts nor removes them (they go with the account)."""
    from chatmaild.expire import maildir_folders, scan_messages

    ini = make_ini(delete_mails_after=20, delete_large_after=7, delete_inactive_users_after=90)
    mb = tmp_path / "mailboxes"
    now = time.time()
    acc = make_account(mb, f"dedupe123@{DOMAIN}", login_days_ago=1, now=now)
    old = now - 30 * DAY
    dupes = acc / ".dovecot.lda-dupes"
    dupes.write_bytes(b"x" * 300000)
    locks = acc / "dovecot-volatile" / ".dovecot.lda-dupes.locks"
    locks.mkdir(parents=True)
    (locks / "duplicate.lock.0123").write_bytes(b"")
    for path in (dupes, locks / "duplicate.lock.0123"):
        os.utime(path, (old, old))
    msg = add_message(acc, "1.M1.host,S=100:2,S", 25, now=now)
    assert maildir_folders(acc) == [acc]
    assert [m.path for m in scan_messages(acc)] == [msg]
    res = run(ini, "--remove")
    assert res.returncode == 0, res.stderr
    assert "removed 0 of 1 accounts and 1 of 1 messages" in res.stdout
    assert dupes.exists() and (locks / "duplicate.lock.0123").exists()


def test_days_offset_previews_future(tree):
    ini, mb, acc, inactive, paths = tree
    res = run(ini, "--days-offset", "18")
    assert str(paths["fresh"]) in res.stdout  # 3 + 18 > 20
    assert str(paths["fresh_sub"]) not in res.stdout  # 1 + 18 < 20
    assert paths["fresh"].exists()


def test_symlinks_are_not_followed(make_ini, tmp_path):
    ini = make_ini()
    mb = tmp_path / "mailboxes"
    outside = tmp_path / "outside"
    (outside / "cur").mkdir(parents=True)
    victim = add_message(outside, "1.M1.host,S=5:2,S", 100)
    acc = make_account(mb, f"linker123@{DOMAIN}")
    (acc / ".Evil").symlink_to(outside)
    (acc / "new").rmdir()
    (acc / "new").symlink_to(outside / "cur")
    os.symlink(outside, mb / DOMAIN / f"ghost1234@{DOMAIN}")
    (outside / "password").write_text("x")
    os.utime(outside / "password", (0, 0))
    res = run(ini, "--remove")
    assert res.returncode == 0, res.stderr
    assert victim.exists()
    assert (outside / "password").exists()
    assert (mb / DOMAIN / f"ghost1234@{DOMAIN}").is_symlink()


def test_per_domain_settings_and_missing_domain_dir(make_ini, tmp_path):
    other = "other.example.net"
    ini = make_ini(
        domains=[DOMAIN, other, "empty.example.com"],
        sections={other: {"delete_mails_after": "2"}},
    )
    mb = tmp_path / "mailboxes"
    a = make_account(mb, f"alice1234@{DOMAIN}")
    b = make_account(mb, f"bobby1234@{other}")
    ma = add_message(a, "1.M1.h,S=9:2,S", 5)
    mbm = add_message(b, "1.M1.h,S=9:2,S", 5)
    res = run(ini, "--remove")
    assert res.returncode == 0, res.stderr
    assert ma.exists()
    assert not mbm.exists()


def test_account_without_password_is_kept(make_ini, tmp_path):
    ini = make_ini()
    acc = tmp_path / "mailboxes" / DOMAIN / f"nopass123@{DOMAIN}"
    (acc / "cur").mkdir(parents=True)
    res = run(ini, "--remove")
    assert res.returncode == 0, res.stderr
    assert acc.exists()


def test_config_error_exits_2(tmp_path):
    ini = tmp_path / "bad.ini"
    ini.write_text("[params]\nmail_domain = x.example.org\ndelete_mails_after = soon\n")
    res = run(ini)
    assert res.returncode == 2
    assert "delete_mails_after" in res.stderr


MB = 1024 * 1024


@pytest.fixture
def quota_tree(make_ini, tmp_path):
    """Accounts of a domain with a 10 MB quota (1 MB messages by S= tag, ages in days)."""
    other = "other.example.net"
    ini = make_ini(
        domains=[DOMAIN, other],
        sections={DOMAIN: {"max_mailbox_size": "10M", "delete_large_after": "30"}},
        delete_mails_after=20,
    )
    mb = tmp_path / "mailboxes"
    now = time.time()

    def fill(addr, ages, **kw):
        acc = make_account(mb, addr, now=now)
        msgs = []
        for i, age in enumerate(ages):
            folder = ".DeltaChat" if i % 3 == 1 else ""
            sub = "new" if i % 3 == 2 else "cur"
            name = f"{i}.M{i}.host,S={MB}" + (":2,S" if sub == "cur" else "")
            msgs.append(add_message(acc, name, age, folder=folder, sub=sub, now=now, **kw))
        (acc / "maildirsize").write_text(f"{10 * MB}S\n")
        return acc, msgs

    accounts = {
        # 11 MB: 9 old (10..2 days) and 2 young -> the 4 oldest go, 7 MB remain
        "over": fill(f"overfull1@{DOMAIN}", [10, 9, 8, 7, 6, 5, 4, 3, 2, 0.5, 0.2]),
        # 8 MB of old mail: above 75% -> trimmed to 7 MB
        "above": fill(f"abovethe75@{DOMAIN}", [9, 8, 7, 6, 5, 4, 3, 2]),
        # 7 MB: at 70%, below 75% -> untouched
        "below": fill(f"belowthe75@{DOMAIN}", [9, 8, 7, 6, 5, 4, 3]),
        # 12 MB of mail younger than a day -> untouched (it refuses more mail)
        "young": fill(f"younghere1@{DOMAIN}", [0.9, 0.8, 0.7, 0.6, 0.5, 0.4] * 2),
        # 9 MB, 3 of them past delete_mails_after: 6 MB left, no trim needed
        "aged": fill(f"agedmails1@{DOMAIN}", [25, 24, 23, 5, 5, 5, 5, 5, 5]),
        # 12 MB in a domain with the default 500M quota -> untouched
        "other": fill(f"otherdom12@{other}", [5] * 12),
    }
    return ini, accounts


def test_daily_run_trims_mailboxes_over_75_percent_of_their_quota(quota_tree):
    ini, accounts = quota_tree
    res = run(ini, "--remove", "-v")
    assert res.returncode == 0, res.stderr
    acc, msgs = accounts["over"]
    assert [m.exists() for m in msgs] == [False] * 4 + [True] * 7
    for m in msgs[:4]:
        assert f"message {m} (mailbox at 110% of 10M, oldest first)" in res.stdout
    assert not (acc / "maildirsize").exists()  # dovecot recounts
    acc, msgs = accounts["above"]
    assert [m.exists() for m in msgs] == [False] + [True] * 7
    assert not (acc / "maildirsize").exists()
    for key in ("below", "young", "other"):
        acc, msgs = accounts[key]
        assert all(m.exists() for m in msgs), key
        assert (acc / "maildirsize").exists(), key
    acc, msgs = accounts["aged"]
    assert [m.exists() for m in msgs] == [False] * 3 + [True] * 6
    assert "(mailbox at" not in "".join(
        line for line in res.stdout.splitlines() if "agedmails1" in line
    )
    assert res.stdout.splitlines()[-1] == (
        "removed 0 of 6 accounts and 8 of 59 messages (8388608 bytes) in the remaining"
        " accounts; 2 mailbox(es) trimmed to 70% of quota"
    )
    # the next run finds every mailbox at or below 70%
    res = run(ini, "--remove")
    assert "and 0 of 51 messages" in res.stdout
    assert "0 mailbox(es) trimmed" in res.stdout


def test_daily_dry_run_shows_the_quota_trim(quota_tree):
    ini, accounts = quota_tree
    res = run(ini)
    assert res.returncode == 0, res.stderr
    _acc, msgs = accounts["over"]
    assert all(m.exists() for m in msgs)
    for m in msgs[:4]:
        assert f"would remove message {m} (mailbox at 110% of 10M, oldest first)" in res.stdout
    for m in msgs[4:]:
        assert str(m) not in res.stdout
    assert "2 mailbox(es) trimmed" in res.stdout


def test_young_mail_turns_removable_after_a_day(quota_tree):
    """A mailbox full of young mail is trimmed by the first daily run after it aged."""
    ini, accounts = quota_tree
    _acc, msgs = accounts["young"]
    res = run(ini, "--days-offset", "1")
    lines = [line for line in res.stdout.splitlines() if "younghere1" in line]
    # 12 MB -> 7 MB: the five oldest
    assert len(lines) == 5, lines
    assert all("mailbox at 120% of 10M" in line for line in lines)
