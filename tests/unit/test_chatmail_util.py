"""The shared helpers of _utils/chatmail_util.py, one rule each, including
the cases on which the copies they replace used to disagree."""

import pytest

from tests.unit.conftest import REPO, _load_module


@pytest.fixture(scope="module")
def util():
    return _load_module("chatmail_util_under_test", REPO / "_utils" / "chatmail_util.py")


@pytest.mark.parametrize(
    "text,expected",
    [
        ("192.0.2.7", True),
        ("[192.0.2.7]", True),
        (" 2001:db8::1 ", True),
        ("[2001:db8::1]", True),
        ("999.1.1.1", False),
        ("1.2.3", False),
        ("example.org", False),
        ("", False),
    ],
)
def test_is_ip(util, text, expected):
    assert util.is_ip(text) is expected


@pytest.mark.parametrize(
    "name,expected",
    [
        # case-insensitive (dkim used to keep the case, the others lowered it)
        ("Chat.Example.ORG.", "chat.example.org"),
        # an underscore anywhere, also last (dns and migrate refused "x_")
        ("_dcacc.test", "_dcacc.test"),
        ("relay_.example.org", "relay_.example.org"),
        # IPv6 literals too (migrate took IPv4 only), canonical, no brackets
        ("[2001:DB8:0::1]", "2001:db8::1"),
        ("[192.0.2.7]", "192.0.2.7"),
    ],
)
def test_normalize_domain(util, name, expected):
    assert util.normalize_domain(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "localhost",
        "-a.test",
        "a-.test",
        "a..test",
        "a/b.test",
        "../etc",
        "",
        "a b.test",
        "x" * 64 + ".test",
        ("a" * 60 + ".") * 5 + "test",
        None,
        7,
    ],
)
def test_normalize_domain_refuses(util, name):
    with pytest.raises(ValueError):
        util.normalize_domain(name)


@pytest.mark.parametrize("selector", ["opendkim", "dkim2026", "s-1", "2026", 2026])
def test_selector_accepted(util, selector):
    assert util.check_selector(selector) == str(selector)


# upper case and "_" (dkim and migrate took them), dots (dkim took several labels)
@pytest.mark.parametrize(
    "selector", ["Opendkim", "s_1", "a.b", "-s", "", " s", "../x", None, "x" * 64]
)
def test_selector_refused(util, selector):
    with pytest.raises(ValueError):
        util.check_selector(selector)


@pytest.mark.parametrize(
    "domain,mode",
    [
        ("_x.example.org", "self"),
        ("relay.test", "self"),
        ("192.0.2.7", "self"),
        ("2001:db8::1", "self"),
        ("example.org", "acme"),
    ],
)
def test_auto_tls_mode(util, domain, mode):
    # chatmail_dns used to leave IP addresses out of the rule
    assert util.auto_tls_mode(domain) == mode


def test_deep_merge(util):
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    over = {"a": {"c": [3], "e": {"f": 1}}, "d": None}
    merged = util.deep_merge(base, over)
    assert merged == {"a": {"b": 1, "c": [3], "e": {"f": 1}}, "d": None}
    merged["a"]["e"]["f"] = 2
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    assert over["a"]["e"] == {"f": 1}
    assert util.deep_merge(None, None) == {}


def test_read_ini(util, tmp_path):
    ini = tmp_path / "chatmail.ini"
    assert util.read_ini(str(ini)) is None
    ini.write_text(
        "[params]\nmail_domain = A.test, [192.0.2.7] a.test\nmailboxes_dir = /m/\n"
        "state_dir = /s\n[domain:a.test]\ntls_mode = self\n"
    )
    assert util.read_ini(str(ini)) == {
        "domains": ["a.test", "192.0.2.7"],
        "params": {
            "mail_domain": "A.test, [192.0.2.7] a.test",
            "mailboxes_dir": "/m/",
            "state_dir": "/s",
        },
        "tls_modes": {"a.test": "self"},
        "mailboxes_dir": "/m",
    }


def test_read_ini_relay_mailboxes_dir(util, tmp_path):
    # chatmail/relay writes the domain's own directory; migrate used to keep it
    ini = tmp_path / "chatmail.ini"
    ini.write_text("[params]\nmail_domain = c.test\nmailboxes_dir = /home/vmail/mail/c.test/\n")
    assert util.read_ini(str(ini))["mailboxes_dir"] == "/home/vmail/mail"
    # with several domains the last part is a directory of its own
    ini.write_text("[params]\nmail_domain = c.test d.test\nmailboxes_dir = /x/c.test\n")
    assert util.read_ini(str(ini))["mailboxes_dir"] == "/x/c.test"


@pytest.mark.parametrize(
    "text", ["no section\n", "[params]\nmail_domain = bad..test\n", "[params]\na = 1\na = 2\n"]
)
def test_read_ini_errors_name_the_file(util, tmp_path, text):
    ini = tmp_path / "bad.ini"
    ini.write_text(text)
    with pytest.raises(ValueError, match="bad.ini"):
        util.read_ini(str(ini))


def test_pillar_get(util):
    calls = []

    def get(key, default, unmask=False):
        calls.append((key, unmask))
        return "v"

    assert util.pillar_get({"pillar.get": get}, "chatmail:x", "d") == "v"
    assert calls == [("chatmail:x", True)]
    assert util.pillar_get({}, "chatmail:x", "d") == "d"


def test_lookup_is_the_merged_map(cc):
    """chatmail_config.lookup merges like map.jinja: outside salt, defaults.yaml."""
    import yaml

    defaults = yaml.safe_load((REPO / "salt" / "chatmail" / "defaults.yaml").read_text())
    assert cc.lookup() == defaults["chatmail"]["lookup"]


def test_domain_arg(util):
    from salt.exceptions import SaltInvocationError

    assert util.domain_arg("A.test.") == "a.test"
    with pytest.raises(SaltInvocationError, match="invalid DKIM domain: invalid label"):
        util.domain_arg("../etc", "DKIM domain")
