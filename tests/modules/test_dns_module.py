"""chatmail_dns execution module: MTA-STS policy and id, records, zone fragment."""

import ipaddress
import re

import dns.rdatatype
import dns.zone
import pytest
from salt.exceptions import SaltInvocationError

from .conftest import zone_text

DOMAIN = "relay.test"


@pytest.fixture
def keydir(modules, tmp_path):
    modules.chatmail_dkim.generate(DOMAIN, keydir=str(tmp_path))
    return str(tmp_path)


def test_mta_sts_policy_text(modules):
    text = modules.chatmail_dns.mta_sts_policy(DOMAIN)
    assert text == "version: STSv1\nmode: enforce\nmx: relay.test\nmax_age: 2419200\n"
    text = modules.chatmail_dns.mta_sts_policy("Relay.Test.", mx=["a.test", "b.test"], max_age=60)
    assert text == "version: STSv1\nmode: enforce\nmx: a.test\nmx: b.test\nmax_age: 60\n"
    text = modules.chatmail_dns.mta_sts_policy(DOMAIN, crlf=True)
    assert text == "version: STSv1\r\nmode: enforce\r\nmx: relay.test\r\nmax_age: 2419200\r\n"
    with pytest.raises(SaltInvocationError):
        modules.chatmail_dns.mta_sts_policy(DOMAIN, max_age=31557601)


def test_mta_sts_id_follows_the_policy(modules):
    sts_id = modules.chatmail_dns.mta_sts_id(DOMAIN)
    assert re.fullmatch(r"[0-9a-f]{16}", sts_id)  # RFC 8461: 1*32 ALPHA/DIGIT
    assert modules.chatmail_dns.mta_sts_id(DOMAIN) == sts_id
    assert modules.chatmail_dns.mta_sts_id("relay.test.", mx="relay.test") == sts_id
    ids = {
        sts_id,
        modules.chatmail_dns.mta_sts_id(DOMAIN, max_age=86400),
        modules.chatmail_dns.mta_sts_id(DOMAIN, mx="mx.relay.test"),
        modules.chatmail_dns.mta_sts_id("other.test"),
    }
    assert len(ids) == 4


def test_records_required_and_recommended(modules, keydir):
    recs = modules.chatmail_dns.records(
        DOMAIN,
        ipv4="192.0.2.10",
        ipv6="2001:db8::10",
        keydir=keydir,
        tlsrpt="tls@relay.test",
        acme_account_uri="https://acme.test/acct/1",
    )
    by = {(r["name"], r["type"], r["value"].split(";")[0]): r for r in recs}
    txt = modules.chatmail_dkim.txt_value(DOMAIN, keydir=keydir)
    sts_id = modules.chatmail_dns.mta_sts_id(DOMAIN)
    expected = [
        ("relay.test.", "A", "192.0.2.10", True),
        ("relay.test.", "AAAA", "2001:db8::10", False),
        ("relay.test.", "MX", "10 relay.test.", True),
        ("relay.test.", "TXT", "v=spf1 a -all", True),
        ("_dmarc.relay.test.", "TXT", "v=DMARC1;p=reject;adkim=s;aspf=s", True),
        ("opendkim._domainkey.relay.test.", "TXT", txt, True),
        ("_mta-sts.relay.test.", "TXT", f"v=STSv1; id={sts_id}", True),
        ("mta-sts.relay.test.", "CNAME", "relay.test.", True),
        ("www.relay.test.", "CNAME", "relay.test.", False),
        ("_submission._tcp.relay.test.", "SRV", "0 1 587 relay.test.", False),
        ("_submissions._tcp.relay.test.", "SRV", "0 1 465 relay.test.", False),
        ("_imap._tcp.relay.test.", "SRV", "0 1 143 relay.test.", False),
        ("_imaps._tcp.relay.test.", "SRV", "0 1 993 relay.test.", False),
        (
            "relay.test.",
            "CAA",
            '0 issue "letsencrypt.org;accounturi=https://acme.test/acct/1"',
            False,
        ),
        ("_smtp._tls.relay.test.", "TXT", "v=TLSRPTv1;rua=mailto:tls@relay.test", False),
    ]
    got = [(r["name"], r["type"], r["value"], r["required"]) for r in recs]
    assert got == expected
    assert all(r["ttl"] == 3600 for r in recs)
    assert len(by) == len(recs)


def test_records_options(modules, keydir):
    recs = modules.chatmail_dns.records(
        DOMAIN, ipv4="", ipv6="2001:db8::1", keydir=keydir, caa=False
    )
    types = [(r["type"], r["required"]) for r in recs if r["name"] == "relay.test."]
    # without IPv4 the AAAA record is the required one; no CAA, no TLS-RPT
    if any(t == "A" for t, _ in types):
        assert ("AAAA", False) in types
    else:
        assert ("AAAA", True) in types
    assert not any(r["type"] == "CAA" for r in recs)
    assert not any(r["name"].startswith("_smtp._tls") for r in recs)
    recs = modules.chatmail_dns.records(DOMAIN, ipv4="192.0.2.1", ipv6=False, keydir=keydir)
    assert [r["value"] for r in recs if r["type"] in ("A", "AAAA")] == ["192.0.2.1"]
    with pytest.raises(SaltInvocationError):
        modules.chatmail_dns.records(DOMAIN, ipv4="2001:db8::1", keydir=keydir)


def test_records_address_from_grains(modules, loaders, keydir):
    recs = modules.chatmail_dns.records(DOMAIN, ipv6=False, keydir=keydir)
    addresses = [r["value"] for r in recs if r["type"] == "A"]
    candidates = [
        a for a in loaders.grains.get("ipv4", []) if not ipaddress.ip_address(a).is_loopback
    ]
    if not candidates:
        assert addresses == []
    else:
        assert len(addresses) == 1 and addresses[0] in candidates


def test_records_without_dkim_key(modules, tmp_path):
    recs = modules.chatmail_dns.records(DOMAIN, ipv4="192.0.2.1", keydir=str(tmp_path))
    assert not any("_domainkey" in r["name"] for r in recs)


@pytest.mark.parametrize("domain", ["1.2.3.4", "[1.2.3.4]", "2001:db8::1"])
def test_ip_domains_have_no_dns(modules, domain):
    assert modules.chatmail_dns.is_ip_domain(domain)
    assert modules.chatmail_dns.records(domain) == []
    assert "no DNS records" in modules.chatmail_dns.zone_fragment(domain)
    report = modules.chatmail_dns.check(domain)
    assert report["ok"] is True and report["records"] == [] and report["skipped"]


def test_zone_fragment_parses_back(modules, keydir):
    args = dict(
        ipv4="192.0.2.10",
        ipv6="2001:db8::10",
        keydir=keydir,
        tlsrpt="tls@relay.test",
        acme_account_uri="https://acme.test/acct/1",
    )
    text = modules.chatmail_dns.zone_fragment(DOMAIN, **args)
    for line in text.splitlines():
        assert line.startswith(";") or line.split()[0].endswith(".")
        assert not line.startswith("$")
    zone = dns.zone.from_text(zone_text(DOMAIN, text), origin=DOMAIN, relativize=False)
    recs = modules.chatmail_dns.records(DOMAIN, **args)
    for rec in recs:
        rdataset = zone.find_rdataset(rec["name"], rec["type"])
        assert rdataset.ttl == rec["ttl"]
        if rec["type"] == "TXT":
            values = {b"".join(r.strings).decode() for r in rdataset}
            assert all(len(s) <= 255 for r in rdataset for s in r.strings)
        else:
            values = {r.to_text() for r in rdataset}
        assert rec["value"] in values, rec
    dkim_set = zone.find_rdataset(f"opendkim._domainkey.{DOMAIN}.", "TXT")
    assert [len(r.strings) for r in dkim_set] == [2]
    # nothing else in the fragment than the records
    count = sum(
        len(rds)
        for name, node in zone.nodes.items()
        for rds in node.rdatasets
        if rds.rdtype not in (dns.rdatatype.SOA, dns.rdatatype.NS)
        and name.to_text() != f"ns.{DOMAIN}."
    )
    assert count == len(recs)


def test_zone_fragments_reads_written_files(modules, states, keydir, tmp_path):
    zone_dir = tmp_path / "zones"
    assert modules.chatmail_dns.zone_fragments(str(zone_dir)) == {}
    ret = states.chatmail_dns.zone_fragment_managed(
        name=str(zone_dir / f"{DOMAIN}.zone"), domain=DOMAIN, ipv4="192.0.2.1", keydir=keydir
    )
    assert ret.result is True
    (zone_dir / "notes.txt").write_text("not a zone\n")
    assert modules.chatmail_dns.zone_fragments(str(zone_dir)) == {
        DOMAIN: modules.chatmail_dns.zone_fragment(DOMAIN, ipv4="192.0.2.1", keydir=keydir)
    }


def test_domain_args_defaults_without_pillar(modules):
    assert modules.chatmail_dns.domain_args("example.org") == {
        "ipv4": None,
        "ipv6": None,
        "selector": "opendkim",
        # lookup:paths:dkim_dir of the merged map (defaults.yaml)
        "keydir": "/etc/dkimkeys",
        "tlsrpt": "",
        "caa": True,
        "max_age": 2419200,
    }
    assert modules.chatmail_dns.domain_args("_x.example.org")["caa"] is False
    assert modules.chatmail_dns.status(domains=["192.0.2.1"]) == {
        "192.0.2.1": {
            "ok": True,
            "problems": [],
            "warnings": [],
            "nameserver": None,
            "skipped": "IP-address relay: DNS does not apply",
        }
    }


@pytest.mark.parametrize(
    "args",
    [
        {"domain": "evil.test\n@ IN A 1.2.3.4"},
        {"domain": "a..test"},
        {"domain": "-a.test"},
        {"domain": DOMAIN, "tlsrpt": 'x@y.test" "v=spf1 +all'},
        {"domain": DOMAIN, "acme_account_uri": 'https://a.test/1" 0 issue "evil.test'},
    ],
)
def test_unsafe_values_never_reach_the_zone(modules, keydir, args):
    with pytest.raises(SaltInvocationError):
        modules.chatmail_dns.zone_fragment(ipv4="192.0.2.1", keydir=keydir, **args)
