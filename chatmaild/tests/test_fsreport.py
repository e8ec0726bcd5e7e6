"""chatmail-fsreport on a real maildir tree, run as the console script."""

import re
import subprocess
import time

from conftest import script_path
from test_expire import DOMAIN, add_message, make_account

OTHER = "other.example.net"
LINE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)\{((?:[a-z_]+="[^"\\]*",?)*)\} (-?[0-9.e+]+)$')


def run(*args):
    return subprocess.run(
        [script_path("chatmail-fsreport"), *map(str, args)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


def parse_metrics(text):
    metrics = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) \w+ .+$", line), line
            continue
        m = LINE_RE.match(line)
        assert m, f"bad metrics line {line!r}"
        labels = tuple(sorted(re.findall(r'([a-z_]+)="([^"]*)"', m.group(2))))
        metrics[(m.group(1), labels)] = float(m.group(3))
    return metrics


def build(tmp_path, make_ini):
    ini = make_ini(domains=[DOMAIN, OTHER])
    mb = tmp_path / "mailboxes"
    now = time.time()
    for i, days in enumerate([0.5, 3, 20, 60, 200]):
        make_account(mb, f"user{i:05d}@{DOMAIN}", login_days_ago=days, now=now)
    big = mb / DOMAIN / f"user00000@{DOMAIN}"
    add_message(big, "1.M1,S=50000:2,S", 1)
    add_message(big, "2.M2,S=500000:2,S", 1, folder=".Sub")
    add_message(big, "3.M3,S=5000000", 1, sub="new")
    add_message(big, "4.M4,S=20000000:2,S", 1)
    add_message(mb / DOMAIN / f"user00001@{DOMAIN}", "1.M1:2,S", 1, size=1000)
    make_account(mb, f"solo12345@{OTHER}", login_days_ago=2, now=now)
    return ini


def test_table_and_textfile(make_ini, tmp_path):
    ini = build(tmp_path, make_ini)
    textfile = tmp_path / "prom" / "chatmail.prom"
    textfile.parent.mkdir()
    res = run(ini, "--textfile", textfile)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert f"== {DOMAIN}" in out and f"== {OTHER}" in out
    mine = out.split(f"== {OTHER}")[0]
    assert re.search(r"accounts\s+5\n", mine)
    assert re.search(r"active last 1d\s+1\n", mine)
    assert re.search(r"active last 7d\s+2\n", mine)
    assert re.search(r"active last 30d\s+3\n", mine)
    assert re.search(r"active last 90d\s+4\n", mine)
    assert re.search(r"messages\s+5\n", mine)
    assert re.search(r"mailbox bytes\s+25551000 ", mine)
    assert mine.index(f"user00000@{DOMAIN}") < mine.index(f"user00001@{DOMAIN}")

    m = parse_metrics(textfile.read_text())
    dom = (("domain", DOMAIN),)
    assert m[("chatmail_accounts", dom)] == 5
    assert m[("chatmail_accounts", (("domain", OTHER),))] == 1
    assert m[("chatmail_accounts_active", (("days", "7"), ("domain", DOMAIN)))] == 2
    assert m[("chatmail_accounts_active", (("days", "90"), ("domain", OTHER)))] == 1
    assert m[("chatmail_mailbox_bytes", dom)] == 25551000
    assert m[("chatmail_messages", dom)] == 5
    sizes = {
        lab[1][1]: v
        for (name, lab), v in m.items()
        if name == "chatmail_messages_by_size" and lab[0][1] == DOMAIN
    }
    assert sizes == {"<100k": 2, "<1M": 1, "<10M": 1, ">=10M": 1}
    assert not [p for p in textfile.parent.iterdir() if p != textfile]  # no temp leftovers


def test_empty_tree_without_textfile(make_ini, tmp_path):
    res = run(make_ini())
    assert res.returncode == 0, res.stderr
    assert re.search(r"accounts\s+0\n", res.stdout)
