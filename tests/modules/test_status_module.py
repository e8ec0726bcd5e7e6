"""chatmail_status execution and state modules through the salt loader, on a
temporary chatmail.ini and mailbox tree, with a real TLS server choosing its
certificate by SNI (no systemd or Postfix here: those probes must report, not
raise)."""

import datetime
import hashlib
import json
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from _modules import chatmail_status as status_module
from _states import chatmail_status as status_state
from tests.saltopts import masterless_minion

INI = """[params]
mail_domain = a.test {second}
mailboxes_dir = {mbdir}
"""


def make_cert(tmp_path, name, days):
    key, crt = tmp_path / f"{name}.key", tmp_path / f"{name}.crt"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
            "-days", str(days), "-keyout", str(key), "-out", str(crt),
        ],
        check=True, capture_output=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return crt, key


def der_sha256(crt):
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(crt.read_text())).hexdigest()


@pytest.fixture
def tls_server(tmp_path):
    """A TLS server on a free loopback port: a.test's certificate for SNI
    a.test, the default (10 days) otherwise; serves handshakes until closed."""
    a_crt, a_key = make_cert(tmp_path, "a.test", 100)
    d_crt, d_key = make_cert(tmp_path, "default", 10)
    a_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    a_ctx.load_cert_chain(a_crt, a_key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d_crt, d_key)

    def pick(sslsock, server_name, _ctx):
        if server_name == "a.test":
            sslsock.context = a_ctx

    ctx.sni_callback = pick
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (OSError, ssl.SSLError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield {"port": listener.getsockname()[1], "a": a_crt, "default": d_crt}
    stop.set()
    listener.close()
    thread.join(timeout=10)


@pytest.fixture
def relay_tree(tmp_path):
    mbdir = tmp_path / "mail"
    for addr in ("abc@a.test", "def@a.test"):
        (mbdir / "a.test" / addr / "cur").mkdir(parents=True)
        (mbdir / "a.test" / addr / "cur" / "1.mail").write_bytes(b"x" * 20000)
    (mbdir / "a.test" / "not-an-account").mkdir()
    ini = tmp_path / "chatmail.ini"
    ini.write_text(INI.format(second="[192.0.2.7]", mbdir=mbdir))
    return ini, mbdir


def test_read_ini(modules, tmp_path, relay_tree):
    ini, mbdir = relay_tree
    assert modules.chatmail_status.read_ini(str(ini)) == {
        "domains": ["a.test", "192.0.2.7"],
        "mailboxes_dir": str(mbdir),
    }
    # chatmail/relay's single-domain form names the domain's own directory
    ref = tmp_path / "ref.ini"
    ref.write_text("[params]\nmail_domain = c.test\nmailboxes_dir = /home/vmail/mail/c.test/\n")
    assert modules.chatmail_status.read_ini(str(ref))["mailboxes_dir"] == "/home/vmail/mail"
    missing = modules.chatmail_status.read_ini(str(tmp_path / "nope.ini"))
    assert "nope.ini" in missing["error"]
    (tmp_path / "bad.ini").write_text("no section\n")
    assert "error" in modules.chatmail_status.read_ini(str(tmp_path / "bad.ini"))


def test_served_cert_by_sni(modules, tls_server):
    status = modules.chatmail_status
    got = status.served_cert("a.test", port=tls_server["port"])
    assert got["sha256"] == der_sha256(tls_server["a"])
    assert got["days_left"] in (99, 100)
    today = datetime.datetime.now(datetime.UTC).date()
    assert got["not_after"].startswith(str(today + datetime.timedelta(days=100))[:4])
    # an IP domain asks without SNI and gets the default certificate
    got = status.served_cert("192.0.2.7", port=tls_server["port"])
    assert got["sha256"] == der_sha256(tls_server["default"])
    assert got["days_left"] in (9, 10)


def test_served_cert_down_is_an_error(modules):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    got = modules.chatmail_status.served_cert("a.test", port=port, timeout=5)
    assert set(got) == {"error"} and str(port) in got["error"]


def test_report_counts_accounts_and_disk(modules, relay_tree, tls_server):
    ini, mbdir = relay_tree
    rep = modules.chatmail_status.report(ini=str(ini), port=tls_server["port"])
    assert rep["errors"] == [] or all("dovecot" in e for e in rep["errors"])
    assert sorted(rep["domains"]) == ["192.0.2.7", "a.test"]
    assert set(rep["services"]) == set(status_module.UNITS)
    a = rep["domains"]["a.test"]
    assert a["accounts"] == 2
    assert a["disk"]["path"] == str(mbdir / "a.test")
    assert a["disk"]["used_bytes"] >= 40000
    assert a["cert"]["served"]["sha256"] == der_sha256(tls_server["a"])
    assert a["services"]["total"] == len(status_module.UNITS)
    ip = rep["domains"]["192.0.2.7"]
    assert ip["accounts"] == 0 and ip["disk"]["used_bytes"] == 0
    assert rep["disk"]["path"] == str(mbdir)
    assert 0 <= rep["disk"]["used_percent"] <= 100
    # queue: a number per domain, or postqueue's failure on the host level
    if "error" in rep["queue"]:
        assert a["queue"] is None
    else:
        assert isinstance(a["queue"], int)


def test_report_without_config(modules, tmp_path):
    rep = modules.chatmail_status.report(ini=str(tmp_path / "missing.ini"), timeout=2)
    assert rep["domains"] == {}
    assert any("missing.ini" in err for err in rep["errors"])


def test_queue_domains(modules):
    entry = {
        "sender": "x@a.test",
        "recipients": [{"address": "y@[192.0.2.7]"}, {"address": "z@B.Test."}, {}],
    }
    assert status_module._queue_domains(entry) == {"a.test", "192.0.2.7", "b.test"}
    assert status_module._queue_domains({"sender": ""}) == set()


def fake_apt(monkeypatch, installed, madison):
    """_run answering dpkg-query/apt-cache like a relay with these versions
    (dpkg --compare-versions is the real one of this Debian machine)."""
    real = status_module._run

    def run(argv, **kw):
        if argv[0] == "dpkg-query":
            return (f"{installed}\tii ".encode(), None) if installed else (b"", "no packages")
        if argv[0] == "apt-cache":
            lines = [f"dovecot-core | {v} | {src}" for v, src in madison]
            return ("\n".join(lines) + "\n").encode(), None
        return real(argv, **kw)

    monkeypatch.setattr(status_module, "_run", run)


PATCHED = "1:2.3.19.1+dfsg1-2.1+deb12u6+chatmail1"
OWN_REPO = "file:/var/lib/chatmail-dovecot/repo ./ Packages"
SECURITY = "http://deb.debian.org/debian-security bookworm-security/main amd64 Packages"
MAIN = "http://deb.debian.org/debian bookworm/main amd64 Packages"


def test_dovecot_patched_build_behind_debian_is_outdated(monkeypatch):
    fake_apt(
        monkeypatch,
        PATCHED,
        [
            (PATCHED, OWN_REPO),
            ("1:2.3.19.1+dfsg1-2.1+deb12u7", SECURITY),
            ("1:2.3.19.1+dfsg1-2.1+deb12u5", MAIN),
        ],
    )
    info = status_module.dovecot()
    assert info == {
        "installed": PATCHED,
        "patched": True,
        "built_from": "1:2.3.19.1+dfsg1-2.1+deb12u6",
        "debian": "1:2.3.19.1+dfsg1-2.1+deb12u7",
        "outdated": True,
    }


def test_dovecot_patched_build_of_debians_newest_is_current(monkeypatch):
    fake_apt(
        monkeypatch,
        PATCHED,
        [(PATCHED, OWN_REPO), ("1:2.3.19.1+dfsg1-2.1+deb12u6", SECURITY)],
    )
    info = status_module.dovecot()
    assert info["patched"] and info["outdated"] is False


def test_dovecot_stock_is_never_outdated(monkeypatch):
    stock = "1:2.3.19.1+dfsg1-2.1+deb12u6"
    fake_apt(monkeypatch, stock, [("1:2.3.19.1+dfsg1-2.1+deb12u7", SECURITY), (stock, MAIN)])
    info = status_module.dovecot()
    assert info["patched"] is False and info["outdated"] is False
    assert info["debian"] == "1:2.3.19.1+dfsg1-2.1+deb12u7"


def test_dovecot_not_installed(monkeypatch):
    fake_apt(monkeypatch, "", [])
    assert "error" in status_module.dovecot()


def test_report_warns_about_an_outdated_build(monkeypatch, tmp_path):
    fake_apt(monkeypatch, PATCHED, [("1:2.3.19.1+dfsg1-2.1+deb12u7", SECURITY)])
    # outside the loader: the shared helpers straight from _utils
    from _utils import chatmail_util

    utils = {f"chatmail_util.{n}": getattr(chatmail_util, n) for n in ("read_ini", "is_ip")}
    monkeypatch.setattr(status_module, "__utils__", utils, raising=False)
    rep = status_module.report(ini=str(tmp_path / "missing.ini"), timeout=2)
    assert rep["dovecot"]["outdated"] is True
    assert len(rep["warnings"]) == 1 and "build-dovecot" in rep["warnings"][0]


def healthy_report(**over):
    dom = {
        "services": {"up": 2, "total": 2, "down": []},
        "cert": {
            "served": {"days_left": 80, "not_after": "2027-01-01T00:00:00Z"},
            "file": {"path": "/tls/a.pem", "days_left": 80},
            "days_left": 80,
        },
        "queue": 0,
        "accounts": 1,
        "disk": {"used_bytes": 1},
    }
    rep = {
        "services": {"postfix": "active", "dovecot": "active"},
        "disk": {"path": "/m", "used_percent": 10.0, "free": 2**30},
        "errors": [],
        "domains": {"a.test": dom, "b.test": dict(dom)},
    }
    rep.update(over)
    return rep


def test_problem_rules():
    state = status_state
    assert state._problems(healthy_report()) == ({}, [])
    rep = healthy_report()
    rep["domains"]["a.test"] = {
        **rep["domains"]["a.test"],
        "services": {"up": 1, "total": 2, "down": ["dovecot"]},
        "cert": {"served": {"error": "127.0.0.1:993: refused"}, "file": {"days_left": 3}},
    }
    rep["disk"] = {"path": "/m", "used_percent": 95.5, "free": 2**20}
    per_domain, host = state._problems(rep, days_left=14, max_disk_percent=90)
    assert per_domain == {
        "a.test": [
            "unit dovecot is not active",
            "certificate served on 993: 127.0.0.1:993: refused",
            "certificate file expires in 3 days (?, threshold 14)",
        ]
    }
    assert host == ["mailbox filesystem /m is 95.5% full (threshold 90%, 1 MiB free)"]
    assert state._problems(rep, days_left=2, max_disk_percent=96)[1] == []
    assert state._problems({"errors": ["x.ini: gone"], "domains": {}})[1] == [
        "x.ini: gone",
        "no chatmail domains found",
    ]


def test_healthy_state_changes_nothing(states, relay_tree, tls_server):
    ini, _mbdir = relay_tree
    for test in (False, True):
        ret = states.chatmail_status.healthy(name="check", ini=str(ini), test=test)
        assert ret.changes == {}
        # no chatmail units run on this machine: each domain names them
        assert ret.result is False
        lines = ret.comment.splitlines()
        assert [line.split(":")[0] for line in lines] == ["192.0.2.7", "a.test"]
        assert "unit lastlogin is not active" in ret.comment


def test_masterless_sync_and_status_sls(tmp_path, relay_tree):
    """salt-call --local ships _utils with the modules and runs chatmail.status
    with the ini path from the pillar."""
    salt_call = Path(sys.executable).with_name("salt-call")
    ini, _mbdir = relay_tree
    root = tmp_path / "salt"
    root.mkdir()
    pillar = {"lookup": {"paths": {"ini": str(ini)}}, "status": {"days_left": 5}}
    conf_dir = masterless_minion(root, "relay.test", pillar).parent

    def run(*args):
        proc = subprocess.run(
            [str(salt_call), "--local", "-c", str(conf_dir), "--out=json", "-l", "quiet", *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=300,
        )
        return proc.returncode, json.loads(proc.stdout)["local"]

    _rc, synced = run("saltutil.sync_all")
    assert "utils.chatmail_util" in synced["utils"]
    assert "modules.chatmail_status" in synced["modules"]
    assert "states.chatmail_status" in synced["states"]
    for extra in ((), ("test=True",)):
        rc, ret = run("state.apply", "chatmail.status", *extra)
        (state,) = ret.values()
        assert rc != 0 and state["result"] is False and state["changes"] == {}
        assert state["comment"].startswith("192.0.2.7: unit ")


def test_problems_is_no_state(states):
    # a public helper of a state module would be callable as a state
    assert "chatmail_status.healthy" in states
    assert "chatmail_status.problems" not in states
    assert "chatmail_status._problems" not in states


def test_units_add_the_enabled_optional_ones(monkeypatch):
    """coturn and the echobot count only where their switch is on, i.e.
    where the highstate enabled their unit; a unit that does not exist
    answers on stderr only."""
    assert "coturn" in status_module.OPTIONAL_UNITS
    assert "chatmail-echobot" in status_module.OPTIONAL_UNITS
    answers = {"coturn": "enabled", "chatmail-echobot": None}
    calls = []

    def fake_run(argv, timeout=None, data=None):
        calls.append(argv)
        assert argv[:2] == ["systemctl", "is-enabled"]
        out = [answers[u] for u in argv[2:] if answers[u]]
        return "\n".join(out).encode() + b"\n", "No such file or directory"

    monkeypatch.setattr(status_module, "_run", fake_run)
    assert status_module.units() == [*status_module.UNITS, "coturn"]
    assert len(calls) == 3  # all at once, then one by one
    answers.update({"coturn": "disabled", "chatmail-echobot": "enabled"})
    assert status_module.units() == [*status_module.UNITS, "chatmail-echobot"]
    answers.update({"coturn": "enabled"})
    calls.clear()
    assert status_module.units()[-2:] == ["coturn", "chatmail-echobot"]
    assert len(calls) == 1
