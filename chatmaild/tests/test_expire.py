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
        "removed 1 of 2 accounts and 6 of 10 messages (850300 bytes) in the remaining accounts"
    ]
    # a second run finds nothing more
    res = run(ini, "--remove")
    assert "removed 0 of 1 accounts and 0 of 4 messages" in res.stdout


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
