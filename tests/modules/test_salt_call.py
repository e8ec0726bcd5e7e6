"""Masterless end to end: ``salt-call --local`` syncs the custom modules from
salt://_modules and salt://_states (the symlinks in the state tree) and runs them."""

import json
import os
import pathlib
import stat
import subprocess
import sys

import pytest

from tests.saltopts import masterless_minion, write_pillar_tree

from .conftest import zone_text

REPO = pathlib.Path(__file__).resolve().parents[2]
SALT_CALL = pathlib.Path(sys.executable).with_name("salt-call")


@pytest.fixture(scope="module")
def salt_call(tmp_path_factory):
    if not SALT_CALL.exists():
        pytest.skip("salt-call not found next to the test interpreter")
    root = tmp_path_factory.mktemp("salt-call")
    keydir = root / "dkimkeys"
    pillar = {"lookup": {"paths": {"dkim_dir": str(keydir)}}}
    conf_dir = masterless_minion(root, "relay.test", pillar).parent

    def run(*args, retcode=0):
        proc = subprocess.run(
            [str(SALT_CALL), "--local", "-c", str(conf_dir), "--out=json", "-l", "quiet", *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == retcode, proc.stdout + proc.stderr
        return json.loads(proc.stdout)["local"]

    synced = run("saltutil.sync_all")
    assert "modules.chatmail_dkim" in synced["modules"]
    assert "modules.chatmail_dns" in synced["modules"]
    assert "states.chatmail_dkim" in synced["states"]
    assert "states.chatmail_dns" in synced["states"]
    run.keydir = keydir
    run.set_pillar = lambda chatmail: write_pillar_tree(root / "pillar", chatmail)
    run.pillar = pillar
    return run


def test_salt_call_key_present_uses_pillar_keydir(salt_call):
    ret = salt_call("state.single", "chatmail_dkim.key_present", "name=relay.test", "test=True")
    (state,) = ret.values()
    assert state["result"] is None, state
    assert not salt_call.keydir.exists()

    ret = salt_call("state.single", "chatmail_dkim.key_present", "name=relay.test")
    (state,) = ret.values()
    path = salt_call.keydir / "relay.test.opendkim.private"
    assert state["result"] is True
    # the keydir comes from pillar, which salt 3008 masks unless asked not to
    assert state["changes"] == {"created": str(path)}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600

    ret = salt_call("state.single", "chatmail_dkim.key_present", "name=relay.test")
    (state,) = ret.values()
    assert state["result"] is True and state["changes"] == {}

    txt = salt_call("chatmail_dkim.txt_value", "relay.test")
    assert txt.startswith("v=DKIM1;k=rsa;p=MII")
    fragment = salt_call("chatmail_dns.zone_fragment", "relay.test", "ipv4=192.0.2.7")
    assert txt[:200] in fragment
    assert "relay.test. " in fragment and "192.0.2.7" in fragment


def test_salt_call_records_checked_with_pillar_nameservers(salt_call, nsd_factory):
    """zone fragment from salt-call -> nsd -> records_checked via salt-call, the
    name server coming from pillar chatmail:dns:nameservers."""
    salt_call("state.single", "chatmail_dkim.key_present", "name=relay.test")
    fragment = salt_call("chatmail_dns.zone_fragment", "relay.test", "ipv4=192.0.2.7")
    server = nsd_factory({"relay.test": zone_text("relay.test", fragment)})
    pillar = {**salt_call.pillar, "dns": {"nameservers": [server.address]}}
    salt_call.set_pillar(pillar)
    ret = salt_call(
        "state.single",
        "chatmail_dns.records_checked",
        "name=relay.test",
        "on_failure=fail",
        "ipv4=192.0.2.7",
    )
    (state,) = ret.values()
    assert state["result"] is True, state["comment"]
    assert state["changes"] == {}
    ret = salt_call(
        "state.single",
        "chatmail_dns.records_checked",
        "name=relay.test",
        "on_failure=fail",
        "ipv4=192.0.2.8",
        retcode=1,
    )
    (state,) = ret.values()
    assert state["result"] is False
    assert "A relay.test.: wrong: 192.0.2.7, expected 192.0.2.8" in state["comment"]

    # chatmail_dns.status: every pillar domain, arguments from pillar
    pillar["domains"] = {
        "relay.test": {"dns": {"ipv4": "192.0.2.7"}},
        "192.0.2.1": {},
        "elsewhere.test": {"dns": {"ipv4": "192.0.2.7"}},
    }
    salt_call.set_pillar(pillar)
    args = salt_call("chatmail_dns.domain_args", "relay.test")
    assert args == {
        "ipv4": "192.0.2.7",
        "ipv6": None,
        "selector": "opendkim",
        "keydir": str(salt_call.keydir),
        "tlsrpt": "",
        "caa": False,
        "max_age": 2419200,
    }
    report = salt_call("chatmail_dns.status")
    assert sorted(report) == ["192.0.2.1", "elsewhere.test", "relay.test"]
    assert report["relay.test"] == {
        "ok": True,
        "problems": [],
        "warnings": [],
        "nameserver": server.address,
    }
    assert report["192.0.2.1"]["ok"] is True and report["192.0.2.1"]["skipped"]
    assert report["elsewhere.test"]["ok"] is False
    assert "REFUSED" in report["elsewhere.test"]["problems"][0]
