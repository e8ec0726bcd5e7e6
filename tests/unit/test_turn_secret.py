"""The TURN secret stays out of chatmail.ini: the tree renders
``turn_secret_file = <path>`` for each domain with a secret and writes the
secret to that file, readable by root and a group only chatmail-metadata
gets; chatmaild reads it from there (a relative name would be a systemd
credential in ``$CREDENTIALS_DIRECTORY``)."""

import copy

import pytest

from tests.unit.test_chatmail_config import build

SECRET = "correct horse battery staple"


@pytest.fixture
def turn_map(cc, defaults, example_pillar):
    pillar = copy.deepcopy(example_pillar)
    pillar["domains"]["chat.example.org"]["turn_server"] = "turn.example.org:5349"
    pillar["domains"]["chat.example.org"]["turn_secret"] = SECRET
    return build(cc, defaults, pillar)


def test_secret_never_in_chatmail_ini(cc, turn_map):
    text = cc.ini_text(turn_map)
    assert SECRET not in text
    assert "turn_secret =" not in text
    path = "/etc/chatmail/secrets/turn_secret.chat.example.org"
    generated = "/etc/chatmail/secrets/turn_secret._test.example.org.generated"
    assert cc.turn_secret_files(turn_map) == {
        "chat.example.org": path,
        "_test.example.org": generated,
    }
    section = text.split("[domain:chat.example.org]")[1].split("[domain:")[0]
    assert f"turn_secret_file = {path}" in section
    # the other domain uses the relay's own TURN server with the secret
    # generated on the host (chatmail:turn:enabled)
    other = text.split("[domain:_test.example.org]")[1]
    assert f"turn_secret_file = {generated}" in other
    assert "turn_server = _test.example.org" in other


def test_without_own_turn_no_secret_no_server(cc, defaults, example_pillar):
    pillar = copy.deepcopy(example_pillar)
    pillar["turn"] = {"enabled": False}
    cm = build(cc, defaults, pillar)
    assert cc.turn_secret_files(cm) == {}
    assert "turn_" not in cc.ini_text(cm).split("[domain:_test.example.org]")[1]


@pytest.mark.parametrize(
    "turn, key, problem",
    [
        ({"port": 25}, "turn:port", "clashes with the smtp service"),
        ({"tls_port": 3478}, "turn:tls_port", "must differ"),
        ({"min_port": 60000, "max_port": 50000}, "turn:min_port", "greater than"),
        ({"min_port": 100}, "turn:min_port", "at least 1024"),
        ({"port": 50000}, "turn:port", "relay range"),
        ({"user_quota": -1}, "turn:user_quota", "negative"),
        ({"denied_peers": ["10.0.0.1/8"]}, "turn:denied_peers:0", "not an IP network"),
        ({"allowed_peers": ["lan"]}, "turn:allowed_peers:0", "not an IP network"),
        ({"denied_peers": ["::/128"]}, "turn:denied_peers:0", "matches every peer"),
        ({"enabled": "yes"}, "turn:enabled", ""),
    ],
)
def test_bad_turn_pillar_names_the_key(cc, defaults, example_pillar, turn, key, problem):
    pillar = copy.deepcopy(example_pillar)
    pillar["turn"] = turn
    with pytest.raises(cc.ChatmailConfigError) as err:
        build(cc, defaults, pillar)
    text = str(err.value)
    assert f"chatmail:{key}" in text and problem in text, text


def test_coturn_ranges(cc):
    assert cc.coturn_ranges(["10.0.0.0/8", "::1/128", "fe80::/10"]) == [
        "10.0.0.0-10.255.255.255",
        "::1",
        "fe80::-febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    ]


def test_a_host_wide_secret_gives_every_domain_its_credential(cc, defaults, example_pillar):
    pillar = copy.deepcopy(example_pillar)
    pillar["params"]["turn_secret"] = SECRET
    cm = build(cc, defaults, pillar)
    assert SECRET not in cc.ini_text(cm)
    assert sorted(cc.turn_secret_files(cm)) == ["_test.example.org", "chat.example.org"]


def with_secret_dir(cc, turn_map, tmp_path):
    """chatmail.ini whose secrets directory is tmp_path/secrets."""
    text = cc.ini_text(turn_map).replace("/etc/chatmail/secrets", str(tmp_path / "secrets"))
    ini = tmp_path / "chatmail.ini"
    ini.write_text(text)
    return ini


def test_metadata_reads_the_secret_file(cc, turn_map, chatmaild_config, tmp_path):
    from chatmaild.metadata import MetadataDict, turn_credentials

    ini = with_secret_dir(cc, turn_map, tmp_path)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "turn_secret.chat.example.org").write_text(SECRET + "\n")
    config = chatmaild_config.read_config(ini)
    md = MetadataDict(config, None, None)
    value = md.vendor_value("turn", "alice1234@chat.example.org")
    host, port, user, password = value.rsplit(":", 3)
    assert (host, port) == ("turn.example.org", "5349")
    expiry = int(user)
    assert turn_credentials(SECRET, now=expiry - 5 * 86400) == (user, password)
    # the other domain has no TURN server: nothing advertised
    assert md.vendor_value("turn", "bob012345@_test.example.org") is None


def test_metadata_without_the_secret_advertises_nothing(cc, turn_map, chatmaild_config, tmp_path):
    from chatmaild.metadata import MetadataDict

    ini = with_secret_dir(cc, turn_map, tmp_path)  # the file does not exist
    config = chatmaild_config.read_config(ini)
    assert MetadataDict(config, None, None).vendor_value("turn", "a@chat.example.org") is None


def test_relative_secret_file_is_a_systemd_credential(chatmaild_config, tmp_path, monkeypatch):
    from chatmaild.metadata import MetadataDict

    ini = tmp_path / "chatmail.ini"
    ini.write_text(
        "[params]\nmail_domain = chat.example.org\n"
        "turn_server = turn.example.org\nturn_secret_file = turn\n"
    )
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    config = chatmaild_config.read_config(ini)
    assert MetadataDict(config, None, None).vendor_value("turn", "a@chat.example.org") is None
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "turn").write_text(SECRET)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))
    config = chatmaild_config.read_config(ini)
    value = MetadataDict(config, None, None).vendor_value("turn", "a@chat.example.org")
    assert value.startswith("turn.example.org:3478:")


def test_inline_turn_secret_still_works(chatmaild_config, tmp_path):
    """A chatmail.ini written by hand (or chatmail/relay's) with turn_secret."""
    from chatmaild.metadata import MetadataDict

    ini = tmp_path / "chatmail.ini"
    ini.write_text(
        "[params]\nmail_domain = chat.example.org\n"
        "turn_server = turn.example.org\nturn_secret = inline\n"
    )
    config = chatmaild_config.read_config(ini)
    value = MetadataDict(config, None, None).vendor_value("turn", "a@chat.example.org")
    assert value.startswith("turn.example.org:3478:")


@pytest.mark.parametrize(
    "alpn, key, problem",
    [
        ({"ports": {"https": 443}}, "alpn:ports:https", "clashes with the https service"),
        ({"ports": {"imap": 3478}}, "alpn:ports:imap", "clashes with turn:port"),
        ({"ports": {"smtp": 10080}}, "alpn:ports:smtp", "clashes with params:"),
        ({"ports": {"smtp": 8443}}, "alpn:ports:smtp", "clashes with alpn:ports:https"),
        ({"ports": {"imap": 50000}}, "alpn:ports:imap", "TURN relay range"),
        ({"ports": {"imap": "x"}}, "alpn:ports:imap", ""),
        ({"enabled": 1}, "alpn:enabled", ""),
    ],
)
def test_bad_alpn_pillar_names_the_key(cc, defaults, example_pillar, alpn, key, problem):
    """Port 443 multiplexing (chatmail:alpn): its loopback backend ports must
    not collide with any other port of the relay."""
    pillar = copy.deepcopy(example_pillar)
    pillar["alpn"] = alpn
    with pytest.raises(cc.ChatmailConfigError) as err:
        build(cc, defaults, pillar)
    text = str(err.value)
    assert f"chatmail:{key}" in text and problem in text, text


def test_alpn_backends_render(cc, defaults, example_pillar):
    cm = build(cc, defaults, example_pillar)
    assert cm["alpn"] == {"enabled": True, "ports": {"https": 8443, "imap": 10993, "smtp": 10465}}
