"""Web pages over HTTPS and DNS through the harness nsd: ACCEPTANCE.md "Web and DNS"."""

import json
import re
import xml.etree.ElementTree as ET

import dns.message
import dns.query
import dns.rdatatype
import pytest

from tests.harness import GATEWAY
from tests.harness import acceptance_relays as ar
from tests.harness import dns as harness_dns
from tests.harness.hosts import salt_call

from .util import https

pytestmark = [pytest.mark.hosts, pytest.mark.acceptance]


@pytest.mark.parametrize("path", ["/", "/info.html", "/privacy.html"])
def test_pages_served(relay1, path):
    status, _headers, body = https(relay1, "GET", path)
    assert status == 200
    text = body.decode()
    assert relay1.domain in text


def test_info_page_shows_limits(relay1):
    _status, _headers, body = https(relay1, "GET", "/info.html")
    text = re.sub(r"\s+", " ", body.decode())
    assert "20" in text and "500" in text  # delete_mails_after days, max_mailbox_size


def test_private_ca_domain_offers_dclogin_button_not_qr(relay1):
    """relay1's certificate comes from a private CA, which Delta Chat refuses
    for DCACCOUNT: (tests/hosts/test_dcaccount.py), so its page offers the
    /new button handing out a dclogin: URL; the QR code of a domain Delta Chat
    accepts is shown by test_dcaccount.py::test_underscore_domain_page_shows_qr."""
    _status, _headers, body = https(relay1, "GET", "/")
    assert b"DCACCOUNT:" not in body.upper()
    assert b'fetch("/new"' in body and b"acc.dclogin_url" in body


def test_new_redirects_get_to_dcaccount(relay1):
    status, headers, _body = https(relay1, "GET", "/new")
    assert status in (301, 302)
    assert headers["Location"] == f"dcaccount:https://{relay1.domain}/new"


@pytest.mark.parametrize(
    "path", ["/.well-known/autoconfig/mail/config-v1.1.xml", "/mail/config-v1.1.xml"]
)
def test_autoconfig_xml(relay1, path):
    status, _headers, body = https(relay1, "GET", path)
    assert status == 200
    root = ET.fromstring(body)
    provider = root.find("emailProvider")
    assert provider is not None
    assert provider.find("domain").text == relay1.domain
    servers = {
        (s.get("type"), s.find("port").text, s.find("socketType").text): s.find("hostname").text
        for tag in ("incomingServer", "outgoingServer")
        for s in provider.findall(tag)
    }
    assert servers[("imap", "993", "SSL")] == relay1.domain
    assert servers[("smtp", "465", "SSL")] == relay1.domain


@pytest.mark.parametrize("vhost", ["{domain}", "mta-sts.{domain}"])
def test_mta_sts_policy(relay1, vhost):
    host = vhost.format(domain=relay1.domain)
    status, _headers, body = https(relay1, "GET", "/.well-known/mta-sts.txt", host=host)
    assert status == 200
    policy = dict(
        line.split(": ", 1) for line in body.decode().replace("\r\n", "\n").splitlines() if line
    )
    assert policy == {
        "version": "STSv1",
        "mode": "enforce",
        "mx": relay1.domain,
        "max_age": "2419200",
    }


def query(name, rtype):
    answer = dns.query.udp(dns.message.make_query(name, rtype), GATEWAY, timeout=5)
    return [rdata for rrset in answer.answer for rdata in rrset]


def zone_fragment(relay):
    return relay.host.exec("cat", f"{ar.ZONE_DIR}/{relay.domain}.zone").stdout


def test_zone_fragment_records(relay1):
    zone = zone_fragment(relay1)
    domain = relay1.domain
    records = {}
    for line in zone.splitlines():
        if not line.strip() or line.startswith(";"):
            continue
        name, _ttl, _cls, rtype, value = line.split(None, 4)
        records.setdefault((name.rstrip("."), rtype), []).append(value)
    assert records[(domain, "A")] == [relay1.ip]
    assert records[(domain, "MX")] == [f"10 {domain}."]
    assert any("v=spf1" in v for v in records[(domain, "TXT")])
    dmarc = records[(f"_dmarc.{domain}", "TXT")][0]
    assert "p=reject" in dmarc and "adkim=s" in dmarc and "aspf=s" in dmarc
    dkim_txt = records[(f"opendkim._domainkey.{domain}", "TXT")][0]
    strings = re.findall(r'"([^"]*)"', dkim_txt)
    assert len(strings) >= 2 and all(len(s) <= 255 for s in strings)
    policy_id = re.search(r"id=(\w+)", records[(f"_mta-sts.{domain}", "TXT")][0]).group(1)
    assert (f"mta-sts.{domain}", "CNAME") in records or (f"mta-sts.{domain}", "A") in records
    assert (f"www.{domain}", "CNAME") in records or (f"www.{domain}", "A") in records
    for srv in ("_submission._tcp", "_submissions._tcp", "_imap._tcp", "_imaps._tcp"):
        assert (f"{srv}.{domain}", "SRV") in records, srv
    # the id names the policy the web server serves now
    relay_id = salt_call(relay1.host, "chatmail_dns.mta_sts_id", domain).stdout
    assert policy_id == json.loads(relay_id)["local"]


def test_published_records_resolve(relay1):
    """What nsd serves (published from the fragments) is what the relays use."""
    assert [r.to_text() for r in query(relay1.domain, dns.rdatatype.MX)] == [f"10 {relay1.domain}."]
    txt = b"".join(query(f"opendkim._domainkey.{relay1.domain}", dns.rdatatype.TXT)[0].strings)
    assert txt.startswith(b"v=DKIM1")


def dns_status(relay):
    proc = salt_call(relay.host, "chatmail_dns.status")
    return json.loads(proc.stdout)["local"]


def test_dns_check_passes(relay1, relay2):
    for relay in (relay1, relay2):
        status = dns_status(relay)
        assert status[relay.domain]["ok"], status


def test_dns_check_reports_missing_record(relay1, relays):
    zone = ar.published_zone(relay1)
    broken = "\n".join(line for line in zone.splitlines() if "_domainkey" not in line) + "\n"
    harness_dns.set_zone(relay1.domain, broken)
    try:
        status = dns_status(relay1)[relay1.domain]
    finally:
        ar.publish(relays)
    assert not status["ok"]
    assert any("_domainkey" in problem for problem in status["problems"]), status
