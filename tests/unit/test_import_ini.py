"""chatmail_config.from_ini (./cmsalt import-ini): an operator's chatmail.ini of
chatmail/relay becomes this tree's pillar, with the same meaning.

tests/unit/data/chatmail-relay.ini.f is chatmail/relay's own chatmail.ini
template (source and commit in its first lines)."""

import subprocess
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).parent
REPO = HERE.parents[1]
TEMPLATE = (HERE / "data" / "chatmail-relay.ini.f").read_text()

# Every key of the template set away from its default, as an operator would.
FILLED = """\
[params]
mail_domain = chat.example.org
max_user_send_per_minute = 30
max_user_send_burst_size = 5
max_mailbox_size = 1G
max_message_size = 20971520
delete_mails_after = 30
delete_large_after = 3
delete_inactive_users_after = 120
username_min_length = 6
username_max_length = 12
password_min_length = 12
max_load_1m = 2.5
min_available_memory = 500M
min_free_disk_space = 2G
max_imap_connections = 500
max_smtp_connections = 200
tls_external_cert_and_key = {cert} {key}
www_folder = {www}
disable_ipv6 = True
acme_email = admin@example.org
iroh_relay = https://iroh.example.org
mtail_address = 10.8.0.1
imap_rawlog = true
imap_compress = true
privacy_postal = Example Str. 1, Berlin
privacy_mail = privacy@example.org
privacy_pdo = Dr. Data, Berlin
privacy_supervisor = The Commissioner, Berlin
"""


def convert(cc, text):
    return yaml.safe_load(cc.from_ini(text))


def test_reference_template_converts_and_builds(cc, defaults):
    text = cc.from_ini(TEMPLATE.replace("{mail_domain}", "chat.example.org"))
    pillar = yaml.safe_load(text)
    # everything in the template is at its default: only the domain remains
    assert pillar == {"chatmail": {"domains": {"chat.example.org": {}}}}
    assert "iroh_relay" in text  # the note that no iroh relay runs here
    cm = cc.build(defaults, {}, pillar["chatmail"])
    assert cm["domains"]["chat.example.org"]["tls"]["mode"] == "acme"


def test_every_reference_key_keeps_its_meaning(cc, defaults, chatmaild_config, tmp_path):
    cert, key, www = tmp_path / "fullchain.pem", tmp_path / "privkey.pem", tmp_path / "www"
    cert.write_text("c")
    key.write_text("k")
    www.mkdir()
    ini = FILLED.format(cert=cert, key=key, www=www)
    pillar = convert(cc, ini)["chatmail"]
    cm = cc.build(defaults, {}, pillar)
    dom = cm["domains"]["chat.example.org"]
    assert dom["tls"] == {"mode": "external", "cert": str(cert), "key": str(key)}
    assert dom["www"] == {"mode": "path", "source": str(www), "root": str(www)}
    assert cm["metrics"]["listen_address"] == "10.8.0.1"
    # the daemons see the same values from the tree's chatmail.ini as from the
    # operator's own
    (tmp_path / "orig.ini").write_text(ini)
    (tmp_path / "ours.ini").write_text(cc.ini_text(cm))
    orig = chatmaild_config.read_config(tmp_path / "orig.ini")
    ours = chatmaild_config.read_config(tmp_path / "ours.ini")
    for name in chatmaild_config.PARAMS:
        theirs = getattr(orig.primary, name, None) or getattr(orig, name, None)
        mine = getattr(ours.primary, name, None) or getattr(ours, name, None)
        if name in ("turn_server", "turn_secret_file") and not theirs:
            # chatmail/relay serves TURN on the relay itself; so does this
            # tree (chatmail:turn), which names it and the host-generated
            # secret in chatmail.ini
            assert mine, name
            continue
        assert mine == theirs, name
    assert (ours.primary.tls_cert_path, ours.primary.tls_key_path) == (str(cert), str(key))


def test_what_cannot_be_carried_over_is_named(cc, defaults):
    text = cc.from_ini(
        "[params]\nmail_domain = chat.example.org\nwww_folder = www\n"
        "passdb_path = /home/vmail/passdb.sqlite\nno_such_key = 1\n"
        "passthrough_recipients = echo@chat.example.org\n"
    )
    notes = [line for line in text.splitlines() if line.startswith("# not converted:")]
    assert len(notes) == 3
    assert "www_folder = www: a folder on the deploying machine" in notes[0]
    assert "passdb_path" in notes[1] and "no_such_key" in notes[2]
    pillar = yaml.safe_load(text)["chatmail"]
    # passthrough keys (dropped by chatmail/relay, kept here) carry over as given
    assert pillar["params"] == {"passthrough_recipients": ["echo@chat.example.org"]}
    assert cc.build(defaults, {}, pillar)


def test_multi_domain_sections(cc, defaults):
    pillar = convert(
        cc,
        "[params]\nmail_domain = a.example.org _b.test\n\n"
        "[domain:_b.test]\ntls_mode = self\nmax_mailbox_size = 100M\n",
    )["chatmail"]
    assert pillar["domains"] == {
        "a.example.org": {},
        "_b.test": {"tls": {"mode": "self"}, "max_mailbox_size": "100M"},
    }
    assert cc.build(defaults, {}, pillar)


@pytest.mark.parametrize(
    "text", ["", "[other]\nx = 1\n", "[params]\nmail_domain = {mail_domain}\n"]
)
def test_not_a_chatmail_ini(cc, text):
    with pytest.raises(ValueError):
        cc.from_ini(text)


def test_cmsalt_import_ini(tmp_path):
    ini = tmp_path / "chatmail.ini"
    ini.write_text(TEMPLATE.replace("{mail_domain}", "chat.example.org"))
    proc = subprocess.run(
        [str(REPO / "cmsalt"), "import-ini", str(ini)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout) == {"chatmail": {"domains": {"chat.example.org": {}}}}
