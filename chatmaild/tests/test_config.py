"""chatmaild.config: defaults, multi-domain, overrides and validation."""

import logging
from pathlib import Path

import pytest
from chatmaild.config import PARAMS, ConfigError, parse_size, read_config


def write(tmp_path, text):
    path = tmp_path / "chatmail.ini"
    path.write_text(text)
    return path


def test_defaults(tmp_path):
    config = read_config(write(tmp_path, "[params]\nmail_domain = chat.example.org\n"))
    assert config.mail_domains == ["chat.example.org"]
    assert config.mail_domain == "chat.example.org"
    assert config.max_message_size == 31457280
    assert config.filtermail_smtp_port == 10080
    assert config.filtermail_smtp_port_incoming == 10081
    assert config.postfix_reinject_port == 10025
    assert config.postfix_reinject_port_incoming == 10026
    assert config.mailboxes_dir == "/home/vmail/mail"
    assert config.nocreate_file == "/etc/chatmail-nocreate"
    assert config.max_load_1m == 5.0
    assert config.min_available_memory == 200 * 1024**2
    assert config.min_free_disk_space == 1024**3
    assert config.filtermail_dkim_check is True
    assert config.disable_ipv6 is False
    dc = config.domains["chat.example.org"]
    assert dc is config.primary
    assert dc.max_mailbox_size == 500 * 1024**2
    assert dc.max_mailbox_size_raw == "500M"
    assert (dc.username_min_length, dc.username_max_length) == (9, 9)
    assert dc.password_min_length == 9
    assert dc.delete_mails_after == 20
    assert dc.delete_large_after == 7
    assert dc.delete_inactive_users_after == 90
    assert dc.max_user_send_per_minute == 60
    assert dc.max_user_send_burst_size == 10
    # chatmail/relay dropped passthrough_recipients (and its echo@ default)
    assert dc.passthrough_recipients == []
    assert dc.passthrough_senders == []
    assert dc.tls_mode == "acme"
    assert not dc.is_ip
    assert dc.address_domain == "chat.example.org"
    assert dc.mailboxes_path == Path("/home/vmail/mail/chat.example.org")


def test_every_param_has_a_valid_default(tmp_path):
    config = read_config(write(tmp_path, "[params]\nmail_domain = chat.example.org\n"))
    for name, param in PARAMS.items():
        owner = config.primary if param.per_domain else config
        assert hasattr(owner, name), name


def test_relay_style_ini_reads_unchanged(tmp_path, caplog):
    text = """\
[params]
mail_domain = chat.example.org
max_user_send_per_minute = 60
max_mailbox_size = 500M
delete_mails_after = 20
username_min_length = 9
username_max_length = 9
password_min_length = 9
passthrough_senders =
passthrough_recipients = echo@chat.example.org
filtermail_smtp_port = 10080
postfix_reinject_port = 10025
mailboxes_dir = /home/vmail/mail/chat.example.org
passdb_path = /home/vmail/passdb.sqlite
disable_ipv6 = False
imap_rawlog = false
privacy_postal =
privacy_mail =
privacy_pdo =
privacy_supervisor =
"""
    with caplog.at_level(logging.WARNING, logger="chatmaild.config"):
        config = read_config(write(tmp_path, text))
    assert not [r for r in caplog.records if "unknown key" in r.getMessage()]
    # the reference puts the domain into mailboxes_dir; we add it ourselves
    assert config.mailboxes_dir == "/home/vmail/mail"
    assert config.primary.mailboxes_path == Path("/home/vmail/mail/chat.example.org")
    assert config.user_dir("abc@chat.example.org") == Path(
        "/home/vmail/mail/chat.example.org/abc@chat.example.org"
    )


def test_multi_domain_and_overrides(tmp_path):
    text = """\
[params]
mail_domain = chat.example.org, Other.Example.NET.
max_mailbox_size = 1G
mailboxes_dir = /srv/mail

[domain:other.example.net]
max_mailbox_size = 100M
username_min_length = 5
username_max_length = 12
passthrough_recipients = a@other.example.net b@other.example.net
"""
    config = read_config(write(tmp_path, text))
    assert config.mail_domains == ["chat.example.org", "other.example.net"]
    assert config.mail_domain == "chat.example.org"
    a = config.for_domain("chat.example.org")
    b = config.for_domain("OTHER.example.net")
    assert a.max_mailbox_size_raw == "1G" and a.max_mailbox_size == 1024**3
    assert b.max_mailbox_size_raw == "100M" and b.max_mailbox_size == 100 * 1024**2
    assert (a.username_min_length, a.username_max_length) == (9, 9)
    assert (b.username_min_length, b.username_max_length) == (5, 12)
    assert b.passthrough_recipients == ["a@other.example.net", "b@other.example.net"]
    assert a.passthrough_recipients == []
    assert config.for_address("x@other.example.net") is b
    assert config.for_address("x@third.example.com") is None
    assert config.for_address("x@y@chat.example.org") is None
    assert config.for_address("no-at-sign") is None
    assert config.user_dir("x@other.example.net") == Path(
        "/srv/mail/other.example.net/x@other.example.net"
    )
    # the domain suffix heuristic applies to single-domain configs only
    assert config.mailboxes_dir == "/srv/mail"


def test_ip_domain(tmp_path):
    config = read_config(write(tmp_path, "[params]\nmail_domain = [192.0.2.7]\n"))
    assert config.mail_domains == ["192.0.2.7"]
    dc = config.primary
    assert dc.is_ip
    assert dc.address_domain == "[192.0.2.7]"
    assert dc.tls_mode == "self"
    assert config.for_address("abc@[192.0.2.7]") is dc
    assert config.user_dir("abc@[192.0.2.7]").parent.name == "192.0.2.7"


@pytest.mark.parametrize("domain", ["_chat.example.org", "relay.test"])
def test_self_signed_domains(tmp_path, domain):
    config = read_config(write(tmp_path, f"[params]\nmail_domain = {domain}\n"))
    assert config.primary.tls_mode == "self"


def test_unknown_key_warns(tmp_path, caplog):
    text = "[params]\nmail_domain = chat.example.org\nno_such_key = 1\n"
    with caplog.at_level(logging.WARNING, logger="chatmaild.config"):
        read_config(write(tmp_path, text))
    assert any("no_such_key" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "key,value",
    [
        ("max_user_send_per_minute", "abc"),
        ("delete_mails_after", "-1"),
        ("filtermail_smtp_port", "70000"),
        ("filtermail_smtp_port", "0"),
        ("max_mailbox_size", "lots"),
        ("min_free_disk_space", "1X"),
        ("max_load_1m", "high"),
        ("filtermail_dkim_check", "maybe"),
        ("tls_mode", "sometimes"),
    ],
)
def test_bad_values_name_the_key(tmp_path, key, value):
    text = f"[params]\nmail_domain = chat.example.org\n{key} = {value}\n"
    with pytest.raises(ConfigError, match=key):
        read_config(write(tmp_path, text))


def test_bad_value_in_domain_section_names_section_and_key(tmp_path):
    text = (
        "[params]\nmail_domain = chat.example.org\n\n"
        "[domain:chat.example.org]\npassword_min_length = short\n"
    )
    with pytest.raises(ConfigError, match=r"domain:chat.example.org.*password_min_length"):
        read_config(write(tmp_path, text))


def test_host_wide_key_in_domain_section_refused(tmp_path):
    text = (
        "[params]\nmail_domain = chat.example.org\n\n"
        "[domain:chat.example.org]\nfiltermail_smtp_port = 11000\n"
    )
    with pytest.raises(ConfigError, match="filtermail_smtp_port.*host-wide"):
        read_config(write(tmp_path, text))


@pytest.mark.parametrize(
    "text,match",
    [
        ("[other]\nx = 1\n", r"\[params\]"),
        ("[params]\nmax_mailbox_size = 1G\n", "mail_domain"),
        ("[params]\nmail_domain =\n", "mail_domain"),
        ("[params]\nmail_domain = localhost\n", "mail_domain"),
        ("[params]\nmail_domain = bad_-.example.org\n", "mail_domain"),
        ("[params]\nmail_domain = a.example.org a.example.org\n", "duplicate"),
        ("[params]\nmail_domain = a.example.org\n\n[domain:b.example.org]\n", "b.example.org"),
        (
            "[params]\nmail_domain = a.example.org\nfiltermail_smtp_port = 10025\n",
            "clashes",
        ),
        ("[params]\nmail_domain = a.example.org\nmail_domain = b.example.org\n", "mail_domain"),
    ],
)
def test_invalid_files(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        read_config(write(tmp_path, text))


def test_username_lengths_must_be_ordered(tmp_path):
    text = (
        "[params]\nmail_domain = a.example.org b.example.org\n\n"
        "[domain:b.example.org]\nusername_min_length = 10\n"
    )
    with pytest.raises(ConfigError, match="b.example.org username_min_length"):
        read_config(write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        read_config(tmp_path / "absent.ini")


@pytest.mark.parametrize(
    "addr",
    [
        "x@foreign.example.com",
        "../x@chat.example.org",
        ".hidden@chat.example.org",
        "a/b@chat.example.org",
    ],
)
def test_user_dir_refuses_foreign_and_unsafe(tmp_path, addr):
    config = read_config(write(tmp_path, "[params]\nmail_domain = chat.example.org\n"))
    with pytest.raises(ValueError):
        config.user_dir(addr)


@pytest.mark.parametrize(
    "text,expected",
    [("500M", 500 * 1024**2), ("1G", 1024**3), ("1024", 1024), ("2k", 2048), ("3 MB", 3 * 1024**2)],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


def test_conftest_ini_is_valid(config, tmp_path):
    """The shared fixture's ini points every path into the test's temp dir."""
    assert config.mailboxes_dir == str(tmp_path / "mailboxes")
    assert config.nocreate_file == str(tmp_path / "nocreate")
    assert config.primary.mailboxes_path.parent.exists()


def test_tls_external_cert_and_key(tmp_path):
    # chatmail/relay's key: two paths, and tls_mode auto becomes external
    text = (
        "[params]\nmail_domain = chat.example.org _other.test\n"
        "tls_external_cert_and_key = /certs/fullchain.pem /certs/privkey.pem\n"
    )
    config = read_config(write(tmp_path, text))
    for dom in ("chat.example.org", "_other.test"):
        dc = config.domains[dom]
        assert dc.tls_mode == "external"
        assert (dc.tls_cert_path, dc.tls_key_path) == ("/certs/fullchain.pem", "/certs/privkey.pem")
    plain = read_config(write(tmp_path, "[params]\nmail_domain = chat.example.org\n"))
    assert plain.primary.tls_mode == "acme" and plain.primary.tls_cert_path is None


def test_tls_external_cert_and_key_needs_two_paths(tmp_path):
    text = "[params]\nmail_domain = chat.example.org\ntls_external_cert_and_key = /only/one.pem\n"
    with pytest.raises(ConfigError, match="tls_external_cert_and_key: expected two paths"):
        read_config(write(tmp_path, text))
