"""chatmail_dns.check against a real authoritative server (Debian's nsd):
zone fragment -> nsd -> check round trip, and each kind of broken zone."""

import re

import pytest

from .conftest import zone_text

IPV4 = "192.0.2.25"
ARGS = {"ipv4": IPV4, "ipv6": False, "tlsrpt": "tls@example.org"}


def _without(text, pattern):
    """The fragment minus the lines matching ``pattern`` (a regex)."""
    return "".join(line for line in text.splitlines(True) if not re.search(pattern, line))


@pytest.fixture(scope="module")
def dns_setup(loaders, nsd_factory, tmp_path_factory):
    mods = loaders.modules
    keydir = str(tmp_path_factory.mktemp("dkim"))
    otherkeys = str(tmp_path_factory.mktemp("dkim-other"))
    zones = {}

    def fragment(domain, **extra):
        return mods.chatmail_dns.zone_fragment(domain, **dict(ARGS, keydir=keydir, **extra))

    for domain in (
        "complete.test",
        "nomx.test",
        "wrongdkim.test",
        "stalests.test",
        "partial.test",
        "broken.test",
        "hosted.test",
        "variant.test",
        "weak.test",
        "big.test",
    ):
        mods.chatmail_dkim.generate(domain, keydir=keydir, bits=1024)
    mods.chatmail_dkim.generate("wrongdkim.test", keydir=otherkeys, bits=1024)

    zones["complete.test"] = fragment("complete.test")
    zones["nomx.test"] = _without(fragment("nomx.test"), r"\sMX\s")
    zones["wrongdkim.test"] = mods.chatmail_dns.zone_fragment(
        "wrongdkim.test", **dict(ARGS, keydir=otherkeys)
    )
    zones["stalests.test"] = fragment("stalests.test", max_age=86400)
    # only the required records: recommended ones missing are warnings
    recommended = r"^(www\.|_submission|_imap)|\sCAA\s"
    zones["partial.test"] = _without(fragment("partial.test"), recommended)
    # several problems at once: wrong A, no DMARC, a second SPF record
    zones["broken.test"] = (
        _without(fragment("broken.test"), r"^_dmarc|\sA\s")
        + "broken.test. 3600 IN A 192.0.2.99\n"
        + 'broken.test. 3600 IN TXT "v=spf1 mx ~all"\n'
    )
    # the mta-sts name as an A record with the relay's address instead of a CNAME,
    # and unrelated TXT records next to the SPF record
    zones["hosted.test"] = (
        _without(fragment("hosted.test"), r"^mta-sts\.")
        + f"mta-sts.hosted.test. 3600 IN A {IPV4}\n"
        + 'hosted.test. 3600 IN TXT "site-verification=abc"\n'
    )
    # equivalent spellings an operator may have chosen: all accepted
    zones["variant.test"] = (
        _without(fragment("variant.test"), r"\sMX\s|v=spf1|^_dmarc|^_submission\.|\sCAA\s")
        + "variant.test. 3600 IN MX 20 variant.test.\n"
        + 'variant.test. 3600 IN TXT "v=spf1 mx -all"\n'
        + '_dmarc.variant.test. 3600 IN TXT "v=DMARC1; p=reject; adkim=s; aspf=s; '
        + 'rua=mailto:dmarc@variant.test"\n'
        + "_submission._tcp.variant.test. 3600 IN SRV 5 0 587 variant.test.\n"
        + 'variant.test. 3600 IN CAA 0 issue "letsencrypt.org; accounturi=https://a.test/1"\n'
    )
    # policies that do not protect the domain
    zones["weak.test"] = (
        _without(fragment("weak.test"), r"v=spf1|^_dmarc|^_smtp\._tls")
        + 'weak.test. 3600 IN TXT "v=spf1 -all"\n'
        + '_dmarc.weak.test. 3600 IN TXT "v=DMARC1;p=none"\n'
        + '_smtp._tls.weak.test. 3600 IN TXT "v=TLSRPTv1;rua=mailto:other@example.org"\n'
    )
    # an apex TXT answer too big for a 512-byte UDP reply: needs TCP
    zones["big.test"] = fragment("big.test") + "".join(
        f'big.test. 3600 IN TXT "filler-{i:02d}-{"x" * 40}"\n' for i in range(12)
    )
    server = nsd_factory({zone: zone_text(zone, body) for zone, body in zones.items()})
    return {"server": server, "keydir": keydir, "modules": mods}


def _check(setup, domain, **extra):
    args = dict(ARGS, keydir=setup["keydir"], nameservers=[setup["server"].address])
    args.update(extra)
    return setup["modules"].chatmail_dns.check(domain, **args)


def test_complete_zone_passes(dns_setup):
    report = _check(dns_setup, "complete.test")
    assert report["problems"] == []
    assert report["warnings"] == []
    assert report["ok"] is True
    assert report["nameserver"] == dns_setup["server"].address
    assert {r["status"] for r in report["records"]} == {"ok"}
    expected = dns_setup["modules"].chatmail_dns.records(
        "complete.test", keydir=dns_setup["keydir"], **ARGS
    )
    assert [(r["name"], r["type"]) for r in report["records"]] == [
        (r["name"], r["type"]) for r in expected
    ]
    dkim = next(r for r in report["records"] if "_domainkey" in r["name"])
    assert dkim["found"] == [dkim["expected"]]


def test_missing_mx(dns_setup):
    report = _check(dns_setup, "nomx.test")
    assert report["ok"] is False
    assert report["problems"] == ["MX nomx.test.: missing"]
    mx = next(r for r in report["records"] if r["type"] == "MX")
    assert mx["status"] == "missing" and mx["found"] == [] and mx["required"] is True


def test_wrong_dkim_key(dns_setup):
    mods, keydir = dns_setup["modules"], dns_setup["keydir"]
    report = _check(dns_setup, "wrongdkim.test")
    assert report["ok"] is False
    assert len(report["problems"]) == 1
    problem = report["problems"][0]
    assert problem.startswith("TXT opendkim._domainkey.wrongdkim.test.: wrong: p=<")
    want = mods.chatmail_dkim.public_key("wrongdkim.test", keydir=keydir)
    assert problem.endswith(f", expected p=<{want[:8]}...{want[-8:]}>")
    dkim = next(r for r in report["records"] if "_domainkey" in r["name"])
    assert dkim["status"] == "wrong"


def test_stale_mta_sts_id(dns_setup):
    mods = dns_setup["modules"]
    old = mods.chatmail_dns.mta_sts_id("stalests.test", max_age=86400)
    new = mods.chatmail_dns.mta_sts_id("stalests.test")
    report = _check(dns_setup, "stalests.test")
    assert report["ok"] is False
    assert report["problems"] == [
        f"TXT _mta-sts.stalests.test.: wrong: id={old}, expected id={new}"
    ]
    # the zone was built for max_age=86400: checked with it, it passes
    assert _check(dns_setup, "stalests.test", max_age=86400)["ok"] is True


def test_missing_recommended_records_are_warnings(dns_setup):
    report = _check(dns_setup, "partial.test")
    assert report["ok"] is True
    assert report["problems"] == []
    assert report["warnings"] == [
        "CNAME www.partial.test.: missing",
        "SRV _submission._tcp.partial.test.: missing",
        "SRV _submissions._tcp.partial.test.: missing",
        "SRV _imap._tcp.partial.test.: missing",
        "SRV _imaps._tcp.partial.test.: missing",
        "CAA partial.test.: missing",
    ]
    statuses = {(r["type"], r["name"]): r["status"] for r in report["records"]}
    assert statuses[("CNAME", "www.partial.test.")] == "warning"
    assert statuses[("TXT", "_smtp._tls.partial.test.")] == "ok"


def test_several_problems_named(dns_setup):
    report = _check(dns_setup, "broken.test")
    assert report["ok"] is False
    assert report["problems"] == [
        f"A broken.test.: wrong: 192.0.2.99, expected {IPV4}",
        "TXT broken.test.: wrong: 2 SPF records, expected one",
        "TXT _dmarc.broken.test.: missing",
    ]


def test_a_record_instead_of_cname_and_other_txt(dns_setup):
    report = _check(dns_setup, "hosted.test")
    assert report["problems"] == [] and report["warnings"] == []
    sts = next(r for r in report["records"] if r["name"] == "mta-sts.hosted.test.")
    assert sts["status"] == "ok" and sts["found"] == [IPV4]


def test_equivalent_records_are_accepted(dns_setup):
    report = _check(dns_setup, "variant.test")
    assert report["problems"] == [] and report["warnings"] == []


def test_weak_policies_are_wrong(dns_setup):
    report = _check(dns_setup, "weak.test")
    assert report["problems"] == [
        "TXT weak.test.: wrong: v=spf1 -all, expected v=spf1 a -all",
        "TXT _dmarc.weak.test.: wrong: v=DMARC1;p=none, expected v=DMARC1;p=reject;adkim=s;aspf=s",
    ]
    assert report["warnings"] == [
        "TXT _smtp._tls.weak.test.: wrong: v=TLSRPTv1;rua=mailto:other@example.org, "
        "expected v=TLSRPTv1;rua=mailto:tls@example.org"
    ]


def test_truncated_udp_answer_retried_over_tcp(dns_setup):
    import dns.flags
    import dns.message
    import dns.query

    server = dns_setup["server"]
    query = dns.message.make_query("big.test.", "TXT")
    response = dns.query.udp(query, "127.0.0.1", port=server.port, timeout=2)
    assert response.flags & dns.flags.TC
    report = _check(dns_setup, "big.test")
    assert report["ok"] is True and report["warnings"] == []
    spf = next(r for r in report["records"] if r["expected"].startswith("v=spf1"))
    assert spf["found"] == ["v=spf1 a -all"]


def test_dead_server_is_skipped(dns_setup):
    report = _check(
        dns_setup,
        "complete.test",
        nameservers=["127.0.0.1:9", dns_setup["server"].address],
        timeout=0.5,
    )
    assert report["ok"] is True
    assert report["nameserver"] == dns_setup["server"].address


def test_zone_not_served_is_an_error(dns_setup):
    # nsd answers REFUSED for a zone it does not serve
    with pytest.raises(Exception, match="REFUSED"):
        _check(dns_setup, "elsewhere.example")


def test_authoritative_servers_found_through_ns(dns_setup):
    """Without nameservers: find the zone and its NS through a resolver, then
    ask the NS's address (glue ns.<zone> -> 127.0.0.1) directly."""
    server = dns_setup["server"]
    report = dns_setup["modules"].chatmail_dns.check(
        "complete.test",
        resolvers=[server.address],
        port=server.port,
        **dict(ARGS, keydir=dns_setup["keydir"]),
    )
    assert report["ok"] is True, report["problems"]
    assert report["nameserver"] == server.address


def test_unreachable_server(dns_setup, loaders):
    with pytest.raises(Exception, match="no answer"):
        dns_setup["modules"].chatmail_dns.check(
            "complete.test",
            nameservers=["127.0.0.1:9"],
            timeout=0.5,
            **dict(ARGS, keydir=dns_setup["keydir"]),
        )
