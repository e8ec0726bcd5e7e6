"""chatmail_config.build: merging defaults <- os family <- pillar, and the
validation that makes a bad pillar fail the whole highstate naming the key."""

import configparser
import copy
import re
from pathlib import Path

import pytest


def build(cc, defaults, pillar, osfamily=None, **kw):
    return cc.build(defaults, osfamily or {}, pillar, **kw)


def errors_of(cc, defaults, pillar, **kw):
    with pytest.raises(cc.ChatmailConfigError) as info:
        build(cc, defaults, pillar, **kw)
    return info.value.errors


def one_domain(**values):
    return {"domains": {"chat.example.org": values}}


def test_example_pillar_builds(cc, defaults, example_pillar):
    cm = build(cc, defaults, example_pillar)
    assert cm["domain_list"] == ["_test.example.org", "chat.example.org"]
    assert cm["primary"] == "chat.example.org"
    chat, test = cm["domains"]["chat.example.org"], cm["domains"]["_test.example.org"]
    assert chat["tls"] == {
        "mode": "acme",
        "cert": "/var/lib/acme/live/chat.example.org/fullchain",
        "key": "/var/lib/acme/live/chat.example.org/privkey",
    }
    assert test["tls"] == {
        "mode": "self",
        "cert": "/etc/chatmail/tls/_test.example.org/fullchain.pem",
        "key": "/etc/chatmail/tls/_test.example.org/privkey.pem",
    }
    assert test["max_mailbox_size"] == "100M"
    assert chat["max_mailbox_size"] == "500M"
    assert chat["dkim"] == {
        "selector": "opendkim",
        "key": "/etc/dkimkeys/chat.example.org.opendkim.private",
    }
    assert chat["address_domain"] == "chat.example.org" and chat["is_ip"] is False
    assert chat["web"]["title"] == "chat.example.org"
    assert chat["mailboxes_path"] == "/home/vmail/mail/chat.example.org"


def test_primary_defaults_to_first_sorted_domain(cc, defaults):
    cm = build(cc, defaults, {"domains": {"b.example.org": {}, "a.example.org": {}}})
    assert cm["primary"] == "a.example.org"


def test_defaults_are_not_modified(cc, defaults, example_pillar):
    before = copy.deepcopy(defaults)
    pillar = copy.deepcopy(example_pillar)
    build(cc, defaults, pillar)
    assert defaults == before and pillar == example_pillar


def test_lookup_override_from_osfamily_and_pillar(cc, defaults):
    cm = build(
        cc,
        defaults,
        {"domains": {"x.test": {}}, "lookup": {"paths": {"tls_dir": "/srv/tls"}}},
        osfamily={"lookup": {"pkgs": {"unbound": ["unbound", "dns-root-data"]}}},
    )
    assert cm["lookup"]["pkgs"]["unbound"] == ["unbound", "dns-root-data"]
    assert cm["lookup"]["paths"]["tls_dir"] == "/srv/tls"
    assert cm["domains"]["x.test"]["tls"]["cert"] == "/srv/tls/x.test/fullchain.pem"


def test_domain_defaults_apply_to_every_domain(cc, defaults):
    cm = build(
        cc,
        defaults,
        {
            "domain_defaults": {"dkim": {"selector": "dkim2024"}},
            "domains": {"a.example.org": {}, "b.example.org": {"dkim": {"selector": "other"}}},
        },
    )
    assert cm["domains"]["a.example.org"]["dkim"]["selector"] == "dkim2024"
    assert cm["domains"]["b.example.org"]["dkim"]["selector"] == "other"


@pytest.mark.parametrize(
    "pillar, key",
    [
        ({"bogus": 1}, "chatmail:bogus:"),
        ({"lookup": {"paths": {"nope": "/x"}}}, "chatmail:lookup:paths:nope:"),
        ({"params": {"max_mailbox": "1G"}}, "chatmail:params:max_mailbox:"),
        ({"limits": {"foo": 1}}, "chatmail:limits:foo:"),
        ({"dns": {"chek": "off"}}, "chatmail:dns:chek:"),
    ],
)
def test_unknown_global_keys(cc, defaults, pillar, key):
    pillar = dict(pillar, **one_domain())
    errors = errors_of(cc, defaults, pillar)
    assert len(errors) == 1 and errors[0].startswith(key) and "unknown key" in errors[0]


@pytest.mark.parametrize(
    "values, key",
    [
        ({"foo": 1}, "chatmail:domains:chat.example.org:foo:"),
        ({"tls": {"mod": "self"}}, "chatmail:domains:chat.example.org:tls:mod:"),
        ({"web": {"colour": "red"}}, "chatmail:domains:chat.example.org:web:colour:"),
    ],
)
def test_unknown_domain_keys(cc, defaults, values, key):
    errors = errors_of(cc, defaults, one_domain(**values))
    assert len(errors) == 1 and errors[0].startswith(key) and "unknown key" in errors[0]


@pytest.mark.parametrize(
    "where, key, value, problem",
    [
        ("params", "max_user_send_per_minute", "sixty", "must be an integer"),
        ("params", "max_user_send_per_minute", True, "must be an integer"),
        ("params", "max_user_send_per_minute", -1, "must not be negative"),
        ("params", "max_load_1m", "lots", "must be a number"),
        ("params", "filtermail_dkim_check", "yes", "must be true or false"),
        ("params", "passthrough_senders", "a@b.c", "must be a list"),
        ("params", "passthrough_senders", ["a b"], "must not be empty or contain spaces"),
        ("params", "min_free_disk_space", "much", "not a size"),
        ("params", "filtermail_smtp_port", 70000, "not a TCP port"),
        ("params", "mailboxes_dir", "relative/path", "must be an absolute path"),
        ("params", "privacy_postal", "line1\nline2", "line break"),
        ("domain", "max_mailbox_size", "lots", "not a size 'lots'"),
        ("domain", "username_min_length", "9", "must be an integer"),
        ("domain", "turn_server", 5, "must be a string"),
        ("limits", "imap_max_userip_connections", "many", "must be an integer"),
        ("limits", "imap_max_userip_connections", 0, "must be positive"),
        ("limits", "queue_lifetime", "five days", "not a postfix time"),
        ("limits", "queue_retry", "soon", "not a postfix time"),
        ("journald", "max_retention", "forever", "not a time span"),
        ("dns", "check", "maybe", "must be one of off, warn, fail"),
        ("dns", "nameservers", ["ns1.example.org"], "not an IP address"),
        ("dns", "forwarders", "192.0.2.1", "must be a list"),
    ],
)
def test_wrong_values_name_the_key(cc, defaults, where, key, value, problem):
    if where == "domain":
        pillar = one_domain(**{key: value})
        path = f"chatmail:domains:chat.example.org:{key}"
    else:
        pillar = dict(one_domain(), **{where: {key: value}})
        path = f"chatmail:{where}:{key}"
    errors = errors_of(cc, defaults, pillar)
    assert len(errors) == 1, errors
    assert errors[0].startswith(path), errors
    assert problem in errors[0], errors


def test_size_accepts_int_and_units(cc, defaults):
    cm = build(cc, defaults, one_domain(max_mailbox_size=1048576))
    assert cm["domains"]["chat.example.org"]["max_mailbox_size"] == 1048576
    assert cc.size_bytes("500M") == 500 * 1024**2
    assert cc.size_bytes("1G") == 1024**3


def test_host_wide_param_per_domain_is_refused(cc, defaults):
    errors = errors_of(cc, defaults, one_domain(max_message_size=1000))
    assert errors == [
        "chatmail:domains:chat.example.org:max_message_size: is a host-wide setting;"
        " set it in chatmail:params"
    ]


@pytest.mark.parametrize(
    "name, problem",
    [
        ("localhost", "not a fully qualified domain name"),
        ("exa mple.org", "invalid label"),
        ("-bad.example.org", "invalid label"),
        ("a..example.org", "invalid label"),
        ("x" * 64 + ".org", "invalid label"),
    ],
)
def test_invalid_domain_names(cc, defaults, name, problem):
    errors = errors_of(cc, defaults, {"domains": {name: {}}})
    assert errors[0].startswith(f"chatmail:domains:{name}:") and problem in errors[0]


def test_duplicate_domains_case_insensitive(cc, defaults):
    errors = errors_of(cc, defaults, {"domains": {"chat.example.org": {}, "Chat.Example.ORG.": {}}})
    assert errors == [
        "chatmail:domains:Chat.Example.ORG.: duplicate domain (same as 'chat.example.org')"
    ]


def test_domain_names_are_normalised(cc, defaults):
    cm = build(cc, defaults, {"domains": {"Chat.Example.ORG": {}}})
    assert cm["domain_list"] == ["chat.example.org"]


@pytest.mark.parametrize("pillar", [{}, {"domains": {}}, {"domains": None}])
def test_no_domain(cc, defaults, pillar):
    errors = errors_of(cc, defaults, pillar)
    assert errors == ["chatmail:domains: must name at least one chatmail domain"]


def test_domain_value_must_be_mapping(cc, defaults):
    errors = errors_of(cc, defaults, {"domains": {"chat.example.org": "yes"}})
    assert errors == ["chatmail:domains:chat.example.org: must be a mapping, not a string"]


def test_empty_domain_value_is_fine(cc, defaults):
    cm = build(cc, defaults, {"domains": {"chat.example.org": None}})
    assert cm["domains"]["chat.example.org"]["tls"]["mode"] == "acme"


def test_ip_domain(cc, defaults):
    cm = build(cc, defaults, {"domains": {"[192.0.2.7]": {}}})
    dom = cm["domains"]["192.0.2.7"]
    assert dom["is_ip"] is True
    assert dom["address_domain"] == "[192.0.2.7]"
    assert dom["tls"]["mode"] == "self"
    assert dom["dns"]["ipv4"] == "192.0.2.7"


def test_ip_domain_cannot_use_acme(cc, defaults):
    errors = errors_of(cc, defaults, {"domains": {"192.0.2.7": {"tls": {"mode": "acme"}}}})
    assert errors == [
        "chatmail:domains:192.0.2.7:tls:mode: acme is not possible for an IP address domain"
    ]


@pytest.mark.parametrize(
    "domain, mode",
    [("_x.example.org", "self"), ("relay.test", "self"), ("chat.example.org", "acme")],
)
def test_auto_tls_mode(cc, defaults, domain, mode):
    cm = build(cc, defaults, {"domains": {domain: {}}})
    assert cm["domains"][domain]["tls"]["mode"] == mode


def test_bad_tls_mode(cc, defaults):
    errors = errors_of(cc, defaults, one_domain(tls={"mode": "letsencrypt"}))
    assert errors[0].startswith("chatmail:domains:chat.example.org:tls:mode: must be one of")


@pytest.mark.parametrize(
    "port, clash",
    [(25, "smtp service"), (443, "https service"), (993, "imaps service"), (10081, "clashes with")],
)
def test_port_clashes(cc, defaults, port, clash):
    errors = errors_of(cc, defaults, dict(one_domain(), params={"filtermail_smtp_port": port}))
    assert len(errors) == 1
    assert errors[0].startswith("chatmail:params:")
    assert f"port {port}" in errors[0] and clash in errors[0]


def test_external_tls_needs_files(cc, defaults, tmp_path):
    tls = {"mode": "external", "cert": str(tmp_path / "cert.pem"), "key": str(tmp_path / "k.pem")}
    errors = errors_of(cc, defaults, one_domain(tls=tls))
    where = "chatmail:domains:chat.example.org"
    assert errors == [
        f"{where}:tls:cert: file does not exist on the host: {tls['cert']}",
        f"{where}:tls:key: file does not exist on the host: {tls['key']}",
    ]
    (tmp_path / "cert.pem").write_text("x")
    (tmp_path / "k.pem").write_text("x")
    cm = build(cc, defaults, one_domain(tls=tls))
    assert cm["domains"]["chat.example.org"]["tls"] == tls
    # rendering for another machine may skip the existence check
    tls["cert"] = "/nonexistent/cert.pem"
    assert build(cc, defaults, one_domain(tls=tls), check_files=False)


def test_external_tls_without_paths(cc, defaults):
    errors = errors_of(cc, defaults, one_domain(tls={"mode": "external"}))
    assert errors == [
        "chatmail:domains:chat.example.org:tls:cert: external TLS mode needs a file path",
        "chatmail:domains:chat.example.org:tls:key: external TLS mode needs a file path",
    ]


def test_username_lengths(cc, defaults):
    errors = errors_of(cc, defaults, one_domain(username_min_length=10))
    assert errors == [
        "chatmail:domains:chat.example.org:username_min_length: 10 is greater than"
        " username_max_length 9"
    ]
    errors = errors_of(cc, defaults, dict(one_domain(), params={"username_max_length": 5}))
    assert "username_min_length: 9 is greater than username_max_length 5" in errors[0]


def test_primary_must_be_a_domain(cc, defaults):
    errors = errors_of(cc, defaults, dict(one_domain(), primary="other.example.org"))
    assert errors == ["chatmail:primary: 'other.example.org' is not in chatmail:domains"]


def test_bad_dns_addresses_and_selector(cc, defaults):
    errors = errors_of(
        cc,
        defaults,
        one_domain(dns={"ipv4": "2001:db8::1", "ipv6": "nope"}, dkim={"selector": "a b"}),
    )
    assert sorted(e.split(":")[3] + ":" + e.split(":")[4] for e in errors) == [
        "dkim:selector",
        "dns:ipv4",
        "dns:ipv6",
    ]


def test_all_problems_reported_at_once(cc, defaults):
    pillar = {
        "bogus": True,
        "params": {"max_load_1m": "x", "filtermail_smtp_port": 25},
        "domains": {"chat.example.org": {"max_mailbox_size": "lots"}, "CHAT.example.org": {}},
    }
    with pytest.raises(cc.ChatmailConfigError) as info:
        build(cc, defaults, pillar)
    assert len(info.value.errors) == 5
    text = str(info.value)
    assert text.startswith("invalid chatmail pillar:\n")
    assert "chatmail:domains:chat.example.org:max_mailbox_size: not a size 'lots'" in text


def test_error_is_a_salt_command_execution_error(cc):
    from salt.exceptions import CommandExecutionError

    assert issubclass(cc.ChatmailConfigError, CommandExecutionError)


def test_one_schema_for_pillar_and_daemons(cc, chatmaild_config, defaults):
    """The merged map's params are exactly the schema's pillar keys at their
    defaults, and the daemons read each of those defaults as the same value."""
    params = chatmaild_config.PARAMS
    merged = cc.build(defaults, {}, {"domains": {"a.test": {}}})
    assert set(merged["params"]) == {n for n, p in params.items() if p.pillar}
    assert merged["per_domain_params"] == sorted(
        n for n, p in params.items() if p.pillar and p.per_domain
    )
    for key, value in merged["params"].items():
        assert chatmaild_config._convert(
            params[key], cc._ini_value(value), "test"
        ) == chatmaild_config._convert(params[key], params[key].default, "test"), key


def test_a_new_key_is_one_edit(cc, chatmaild_config, defaults, tmp_path):
    """A key added to params.json alone is accepted by the pillar validation
    (globally and per domain), written to chatmail.ini, read by the daemons
    and listed in the generated docs."""
    import json

    from tests import paramdocs

    entries = paramdocs.schema()
    entries.append(
        {"name": "brand_new_limit", "default": 7, "kind": "int", "per_domain": True,
         "doc": "a key added for this test"}
    )  # fmt: skip
    schema_file = tmp_path / "params.json"
    schema_file.write_text(json.dumps({"params": entries}))
    pillar = {"params": {"brand_new_limit": 8}, "domains": {"a.test": {"brand_new_limit": 9}}}
    merged = cc.build(defaults, {}, pillar, schema=entries)
    assert merged["params"]["brand_new_limit"] == 8
    assert merged["domains"]["a.test"]["brand_new_limit"] == 9
    with pytest.raises(cc.ChatmailConfigError, match="brand_new_limit: must be an integer"):
        cc.build(defaults, {}, {"params": {"brand_new_limit": "x"}, "domains": {"a.test": {}}},
                 schema=entries)  # fmt: skip
    ini = tmp_path / "chatmail.ini"
    ini.write_text(cc.ini_text(merged))
    assert "brand_new_limit = 8" in ini.read_text()
    params = chatmaild_config.load_schema(schema_file)
    old = chatmaild_config.PARAMS
    chatmaild_config.PARAMS = params
    try:
        config = chatmaild_config.read_config(ini)
    finally:
        chatmaild_config.PARAMS = old
    assert config.brand_new_limit == 8
    assert config.domains["a.test"].brand_new_limit == 9
    assert "brand_new_limit" in paramdocs.doc_table(entries)
    assert "    brand_new_limit: 7" in paramdocs.pillar_block(entries)


def test_reference_keys_outside_the_tree_are_named(cc, defaults):
    """A chatmail.ini key this tree does not take from the pillar says so."""
    with pytest.raises(cc.ChatmailConfigError) as err:
        cc.build(defaults, {}, {"params": {"tls_mode": "self"}, "domains": {"a.test": {}}})
    assert "chatmail:params:tls_mode: not set from the pillar" in str(err.value)


def test_ini_is_read_back_by_chatmaild(cc, chatmaild_config, defaults, example_pillar, tmp_path):
    pillar = copy.deepcopy(example_pillar)
    pillar["params"]["passthrough_senders"] = ["bot@chat.example.org"]
    pillar["params"]["max_load_1m"] = 2.5
    pillar["domains"]["chat.example.org"]["turn_server"] = "turn.example.org"
    cm = build(cc, defaults, pillar)
    text = cc.ini_text(cm)
    ini = tmp_path / "chatmail.ini"
    ini.write_text(text)
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.read_string(text)
    assert parser["params"]["mail_domain"] == "chat.example.org _test.example.org"

    config = chatmaild_config.read_config(ini)
    assert config.mail_domains == ["chat.example.org", "_test.example.org"]
    assert config.max_load_1m == 2.5
    assert config.min_free_disk_space == 1024**3
    chat = config.for_domain("chat.example.org")
    test = config.for_domain("_test.example.org")
    assert chat.tls_mode == "acme" and test.tls_mode == "self"
    assert chat.max_mailbox_size == 500 * 1024**2
    assert test.max_mailbox_size == 100 * 1024**2 and test.max_mailbox_size_raw == "100M"
    assert test.delete_mails_after == 10 and chat.delete_mails_after == 20
    # a domain without turn_server gets the relay's own TURN server (chatmail:turn)
    assert chat.turn_server == "turn.example.org" and test.turn_server == "_test.example.org"
    assert chat.privacy_mail == "privacy@example.org"
    assert chat.acme_email == "admin@example.org"
    assert chat.passthrough_senders == ["bot@chat.example.org"]
    # no passthrough recipient unless the pillar names one (no echo@ default)
    assert test.passthrough_recipients == []
    # a domain section only lists what differs from [params]
    assert set(parser["domain:_test.example.org"]) == {
        "tls_mode",
        "max_mailbox_size",
        "delete_mails_after",
        # the relay's own TURN server and its generated secret (chatmail:turn)
        "turn_server",
        "turn_secret_file",
    }


def test_ini_ip_domain(cc, chatmaild_config, defaults, tmp_path):
    cm = build(cc, defaults, {"domains": {"192.0.2.7": {}}})
    ini = tmp_path / "chatmail.ini"
    ini.write_text(cc.ini_text(cm))
    config = chatmaild_config.read_config(ini)
    dom = config.for_address("abc@[192.0.2.7]")
    assert dom.is_ip and dom.tls_mode == "self"


# --- chatmail:acme ------------------------------------------------------


def test_acme_directory_defaults_to_letsencrypt_production(cc, defaults):
    cm = build(cc, defaults, one_domain())
    assert cm["acme"]["directory"] == "https://acme-v02.api.letsencrypt.org/directory"
    assert all(url.startswith("https://") for url in cm["acme"]["terms_agreed"])


@pytest.mark.parametrize(
    "given, url",
    [
        ("letsencrypt-staging", "https://acme-staging-v02.api.letsencrypt.org/directory"),
        ("https://172.31.77.1:14000/dir", "https://172.31.77.1:14000/dir"),
        ("https://ca.example.net/acme/directory", "https://ca.example.net/acme/directory"),
    ],
)
def test_acme_directory_short_names_and_urls(cc, defaults, given, url):
    pillar = dict(one_domain(), acme={"directory": given, "terms_agreed": []})
    cm = build(cc, defaults, pillar)
    assert cm["acme"]["directory"] == url and cm["acme"]["terms_agreed"] == []


@pytest.mark.parametrize(
    "url, directory_id",
    [
        # as acmetool names them under /var/lib/acme/accounts
        (
            "https://acme-v02.api.letsencrypt.org/directory",
            "acme-v02.api.letsencrypt.org%2fdirectory",
        ),
        ("https://127.0.0.1:37587/directory", "127.0.0.1%3a37587%2fdirectory"),
        ("https://ca.example.net/", "ca.example.net"),
        ("https://ca.example.net/a~b?x=1", "ca.example.net%2fa~b%3fx%3d1"),
    ],
)
def test_acme_directory_id(cc, defaults, url, directory_id):
    cm = build(cc, defaults, dict(one_domain(), acme={"directory": url}))
    assert cm["acme"]["directory_id"] == directory_id


@pytest.mark.parametrize(
    "given",
    ["http://ca.example.net/directory", "staging", "", "https://ca.example.net/a b", "ftp://x"],
)
def test_acme_directory_must_be_https(cc, defaults, given):
    errors = errors_of(cc, defaults, dict(one_domain(), acme={"directory": given}))
    assert len(errors) == 1
    assert errors[0].startswith("chatmail:acme:directory: must be an https:// URL or one of ")
    assert repr(given) in errors[0]


def test_acme_terms_agreed_are_https_urls(cc, defaults):
    pillar = dict(one_domain(), acme={"terms_agreed": ["https://ca.example.net/tos", 'http://"x']})
    errors = errors_of(cc, defaults, pillar)
    assert errors == ["chatmail:acme:terms_agreed:1: must be an https:// URL, not 'http://\"x'"]
    errors = errors_of(cc, defaults, dict(one_domain(), acme={"terms_agreed": "yes"}))
    assert errors == ["chatmail:acme:terms_agreed: must be a list, not a string 'yes'"]


def test_acme_unknown_key_is_named(cc, defaults):
    errors = errors_of(cc, defaults, dict(one_domain(), acme={"staging": True}))
    assert errors == ["chatmail:acme:staging: unknown key (known keys: directory, terms_agreed)"]


SHA = "ab" * 32


@pytest.mark.parametrize(
    "dovecot, kind",
    [
        ({}, "salt"),
        ({"archive": "salt://elsewhere/dovecot.tar"}, "salt"),
        ({"archive": "/srv/chatmail-dovecot.tar"}, "path"),
        ({"archive": "/srv/chatmail-dovecot.tar", "sha256": SHA}, "path"),
        ({"archive": "https://example.org/d/chatmail-dovecot.tar", "sha256": SHA.upper()}, "url"),
        ({"source": "debian", "archive": "nonsense"}, ""),
    ],
)
def test_dovecot_sources(cc, defaults, dovecot, kind):
    cm = build(cc, defaults, {**one_domain(), "dovecot": dovecot})
    assert cm["dovecot"]["archive_kind"] == kind
    assert cm["dovecot"]["sha256"] in ("", SHA)


@pytest.mark.parametrize(
    "dovecot, key, problem",
    [
        ({"source": "stock"}, "source", "must be one of patched, debian"),
        ({"archive": "chatmail-dovecot.tar"}, "archive", "must be salt://<path>"),
        ({"archive": "ftp://example.org/x.tar", "sha256": SHA}, "archive", "must be salt://"),
        ({"archive": "salt://"}, "archive", "must be salt://"),
        ({"archive": "https://example.org/x.tar"}, "sha256", "required for an archive"),
        ({"archive": "/x.tar", "sha256": "abc"}, "sha256", "not a sha256"),
        ({"unknown": 1}, "unknown", "unknown key"),
    ],
)
def test_bad_dovecot_pillar_names_the_key(cc, defaults, dovecot, key, problem):
    errors = errors_of(cc, defaults, {**one_domain(), "dovecot": dovecot})
    assert any(e.startswith(f"chatmail:dovecot:{key}: ") and problem in e for e in errors), errors


def test_hibernate_timeout_below_the_idle_keepalive(cc, defaults):
    assert build(cc, defaults, {**one_domain(), "imap": {"hibernate_timeout": 119}})
    errors = errors_of(cc, defaults, {**one_domain(), "imap": {"hibernate_timeout": 120}})
    assert errors == [
        "chatmail:imap:hibernate_timeout: must be below 120 (Dovecot's IDLE keepalive restarts"
        " the wait every 120 s, so sessions would never hibernate): 120"
    ]


# --- chatmail/relay's chatmail.ini keys ---------------------------------------


def test_tls_external_cert_and_key_is_tls_mode_external(cc, defaults, tmp_path):
    cert, key = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    cert.write_text("c")
    key.write_text("k")
    both = f"{cert} {key}"
    for pillar in (
        {"params": {"tls_external_cert_and_key": both}, "domains": {"chat.example.org": {}}},
        one_domain(tls_external_cert_and_key=both),
        one_domain(tls_external_cert_and_key=both, tls={"mode": "external"}),
    ):
        cm = build(cc, defaults, pillar)
        dom = cm["domains"]["chat.example.org"]
        assert dom["tls"] == {"mode": "external", "cert": str(cert), "key": str(key)}
        # the daemons read it back from chatmail.ini as chatmail/relay writes it
        parser = configparser.ConfigParser()
        parser.read_string(cc.ini_text(cm))
        section = {**parser["params"], **parser["domain:chat.example.org"]}
        assert section["tls_external_cert_and_key"] == both
        assert section["tls_mode"] == "external"
    # tls:mode external with cert/key writes the same line
    cm = build(
        cc, defaults, one_domain(tls={"mode": "external", "cert": str(cert), "key": str(key)})
    )
    assert cm["domains"]["chat.example.org"]["tls_external_cert_and_key"] == both


def test_tls_external_cert_and_key_errors(cc, defaults, tmp_path):
    where = "chatmail:domains:chat.example.org:tls_external_cert_and_key"
    errors = errors_of(cc, defaults, one_domain(tls_external_cert_and_key="/one.pem"))
    assert errors == [f"{where}: expected two paths 'CERT KEY', not '/one.pem'"]
    errors = errors_of(cc, defaults, one_domain(tls_external_cert_and_key="/c.pem /k.pem"))
    assert errors == [
        f"{where}: file does not exist on the host: /c.pem",
        f"{where}: file does not exist on the host: /k.pem",
    ]
    errors = errors_of(
        cc, defaults, one_domain(tls_external_cert_and_key="/c.pem /k.pem", tls={"mode": "self"})
    )
    assert errors == [f"{where}: names external certificate files, but tls:mode is self"]
    errors = errors_of(
        cc,
        defaults,
        {"params": {"tls_external_cert_and_key": "c.pem k.pem"}, "domains": {"x.test": {}}},
        check_files=False,
    )
    assert errors == [
        "chatmail:params:tls_external_cert_and_key: must be an absolute path: 'c.pem'",
        "chatmail:params:tls_external_cert_and_key: must be an absolute path: 'k.pem'",
    ]


def test_www_folder(cc, defaults, tmp_path):
    root = "/var/www/chatmail/chat.example.org"
    cm = build(cc, defaults, one_domain())
    assert cm["domains"]["chat.example.org"]["www"] == {
        "mode": "generated",
        "source": "",
        "root": root,
    }
    cm = build(cc, defaults, one_domain(www_folder="disabled"))
    assert cm["domains"]["chat.example.org"]["www"]["mode"] == "disabled"
    cm = build(cc, defaults, {"params": {"www_folder": "salt://site/"}, **one_domain()})
    assert cm["domains"]["chat.example.org"]["www"] == {
        "mode": "salt",
        "source": "salt://site",
        "root": root,
    }
    cm = build(cc, defaults, one_domain(www_folder=str(tmp_path)))
    www = cm["domains"]["chat.example.org"]["www"]
    assert www == {"mode": "path", "source": str(tmp_path), "root": str(tmp_path)}
    where = "chatmail:domains:chat.example.org:www_folder"
    assert errors_of(cc, defaults, one_domain(www_folder="www")) == [
        f"{where}: must be 'disabled', a salt:// directory or an absolute path on the host: 'www'"
    ]
    assert errors_of(cc, defaults, one_domain(www_folder="/no/such/dir")) == [
        f"{where}: directory does not exist on the host: /no/such/dir"
    ]
    assert build(cc, defaults, one_domain(www_folder="/no/such/dir"), check_files=False)


def test_mtail_address_is_the_metrics_listen_address(cc, defaults):
    cm = build(cc, defaults, one_domain())
    assert cm["metrics"]["listen_address"] == "127.0.0.1"
    cm = build(cc, defaults, {"params": {"mtail_address": "10.8.0.1"}, **one_domain()})
    assert cm["metrics"]["listen_address"] == "10.8.0.1"
    assert cm["metrics"]["ports"]["mtail"] == 3903
    same = {"params": {"mtail_address": "10.8.0.1"}, "metrics": {"listen_address": "10.8.0.1"}}
    assert build(cc, defaults, {**same, **one_domain()})
    errors = errors_of(
        cc,
        defaults,
        {"params": {"mtail_address": "10.8.0.1"}, "metrics": {"listen_address": "10.8.0.2"}}
        | one_domain(),
    )
    assert errors == [
        "chatmail:params:mtail_address: differs from chatmail:metrics:listen_address"
        " '10.8.0.2'; set one of them"
    ]
    errors = errors_of(cc, defaults, {"params": {"mtail_address": "vpn0"}, **one_domain()})
    assert errors == ["chatmail:params:mtail_address: not an IP address: 'vpn0'"]


def test_iroh_relay(cc, defaults):
    url = "https://iroh.example.org"
    cm = build(cc, defaults, one_domain(iroh_relay=url))
    assert cm["domains"]["chat.example.org"]["iroh_relay"] == url
    parser = configparser.ConfigParser()
    parser.read_string(cc.ini_text(cm))
    assert parser["domain:chat.example.org"]["iroh_relay"] == url
    errors = errors_of(cc, defaults, {"params": {"iroh_relay": "iroh.example.org"}, **one_domain()})
    assert errors == ["chatmail:params:iroh_relay: not an http(s) URL: 'iroh.example.org'"]


def test_every_reference_ini_key_is_a_pillar_param(cc, defaults):
    # the keys, set or commented out, of chatmail/relay's chatmail.ini template
    text = (Path(__file__).parent / "data" / "chatmail-relay.ini.f").read_text()
    keys = set(re.findall(r"^#? ?([a-z0-9_]+) ?=", text, re.M))
    assert {"mail_domain", "www_folder", "iroh_relay", "tls_external_cert_and_key"} <= keys
    cm = build(cc, defaults, one_domain())
    assert sorted(keys - set(cm["params"]) - {"mail_domain"}) == []
