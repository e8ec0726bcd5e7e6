"""The echobot's pillar keys (chatmail:echobot): off by default, which
domains get an echo@ account, and the validation naming the key."""

import re
from pathlib import Path

import pytest
import yaml

from .test_chatmail_config import build, errors_of

REPO = Path(__file__).resolve().parents[2]


def two_domains(**echobot):
    pillar = {"domains": {"chat.example.org": {}, "1.2.3.4": {}}}
    if echobot:
        pillar["echobot"] = echobot
    return pillar


def test_off_by_default(cc, defaults):
    cm = build(cc, defaults, two_domains())
    assert cm["echobot"]["enabled"] is False
    assert cc.echobot_accounts(cm) == {}


def test_every_domain_unless_named(cc, defaults):
    cm = build(cc, defaults, two_domains(enabled=True))
    # an IP-only domain's addresses are user@[ip]
    assert cc.echobot_accounts(cm) == {
        "1.2.3.4": "echo@[1.2.3.4]",
        "chat.example.org": "echo@chat.example.org",
    }
    cm = build(cc, defaults, two_domains(enabled=True, domains=["Chat.Example.org."]))
    assert cm["echobot"]["domains"] == ["chat.example.org"]
    assert cc.echobot_accounts(cm) == {"chat.example.org": "echo@chat.example.org"}


@pytest.mark.parametrize(
    "echobot, error",
    [
        ({"enabled": "yes"}, "chatmail:echobot:enabled: must be true or false"),
        ({"domains": ["other.example.org"]}, "chatmail:echobot:domains:0: 'other.example.org'"),
        ({"domains": ["bad domain"]}, "chatmail:echobot:domains:0: "),
        ({"domains": "chat.example.org"}, "chatmail:echobot:domains: must be a list"),
        ({"version": 2.65}, "chatmail:echobot:version: must be a string"),
        ({"version": "latest"}, "chatmail:echobot:version: not a release number"),
        ({"memory_max": "lots"}, "chatmail:echobot:memory_max: not a systemd size"),
        ({"colour": "blue"}, "chatmail:echobot:colour: unknown key"),
    ],
)
def test_bad_pillar_names_the_key(cc, defaults, echobot, error):
    errors = errors_of(cc, defaults, two_domains(**echobot))
    assert len(errors) == 1 and errors[0].startswith(error), errors


def test_version_is_the_one_the_tests_install():
    """The relays of the host tests install the bot from the wheels made for
    requirements-dev.txt: the default version must be the one pinned there."""
    defaults = yaml.safe_load((REPO / "salt/chatmail/defaults.yaml").read_text())
    version = defaults["chatmail"]["echobot"]["version"]
    pins = dict(
        re.findall(
            r"^(deltachat-rpc-(?:client|server))==(\S+)$",
            (REPO / "requirements-dev.txt").read_text(),
            re.M,
        )
    )
    assert pins == {"deltachat-rpc-client": version, "deltachat-rpc-server": version}
