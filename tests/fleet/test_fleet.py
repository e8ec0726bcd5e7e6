"""A salt master converging three relays (systemd hosts running salt-minion):
pillar isolation, highstate from the master, the schedule, mine and runner."""

import email
import json
import time

import pytest

from tests.harness import dns, hosts
from tests.hosts.test_relay import (
    SERVICES,
    encrypted_message,
    imap_login,
    new_credentials,
    submit,
)

from .conftest import MINIONS, write_pillar

OTHER = {m: [o for o in MINIONS if o != m] for m in MINIONS}


def test_keys_accepted(master, fleet):
    keys = master.keys()
    assert set(MINIONS) <= set(keys["minions"])
    assert not set(MINIONS) & set(keys.get("minions_pre", []))


def test_each_minion_gets_only_its_pillar(master, fleet):
    got = master.salt(MINIONS, "pillar.get", "chatmail:domains")
    for minion in MINIONS:
        assert list(got[minion]) == [minion]
    # the fleet environment reaches every minion: schedule and mine settings
    sched = master.salt(MINIONS, "pillar.get", "schedule:chatmail-highstate:function")
    assert set(sched) == set(MINIONS)


@pytest.mark.parametrize("minion", MINIONS)
def test_other_pillar_files_not_served(master, fleet, minion):
    other = OTHER[minion][0].replace(".", "_")
    for url in (
        f"salt://hosts/{other}.sls",
        f"salt://pillar/hosts/{other}.sls",
        f"salt://../pillar/hosts/{other}.sls",
        f"salt://chatmaild/../pillar/hosts/{other}.sls",
        "salt://pillar/top.sls",
        "salt://top.sls?saltenv=fleet",
        "salt://schedule.sls?saltenv=fleet",
    ):
        got = master.salt([minion], "cp.get_file_str", url)
        assert got.get(minion) in (False, None, ""), (url, got)
    listing = master.salt([minion], "cp.list_master")[minion]
    assert not [path for path in listing if path.startswith(("pillar/", "hosts/"))]
    assert not [path for path in listing if "fleet" in path and path.endswith("settings.yaml")]
    envs = master.salt([minion], "cp.list_master_dirs", "saltenv=fleet")[minion]
    assert not envs


def test_highstate_from_master_converges_all(fleet_converged):
    # No claim that this run made the changes: the minions' 1.5-minute
    # highstate schedule may have converged a host first (the master's run
    # queues behind it and then finds nothing to do) on a loaded machine.
    for minion, result in fleet_converged.items():
        assert result.ok, f"{minion}: {result.summary()}"


@pytest.mark.parametrize("minion", MINIONS)
def test_relay_services_and_login(relays, minion):
    host = relays[minion]
    down = [unit for unit in SERVICES if not host.is_active(unit)]
    assert not down, down
    addr, password = new_credentials(minion)
    imap_login(host.ip, addr, password).logout()
    assert host.exec("test", "-s", f"/home/vmail/mail/{minion}/{addr}/password").returncode == 0


def _mine_update(master):
    assert all(master.salt(MINIONS, "mine.update").get(m) is True for m in MINIONS)


def test_runner_lists_every_domains_records(master, relays):
    _mine_update(master)
    recs = master.run("chatmail_fleet.records", "text=False")
    assert sorted(recs) == sorted(MINIONS)
    keys = master.salt(MINIONS, "chatmail_dkim.list_keys")
    for minion, host in relays.items():
        entry = recs[minion]
        assert entry["minion"] == minion
        assert entry["problems"] == []
        zone = entry["zone"]
        assert f"{minion}." in zone and "IN A" in zone and host.ip in zone
        assert f"10 {minion}." in zone
        assert "_dmarc." + minion in zone
        # the DKIM key in the fleet's view is the relay's own key, and no other
        assert entry["dkim"] == keys[minion][minion]
        public = next(iter(entry["dkim"].values()))
        joined = "".join(zone.split('"')[1::2])
        assert public in joined
        for other in OTHER[minion]:
            assert other not in zone
    text = master.run("chatmail_fleet.records", out="txt")
    for minion in MINIONS:
        assert f"; {minion} -- relay {minion}" in text


def publish(relays, zones):
    """Serve `zones` in the harness nsd and make the relays' resolvers see them."""
    dns.set_zones(zones)
    hosts.flush_resolver(relays.values(), list(zones))


@pytest.fixture(scope="module")
def served_zones(master, relays):
    """Every relay's zone as the runner prints it, served by the harness nsd."""
    _mine_update(master)
    recs = master.run("chatmail_fleet.records", "text=False")
    zones = {
        domain: dns.zone_text(domain, entry["zone"].splitlines()) for domain, entry in recs.items()
    }
    publish(relays, zones)
    return zones


def test_runner_dns_check_against_served_zones(master, relays, served_zones):
    _mine_update(master)
    result = master.run("chatmail_fleet.dns")
    for minion in MINIONS:
        assert result[minion]["minion"] == minion
        assert result[minion]["ok"], result[minion]
    # a domain without its records is reported, the others stay OK
    broken = MINIONS[0]
    publish(relays, {broken: dns.zone_text(broken, [f"@ IN A {relays[broken].ip}"])})
    try:
        _mine_update(master)
        result = master.run("chatmail_fleet.dns")
        assert not result[broken]["ok"] and result[broken]["problems"]
        assert all(result[m]["ok"] for m in OTHER[broken])
    finally:
        publish(relays, {broken: served_zones[broken]})


def _wait_inbox(host, addr, password, timeout=180):
    deadline = time.monotonic() + timeout
    imap = imap_login(host.ip, addr, password)
    try:
        while True:
            imap.select("INBOX")
            _typ, data = imap.search(None, "ALL")
            nums = data[0].split()
            if nums or time.monotonic() > deadline:
                break
            time.sleep(2)
        if not nums:
            return None
        _typ, fetched = imap.fetch(nums[0], "(RFC822)")
        return email.message_from_bytes(fetched[0][1])
    finally:
        imap.logout()


def test_relays_deliver_to_each_other(relays, served_zones):
    """Relays converged by the master find each other through the test DNS
    (MX, DKIM) and deliver over port 25 with TLS; DKIM is checked on arrival."""
    src, dst = relays[MINIONS[0]], relays[MINIONS[1]]
    sender, sender_pw = new_credentials(MINIONS[0])
    rcpt, rcpt_pw = new_credentials(MINIONS[1])
    imap_login(dst.ip, rcpt, rcpt_pw).logout()
    submit(src.ip, sender, sender_pw, [rcpt], encrypted_message(sender, rcpt))
    msg = _wait_inbox(dst, rcpt, rcpt_pw)
    queue = src.exec("postqueue", "-p", check=False).stdout
    assert msg is not None, f"not delivered; sender queue:\n{queue}"
    assert msg["From"].strip("<>") == sender
    assert msg.get_content_type() == "multipart/encrypted"
    assert msg["Subject"] == "[...]"


def test_runner_status_table(master, relays):
    _mine_update(master)
    data = master.run("chatmail_fleet.status", "text=False")
    for minion in MINIONS:
        row = data[minion]["row"]
        assert row["services"] == f"{len(SERVICES)}/{len(SERVICES)}", row
        assert row["highstate"].startswith("ok "), row
        assert int(row["cert_days"]) > 0, row
        assert row["queue"] == "0"
        assert int(row["accounts"]) >= 1
        assert row["disk"].endswith("%")
    text = master.run("chatmail_fleet.status", out="txt")
    assert all(minion in text for minion in MINIONS)
    report = master.run("chatmail_fleet.report", out="txt")
    for heading in ("DNS records", "DNS check", "Fleet status"):
        assert heading in report


def _jid_now():
    return time.strftime("%Y%m%d%H%M%S000000", time.gmtime())


def _wait_scheduled(master, minions, after_jid, timeout=420):
    """Wait until every minion returned a highstate started after `after_jid`."""
    deadline = time.monotonic() + timeout
    last = {}
    while time.monotonic() < deadline:
        last = master.run("chatmail_fleet.last_highstates")
        if all(m in last and last[m]["jid"] > after_jid for m in minions):
            return last
        time.sleep(5)
    raise AssertionError(f"no scheduled highstate after {after_jid}: {json.dumps(last)}")


def test_schedule_fires_highstate_by_itself(master, relays):
    start = _jid_now()
    last = _wait_scheduled(master, MINIONS, start)
    for minion in MINIONS:
        assert last[minion]["result"] is True, last[minion]
        assert last[minion]["changed"] == 0, last[minion]


def _ini(host):
    return host.exec("cat", "/etc/chatmail/chatmail.ini").stdout


def test_pillar_change_reaches_only_targeted_relay(master, relays, fleet_pillar):
    target, others = MINIONS[0], OTHER[MINIONS[0]]
    before = {m: _ini(relays[m]) for m in MINIONS}
    assert "max_user_send_per_minute = 60" in before[target]
    start = _jid_now()
    write_pillar(fleet_pillar, target, extra_params={"max_user_send_per_minute": 61})
    try:
        last = _wait_scheduled(master, MINIONS, start)
        assert last[target]["result"] is True, last[target]
        assert last[target]["changed"] > 0, last[target]
        assert "max_user_send_per_minute = 61" in _ini(relays[target])
        for minion in others:
            assert last[minion]["changed"] == 0, (minion, last[minion])
            assert _ini(relays[minion]) == before[minion]
    finally:
        write_pillar(fleet_pillar, target)
