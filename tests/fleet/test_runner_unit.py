"""The fleet runner's logic on given mine data and real job caches written
through Salt's returner interface (local_cache and salt_cache, as a master
would; no master, no hosts): records, DNS view, last highstates, status."""

import contextlib
import importlib.util

import pytest
import salt.config
import salt.loader

from tests.harness import REPO

ZONE = """; chatmail DNS records for a.test
a.test.  3600 IN A 192.0.2.1
a.test.  3600 IN MX 10 a.test.
opendkim._domainkey.a.test. 3600 IN TXT "v=DKIM1;k=rsa;p=AAAA" "BBBB"
"""


JOB_CACHES = ["local_cache", "salt_cache"]


@pytest.fixture(params=JOB_CACHES)
def runner(tmp_path, request):
    spec = importlib.util.spec_from_file_location(
        "chatmail_fleet_under_test", REPO / "_runners" / "chatmail_fleet.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    mine = {
        "chatmail_dns.zone_fragments": {"m1": {"a.test": ZONE}, "m2": {"b.test": ""}},
        "chatmail_dkim.list_keys": {
            "m1": {"a.test": {"opendkim": "AAAABBBB"}},
            "m2": {"b.test": {"opendkim": "CCCC"}},
        },
        "chatmail_dns.status": {
            "m1": {"a.test": {"ok": True, "problems": [], "warnings": []}},
            "m2": {"b.test": {"ok": False, "problems": ["MX missing"], "warnings": []}},
        },
        "chatmail_status.report": {
            "m1": {
                "services": {"postfix": "active", "dovecot": "failed"},
                "queue": {"total": 3, "deferred": 3},
                "disk": {"path": "/home/vmail/mail", "used_percent": 12.5},
                "errors": [],
                "domains": {
                    "a.test": {
                        "cert": {
                            "served": {"days_left": 42},
                            "file": {"path": "/x.pem", "days_left": 42},
                            "days_left": 42,
                        },
                        "queue": 3,
                        "accounts": 5,
                    },
                    "c.test": {
                        "cert": {
                            "served": {"days_left": 50},
                            "file": {"error": "FileNotFoundError"},
                            "days_left": 50,
                        },
                        "queue": 0,
                        "accounts": 2,
                    },
                },
            },
            # m2 has not synced the module yet: salt's error text in the mine
            "m2": "'chatmail_status.report' is not available.",
        },
    }
    module.__salt__ = {"mine.get": lambda tgt, fun, tgt_type="glob": mine.get(fun, {})}
    opts = salt.config.master_config(None)
    opts.update(
        {
            "root_dir": str(tmp_path),
            "cachedir": str(tmp_path / "cache"),
            "pki_dir": str(tmp_path / "pki"),
            "sock_dir": str(tmp_path / "sock"),
            "extension_modules": str(tmp_path / "extmods"),
            "master_job_cache": request.param,
        }
    )
    module.__opts__ = opts
    module.job_writer = salt.loader.returners(opts, {})
    return module


def write_job(runner, jid, fun, returns, arg=()):
    """Store a job as the master does, through the job cache's returner."""
    cache = runner.__opts__["master_job_cache"]
    returners = runner.job_writer
    returners[f"{cache}.prep_jid"](passed_jid=jid)
    load = {"fun": fun, "arg": list(arg), "jid": jid, "tgt": "*", "tgt_type": "glob"}
    returners[f"{cache}.save_load"](jid, load)
    for minion, ret in returns.items():
        returners[f"{cache}.returner"](
            {"jid": jid, "id": minion, "fun": fun, "return": ret, "retcode": 0}
        )


def state(sid, result=True, changes=None):
    return {f"file_|-{sid}_|-/x_|-managed": {"result": result, "changes": changes or {}}}


def test_records_flag_missing_zone_and_keep_dkim(runner):
    recs = runner.records(text=False)
    assert recs["a.test"]["problems"] == []
    assert recs["a.test"]["dkim"] == {"opendkim": "AAAABBBB"}
    assert recs["b.test"]["problems"] == ["m2 published no zone fragment"]
    text = runner.records()
    assert "; a.test -- relay m1" in text and "IN MX 10 a.test." in text
    assert "; PROBLEM: m2 published no zone fragment" in text


def test_records_flag_dkim_key_not_in_zone(runner):
    runner.__salt__["mine.get"]("*", "chatmail_dkim.list_keys")["m1"]["a.test"]["x"] = "ZZZZ"
    recs = runner.records(text=False)
    assert recs["a.test"]["problems"] == ["DKIM key x of m1 is not in the zone fragment"]


def test_dns_view(runner):
    result = runner.dns()
    assert result["a.test"] == {"minion": "m1", "ok": True, "problems": [], "warnings": []}
    assert result["b.test"]["ok"] is False and result["b.test"]["problems"] == ["MX missing"]


def test_last_highstates_newest_real_run(runner, tmp_path):
    write_job(runner, "20261122040000000000", "state.highstate", {"m1": state("a")})
    write_job(
        runner,
        "20261122050000000000",
        "state.highstate",
        {"m1": {**state("a"), **state("b", changes={"diff": "x"})}},
    )
    busy = ['The function "state.highstate" is running as PID 7 and was started at ...']
    write_job(runner, "20261122060000000000", "state.highstate", {"m1": busy})
    write_job(runner, "20261122070000000000", "state.apply", {"m1": state("c")}, arg=["fleet"])
    write_job(runner, "20261122080000000000", "test.ping", {"m1": True})
    write_job(runner, "20261122030000000000", "state.highstate", {"m2": ["Pillar failed"]})
    last = runner.last_highstates()
    assert last["m1"]["jid"] == "20261122050000000000"
    assert last["m1"]["time"] == "2026-11-22 05:00:00"
    assert (last["m1"]["result"], last["m1"]["changed"], last["m1"]["states"]) == (True, 1, 2)
    assert last["m1"]["changed_ids"] == ["b"]
    assert last["m2"]["result"] is False and last["m2"]["errors"] == ["Pillar failed"]


def test_status_table(runner, tmp_path):
    write_job(runner, "20261122050000000000", "state.highstate", {"m1": state("a")})
    data = runner.status(text=False)
    row = data["m1"]["row"]
    assert row["highstate"] == "ok 2026-11-22 05:00:00"
    assert row["services"] == "1/2 down:dovecot"
    assert row["domains"] == "a.test,c.test"
    assert (row["cert_days"], row["queue"], row["accounts"], row["disk"]) == (
        "42 err:c.test",
        "3",
        "7",
        "12.5%",
    )
    assert data["m1"]["status"]["domains"]["a.test"]["queue"] == 3
    m2 = data["m2"]["row"]
    assert (m2["services"], m2["cert_days"], m2["queue"], m2["disk"]) == ("0/0", "-", "-", "-")
    text = runner.status()
    assert text.splitlines()[0].split() == runner.COLUMNS
    assert "m1" in text
    report = runner.report()
    assert "=== DNS records ===" in report and "=== Fleet status ===" in report


def test_last_highstates_through_any_returner(runner):
    """A job cache whose get_jids lists jids only and whose get_jid gives bare
    returns (no {"return": ...} wrapper) is read as well."""
    jobs = {
        "20261122050000000000": ("state.highstate", {"m1": state("a"), "m2": state("b")}),
        "20261122060000000000": ("state.apply", {"m1": state("c", result=False)}),
        "20261122070000000000": ("state.apply", {"m2": ["SLS x not found"]}),
    }
    fake = {
        "fake.get_jids": lambda: sorted(jobs),
        "fake.get_load": lambda jid: {"fun": jobs[jid][0], "arg": []},
        "fake.get_jid": lambda jid: dict(jobs[jid][1]),
    }
    runner._job_cache = lambda: contextlib.nullcontext((fake, "fake"))
    last = runner.last_highstates()
    assert last["m1"]["jid"] == "20261122060000000000" and last["m1"]["result"] is False
    assert last["m2"]["jid"] == "20261122070000000000"
    assert last["m2"]["errors"] == ["SLS x not found"]


def test_last_highstates_stops_when_every_relay_is_found(runner):
    calls = []
    jobs = {f"202611220{h}0000000000": {"m1": state("a"), "m2": state("b")} for h in range(1, 8)}
    listing = {jid: {"Function": "state.highstate", "Arguments": []} for jid in jobs}
    fake = {
        "fake.get_jids": lambda: listing,
        "fake.get_jid": lambda jid: calls.append(jid) or jobs[jid],
    }
    runner._job_cache = lambda: contextlib.nullcontext((fake, "fake"))
    last = runner.last_highstates()
    assert {m: e["jid"] for m, e in last.items()} == {
        "m1": "20261122070000000000",
        "m2": "20261122070000000000",
    }
    assert calls == ["20261122070000000000"]
