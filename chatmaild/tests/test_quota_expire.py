"""chatmail-quota-expire on a real maildir, run as the console script."""

import subprocess
import time
from pathlib import Path

from chatmaild.expire import DAY, Message, quota_trim_plan
from conftest import script_path
from hypothesis import given, settings
from hypothesis import strategies as st
from test_expire import DOMAIN, add_message, make_account

MB = 1024 * 1024


def run(*args):
    return subprocess.run(
        [script_path("chatmail-quota-expire"), *map(str, args)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


def test_oldest_first_down_to_target(make_ini, tmp_path):
    ini = make_ini()
    now = time.time()
    acc = make_account(tmp_path / "mailboxes", f"quota1234@{DOMAIN}", now=now)
    # 6 messages of 1 MB (by S= tag), ages 10..5 days, spread over folders
    msgs = [
        add_message(acc, "a.M1,S=1048576:2,S", 10, now=now),
        add_message(acc, "b.M2,S=1048576:2,S", 9, folder=".Sub", now=now),
        add_message(acc, "c.M3,S=1048576", 8, sub="new", now=now),
        add_message(acc, "d.M4,S=1048576:2,S", 7, now=now),
        add_message(acc, "e.M5,S=1048576:2,S", 6, folder=".Sub", now=now),
        add_message(acc, "f.M6,S=1048576:2,S", 5, now=now),
    ]
    (acc / "maildirsize").write_text("x")
    res = run(ini, 3, acc)
    assert res.returncode == 0, res.stderr
    assert [m.exists() for m in msgs] == [False] * 3 + [True] * 3
    for m in msgs[:3]:
        assert f"removed {m} " in res.stdout
    assert "removed 3 message(s)" in res.stdout
    assert not (acc / "maildirsize").exists()
    # already below target: nothing happens
    res = run(ini, 3, acc)
    assert res.returncode == 0
    assert all(m.exists() for m in msgs[3:])
    assert "removed 0 message(s)" in res.stdout


def test_messages_younger_than_a_day_are_kept(make_ini, tmp_path):
    ini = make_ini()
    now = time.time()
    acc = make_account(tmp_path / "mailboxes", f"young1234@{DOMAIN}", now=now)
    old = add_message(acc, "a.M1:2,S", 2, size=MB, now=now)  # size from the file
    young = [add_message(acc, f"b{i}.M:2,S", 0.5, size=MB, now=now) for i in range(3)]
    res = run(ini, 0, acc)
    assert res.returncode == 0, res.stderr
    assert not old.exists()
    assert all(m.exists() for m in young)


def test_refuses_paths_outside_the_mailbox_tree(make_ini, tmp_path):
    ini = make_ini()
    elsewhere = make_account(tmp_path / "elsewhere", f"stray1234@{DOMAIN}")
    victim = add_message(elsewhere, "a.M1,S=10:2,S", 30)
    res = run(ini, 0, elsewhere)
    assert res.returncode == 2
    assert victim.exists()
    # the domain directory itself and a traversal are refused too
    domdir = tmp_path / "mailboxes" / DOMAIN
    domdir.mkdir()
    assert run(ini, 0, domdir).returncode == 2
    assert run(ini, 0, domdir / f"x@{DOMAIN}" / ".." / ".." / ".." / "elsewhere").returncode == 2
    # a symlinked account pointing outside is refused
    link = domdir / f"link1234@{DOMAIN}"
    link.symlink_to(elsewhere)
    assert run(ini, 0, link).returncode == 2
    assert victim.exists()


NOW = 1_800_000_000.0
AGES = st.floats(min_value=0, max_value=30 * DAY, allow_nan=False)
SIZES = st.integers(min_value=0, max_value=5 * MB)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(AGES, SIZES), max_size=40), st.integers(0, 100 * MB))
def test_trim_plan_properties(items, target):
    """Random mailboxes: oldest first, never mail younger than a day, and it
    stops as soon as the target is met."""
    msgs = [Message(Path(f"cur/{i}"), NOW - age, size, True) for i, (age, size) in enumerate(items)]
    chosen, after = quota_trim_plan(msgs, target, NOW)
    assert after == sum(m.size for m in msgs) - sum(m.size for m in chosen)
    assert all(m.mtime <= NOW - DAY for m in chosen)
    order = sorted(msgs, key=lambda m: (m.mtime, str(m.path)))
    assert chosen == order[: len(chosen)]
    rest = order[len(chosen) :]
    # stopped because the target is met, the next one is young, or none is left
    assert after <= target or not rest or rest[0].mtime > NOW - DAY
    # and not one message too late
    if chosen:
        assert after + chosen[-1].size > target
