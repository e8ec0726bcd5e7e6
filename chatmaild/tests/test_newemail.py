"""chatmail-newemail: run as a real CGI program with a CGI environment."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

DOMAIN = "chat.example.org"
SCRIPT = str(Path(sys.executable).parent / "chatmail-newemail")


def cgi(ini, method="POST", host=DOMAIN, server_name=None, args=None, extra_env=None):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GATEWAY_INTERFACE": "CGI/1.1"}
    if method is not None:
        env["REQUEST_METHOD"] = method
    if host is not None:
        env["HTTP_HOST"] = host
    if server_name is not None:
        env["SERVER_NAME"] = server_name
    if args is None:
        env["CHATMAIL_INI"] = str(ini)
    env.update(extra_env or {})
    proc = subprocess.run(
        [SCRIPT, *(args or [])],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    head, _, body = proc.stdout.partition("\n\n")
    headers = dict(line.split(": ", 1) for line in head.splitlines())
    return proc.returncode, headers, body


def test_post_returns_fresh_credentials(chatmail_ini, tmp_path):
    rc, headers, body = cgi(chatmail_ini)
    assert rc == 0
    assert "Status" not in headers
    assert headers["Content-Type"] == "application/json"
    data = json.loads(body)
    assert set(data) == {"email", "password"}
    localpart, domain = data["email"].split("@")
    assert domain == DOMAIN
    assert re.fullmatch(r"[a-z0-9]{9}", localpart)
    assert len(data["password"]) >= 20
    # nothing is stored before the first login
    assert not any((tmp_path / "mailboxes").iterdir())
    # every call hands out different credentials
    other = json.loads(cgi(chatmail_ini)[2])
    assert other["email"] != data["email"] and other["password"] != data["password"]


def test_config_path_as_argument(chatmail_ini):
    rc, headers, body = cgi(chatmail_ini, args=[str(chatmail_ini)])
    assert rc == 0 and json.loads(body)["email"].endswith("@" + DOMAIN)


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", None])
def test_only_post(chatmail_ini, method):
    rc, headers, body = cgi(chatmail_ini, method=method)
    assert headers["Status"].startswith("405")
    assert headers["Allow"] == "POST"
    assert "@" not in body


@pytest.mark.parametrize("host", ["evil.example.com", "", None, "chat.example.org.evil.com"])
def test_unknown_host_is_404(chatmail_ini, host):
    rc, headers, body = cgi(chatmail_ini, host=host)
    assert headers["Status"].startswith("404")
    assert "@" not in body


def test_host_with_port_and_server_name_fallback(chatmail_ini):
    assert json.loads(cgi(chatmail_ini, host=f"{DOMAIN}:443")[2])["email"].endswith(DOMAIN)
    rc, headers, body = cgi(chatmail_ini, host=None, server_name=DOMAIN)
    assert json.loads(body)["email"].endswith("@" + DOMAIN)


def test_multi_domain_uses_request_host_and_its_limits(make_ini):
    other = "other.example.net"
    ini = make_ini(
        domains=[DOMAIN, other],
        sections={other: {"username_min_length": 12, "username_max_length": 12}},
    )
    data = json.loads(cgi(ini, host=other.upper())[2])
    localpart, domain = data["email"].split("@")
    assert domain == other and len(localpart) == 12
    assert json.loads(cgi(ini, host=DOMAIN)[2])["email"].endswith("@" + DOMAIN)


def test_acme_domain_has_no_dclogin(make_ini):
    ini = make_ini(tls_mode="acme")
    assert "dclogin_url" not in json.loads(cgi(ini)[2])


def check_dclogin(data, host):
    url = urlsplit(data["dclogin_url"])
    assert url.scheme == "dclogin"
    assert unquote(url.path) == data["email"]
    query = parse_qs(url.query)
    assert query["p"] == [data["password"]]
    assert query["v"] == ["1"]
    assert query["ih"] == [host] and query["sh"] == [host]
    assert query["ip"] == ["993"] and query["sp"] == ["465"]
    assert query["is"] == ["ssl"] and query["ss"] == ["ssl"]
    assert query["ic"] == ["3"] and query["sc"] == ["3"]


def test_self_signed_domain_gets_dclogin(make_ini):
    ini = make_ini(tls_mode="self")
    data = json.loads(cgi(ini)[2])
    check_dclogin(data, DOMAIN)


def test_ip_relay(make_ini):
    ini = make_ini(domains=["192.0.2.7"])
    for host in ["192.0.2.7", "192.0.2.7:443", "[192.0.2.7]"]:
        data = json.loads(cgi(ini, host=host)[2])
        assert data["email"].endswith("@[192.0.2.7]")
        check_dclogin(data, "192.0.2.7")


def test_config_error_is_500(make_ini, tmp_path):
    ini = make_ini(username_max_length="many")
    rc, headers, body = cgi(ini)
    assert rc == 2
    assert headers["Status"].startswith("500")
