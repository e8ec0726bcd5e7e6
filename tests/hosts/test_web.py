"""The relay's web pages in a real browser, on the shared session relay.

Headless Chromium (tests/harness/browser.py) loads home, info and privacy of
chat1.test (self-signed without "_": Delta Chat takes no DCACCOUNT: there, so
the page offers "Create account"), presses the button, and zbarimg decodes
the QR code from the screenshot: it is the dclogin: link the page shows, and
that link logs in.  Switching `_chat2.test`'s `www_folder` (salt://compat-www)
to the generated pages and to a directory on the host and back leaves nothing
of the earlier mode in the web root; while generated, its page shows the
DCACCOUNT: QR code ("_" names are the ones Delta Chat accepts).
"""

import urllib.parse

import pytest

from tests.harness import browser, hosts

from .conftest import DOMAINS
from .test_relay import https_get, imap_login

pytestmark = pytest.mark.hosts

DOMAIN, OTHER = DOMAINS
PAGES = {"index": "/", "info": "/info.html", "privacy": "/privacy.html"}
WWW = "/var/www/chatmail"
# what every mode keeps in a named domain's web root
ALWAYS = {"autoconfig.xml", ".well-known", ".well-known/mta-sts.txt", "qr-chatmail-invite.svg"}
GENERATED = {"index.html", "info.html", "privacy.html", "chatmail.css", "qr.js"}
OWN_DIR = "/srv/cmsalt-own-www"


@pytest.fixture(scope="module")
def web(relay):
    missing = browser.missing_tools()
    if missing:
        pytest.fail(f"apt-get install {' '.join(missing)} (./cmsalt installs them)")
    with browser.browser(resolve={d: relay.ip for d in DOMAINS}) as b:
        yield b


def web_root(relay, domain):
    out = relay.exec("find", f"{WWW}/{domain}", "-mindepth", "1", "-printf", "%P\\n").stdout
    return set(out.split())


def credentials(dclogin):
    """(address, password) of a dclogin: URL."""
    url = urllib.parse.urlsplit(dclogin)
    return urllib.parse.unquote(url.path), urllib.parse.parse_qs(url.query)["p"][0]


@pytest.mark.parametrize("page", list(PAGES))
def test_page_in_a_browser(web, page, tmp_path):
    cap = web.capture(f"https://{DOMAIN}{PAGES[page]}", probes={"bg": browser.STYLED})
    (tmp_path / f"{page}.png").write_bytes(cap.png)
    assert cap.values["bg"] == browser.STYLED_VALUE  # chatmail.css applied
    assert f"{DOMAIN}</a>" in cap.html and 'aria-current="page"' in cap.html
    # no QR code before an account is asked for (DCACCOUNT: does not work here)
    assert browser.decode_qr(cap.png) == []
    if page == "index":
        assert 'id="new"' in cap.html and "DCACCOUNT" not in cap.html.upper()


def test_create_account_shows_a_scannable_dclogin_qr(web, relay, tmp_path):
    cap = browser.create_account(web, f"https://{DOMAIN}/")
    (tmp_path / "account.png").write_bytes(cap.png)
    assert cap.error == "" and cap.link.startswith("dclogin:"), cap.error
    # what a phone scanning the screen gets is the link the page shows
    assert browser.decode_qr(cap.png) == [cap.link]
    addr, password = credentials(cap.link)
    assert addr.endswith(f"@{DOMAIN}")
    imap_login(relay.ip, addr, password).logout()


def converge_web(relay, www_folder=None):
    """chatmail.nginx with _chat2.test's www_folder overridden (None: the pillar's)."""
    override = None
    if www_folder is not None:
        override = {"chatmail": {"domains": {OTHER: {"www_folder": www_folder}}}}
    result = hosts.converge(relay, sls="chatmail.nginx", pillar_override=override)
    assert result.ok, result.summary()
    return result


def test_www_folder_switch_leaves_nothing_behind(web, relay, tmp_path):
    operator = web_root(relay, OTHER)
    assert operator == ALWAYS | {"index.html"}, operator
    relay.sh(f"mkdir -p {OWN_DIR} && echo '<p>own-dir page</p>' > {OWN_DIR}/index.html")
    try:
        # salt://compat-www -> generated pages: the operator's index.html is
        # replaced, and the page shows the DCACCOUNT: QR code
        converge_web(relay, "")
        assert web_root(relay, OTHER) == ALWAYS | GENERATED
        cap = web.capture(f"https://{OTHER}/")
        (tmp_path / "generated.png").write_bytes(cap.png)
        assert cap.link == f"DCACCOUNT:https://{OTHER}/new"
        assert browser.decode_qr(cap.png) == [cap.link]
        # generated -> a directory on the host: the generated pages go
        converge_web(relay, OWN_DIR)
        assert web_root(relay, OTHER) == ALWAYS
        assert "own-dir page" in https_get(relay.ip, OTHER, "/")[1]
    finally:
        back = hosts.converge(relay, sls="chatmail.nginx")
        relay.exec("rm", "-rf", OWN_DIR, check=False)
    assert back.ok, back.summary()
    # -> salt://compat-www again: only the operator's files besides the fixed ones
    assert web_root(relay, OTHER) == operator
    assert https_get(relay.ip, OTHER, "/info.html")[0] == 404
    assert "compat-www" in https_get(relay.ip, OTHER, "/")[1]
