"""Render the core states with salt-call --local (no state runs) for the
example pillar, and check that a bad pillar fails the highstate before any
state runs, naming the key.  The file templates are rendered with the merged
map and checked for content."""

import configparser
import json
import pathlib
import subprocess
import sys
import xml.etree.ElementTree as ET

import jinja2
import pytest

from tests.saltopts import masterless_minion

REPO = pathlib.Path(__file__).resolve().parents[2]
SALT_CALL = pathlib.Path(sys.executable).with_name("salt-call")
CORE_SLS = [
    "chatmail.validate",
    "chatmail.base",
    "chatmail.tls",
    "chatmail.chatmaild",
    "chatmail.nginx",
    "chatmail.turn",
    "chatmail.dns",
    "chatmail.base.clean",
    "chatmail.tls.clean",
    "chatmail.chatmaild.clean",
    "chatmail.nginx.clean",
    "chatmail.turn.clean",
    "chatmail.dns.clean",
]


@pytest.fixture(scope="module")
def salt_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("salt")
    pillar = root / "pillar"
    conf = masterless_minion(root, "render-test").parent

    def call(*args, pillar_data):
        (pillar / "chatmail.sls").write_text(json.dumps(pillar_data))
        return subprocess.run(
            [str(SALT_CALL), "--local", f"--config-dir={conf}", "--out=json", *args],
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )

    proc = call("saltutil.sync_all", pillar_data={})
    assert proc.returncode == 0, proc.stderr
    return call


@pytest.fixture(scope="module")
def example(example_pillar):
    return {"chatmail": example_pillar}


def test_core_states_render(salt_env, example):
    proc = salt_env("state.show_sls", ",".join(CORE_SLS), pillar_data=example)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    states = json.loads(proc.stdout)["local"]
    assert isinstance(states, dict), states
    ids = set(states)
    for want in [
        "chatmail-validate-pillar-test-nop",
        "chatmail-base-vmail-user-present",
        "chatmail-tls-_test.example.org-selfsigned-cmd-run",
        "chatmail-tls-chat.example.org-acme-desired-file-managed",
        "chatmail-chatmaild-doveauth-service-running",
        "chatmail-chatmaild-filtermail-incoming-service-running",
        "chatmail-chatmaild-chatmail-expire-timer-running",
        "chatmail-nginx-chat.example.org-vhost-file-managed",
        "chatmail-nginx-service-running",
        "chatmail-dns-chat.example.org-zone-fragment-managed",
        "chatmail-dns-chat.example.org-records-checked",
    ]:
        assert want in ids, want
    # every state ID follows chatmail-<component>-...
    assert all(sid.startswith("chatmail-") for sid in ids if not sid.startswith("__"))


def test_bad_pillar_fails_highstate_before_any_state(salt_env, example):
    bad = json.loads(json.dumps(example))
    bad["chatmail"]["domains"]["chat.example.org"]["max_mailbox_size"] = "lots"
    bad["chatmail"]["params"]["filtermail_smtp_port"] = 25
    proc = salt_env("state.apply", "chatmail", "test=True", pillar_data=bad)
    assert proc.returncode != 0
    result = json.loads(proc.stdout)["local"]
    # a list of render errors: no state ran at all
    assert isinstance(result, list) and result
    text = "\n".join(result)
    assert "chatmail:domains:chat.example.org:max_mailbox_size: not a size 'lots'" in text
    assert "chatmail:params:filtermail_smtp_port: port 25 clashes with the smtp service" in text
    assert "Rendering SLS 'base:chatmail.validate' failed" in text


# --- file templates -------------------------------------------------------


@pytest.fixture(scope="module")
def cmap(cc, defaults, example_pillar):
    return cc.build(defaults, {}, example_pillar)


@pytest.fixture(scope="module")
def render(cc):
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(REPO / "salt")), undefined=jinja2.StrictUndefined
    )
    env.filters["json"] = json.dumps
    salt = {"chatmail_config.ini_text": cc.ini_text}

    def render(path, **context):
        return env.get_template(path).render(salt=salt, **context)

    return render


def test_vhosts_mention_only_their_domain(render, cmap):
    for domain in cmap["domain_list"]:
        text = render(
            "chatmail/nginx/files/vhost.conf.jinja", chatmail=cmap, domain=domain, https=True
        )
        others = [d for d in cmap["domain_list"] if d != domain]
        assert all(other not in text for other in others)
        assert f"server_name {domain} mta-sts.{domain} www.{domain};" in text
        assert f"ssl_certificate {cmap['domains'][domain]['tls']['cert']};" in text
        assert "fastcgi_pass unix:/run/fcgiwrap.socket;" in text
        assert ("default_server" in text) == (domain == cmap["primary"])
    http_only = render(
        "chatmail/nginx/files/vhost.conf.jinja",
        chatmail=cmap,
        domain="chat.example.org",
        https=False,
    )
    assert "443" not in http_only and "acme-challenge" in http_only


def test_port_443_by_alpn_or_directly(render, cmap):
    """chatmail:alpn on (default): the web server listens on its loopback
    port behind the stream server, which passes imap/smtp/the rest on with
    a PROXY header; off: the web server listens on 443 itself."""
    import copy

    vhost = render(
        "chatmail/nginx/files/vhost.conf.jinja",
        chatmail=cmap,
        domain="chat.example.org",
        https=True,
    )
    assert "listen 127.0.0.1:8443 ssl http2 proxy_protocol" in vhost
    assert "real_ip_header proxy_protocol;" in vhost
    assert "listen 443" not in vhost
    stream = render("chatmail/nginx/files/stream.conf.jinja", chatmail=cmap)
    assert "ssl_preread on;" in stream and "proxy_protocol on;" in stream
    for line in (
        "~\\bimap\\b  127.0.0.1:10993;",
        "~\\bsmtp\\b  127.0.0.1:10465;",
        "default    127.0.0.1:8443;",
    ):
        assert line in stream, line
    off = copy.deepcopy(cmap)
    off["alpn"]["enabled"] = False
    vhost = render(
        "chatmail/nginx/files/vhost.conf.jinja", chatmail=off, domain="chat.example.org", https=True
    )
    assert "listen 443 ssl http2" in vhost and "proxy_protocol" not in vhost


def test_coturn_config(render, cmap):
    text = render(
        "chatmail/turn/files/turnserver.conf.jinja",
        chatmail=cmap,
        denied=["127.0.0.0-127.255.255.255"],
        allowed=[],
    )
    for line in (
        "use-auth-secret",
        f"realm={cmap['primary']}",
        "listening-port=3478",
        "tls-listening-port=5349",
        "min-port=49152",
        "max-port=65535",
        "user-quota=12",
        "total-quota=1200",
        "no-multicast-peers",
        "denied-peer-ip=127.0.0.0-127.255.255.255",
        "no-cli",
        "no-tlsv1_1",
    ):
        assert line + "\n" in text, line
    # the secret is added at coturn's start, never rendered here
    assert "static-auth-secret" not in text.replace("# ", "")


def test_pages_and_autoconfig(render, cmap):
    for domain in cmap["domain_list"]:
        d = cmap["domains"][domain]
        index = render(
            "chatmail/nginx/files/page.html.jinja", chatmail=cmap, domain=domain, page="index"
        )
        assert f"DCACCOUNT:https://{domain}/new" in index
        info = render(
            "chatmail/nginx/files/page.html.jinja", chatmail=cmap, domain=domain, page="info"
        )
        assert d["max_mailbox_size"] in info
        assert f"after {d['delete_mails_after']} days" in info
        xml = render("chatmail/nginx/files/autoconfig.xml.jinja", chatmail=cmap, domain=domain)
        root = ET.fromstring(xml.encode())
        servers = {s.get("type"): s for s in root.iter() if s.tag.endswith("Server")}
        assert servers["imap"].findtext("port") == "993"
        assert servers["smtp"].findtext("port") == "465"
        assert all(s.findtext("socketType") == "SSL" for s in servers.values())
        assert all(s.findtext("username") == "%EMAILADDRESS%" for s in servers.values())
    privacy = render(
        "chatmail/nginx/files/page.html.jinja",
        chatmail=cmap,
        domain="chat.example.org",
        page="privacy",
    )
    assert "privacy@example.org" in privacy


# systemd sandboxing every chatmaild unit has (values as in the unit file;
# SystemCallFilter: the last of its lines)
HARDENING = {
    "NoNewPrivileges": "true",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "ProtectKernelLogs": "true",
    "ProtectClock": "true",
    "ProtectHostname": "true",
    "RestrictRealtime": "true",
    "MemoryDenyWriteExecute": "true",
    "SystemCallArchitectures": "native",
    "SystemCallFilter": "~@privileged",
    "PrivateDevices": "true",
    "ProtectHome": "read-only",
}


def test_units(render, cmap):
    context = {"chatmail": cmap}
    # the units table is data in a Jinja file: evaluate it through Jinja
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(REPO / "salt")))
    module = env.get_template("chatmail/chatmaild/units.jinja").make_module(context)
    assert set(module.units) == {
        "doveauth",
        "lastlogin",
        "chatmail-metadata",
        "filtermail",
        "filtermail-incoming",
    }
    for name, unit in list(module.units.items()) + list(module.timers.items()):
        text = render("chatmail/chatmaild/files/daemon.service.jinja", chatmail=cmap, unit=unit)
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.optionxform = str
        parser.read_string(text)
        service = parser["Service"]
        assert service["User"] == "vmail"
        assert service["ProtectSystem"] == "strict"
        # only what the daemon writes is writable: filtermail reads the E2EE
        # markers and writes nothing but its counters, the report only reads
        # (and writes its counters); "-": the metrics directory may be absent
        writes = service.get("ReadWritePaths", "").split()
        assert "-/var/lib/chatmail-metrics" in writes, name
        writes.remove("-/var/lib/chatmail-metrics")
        if name in ("filtermail", "filtermail-incoming", "chatmail-fsreport"):
            assert writes == [], name
        else:
            assert "/home/vmail/mail" in writes, name
        assert ("/var/lib/chatmaild" in writes) == (name == "chatmail-metadata"), name
        for key, value in HARDENING.items():
            assert service.get(key) == value, (name, key)
        assert service["MemoryMax"].endswith("%") and int(service["TasksMax"]) >= 64
        if name in ("doveauth", "lastlogin", "chatmail-expire", "chatmail-fsreport"):
            assert service["RestrictAddressFamilies"] == "AF_UNIX"
            assert service["IPAddressDeny"] == "any"
        assert "chatmail" in service["SupplementaryGroups"].split()
        assert ("chatmail-metadata" in service["SupplementaryGroups"].split()) == (
            name == "chatmail-metadata"
        )
        assert service["ExecStart"].startswith("/usr/local/lib/chatmaild/bin/")
        # every chatmaild console script takes the config path first
        assert service["ExecStart"].split()[1] == "/etc/chatmail/chatmail.ini"
        if name in module.units:
            assert service["Restart"] == "always"
    assert module.units["doveauth"]["exec"].split()[1:] == [
        "/etc/chatmail/chatmail.ini",
        "/run/doveauth/doveauth.socket",
    ]


def test_ini_template(render, cmap, cc):
    text = render("chatmail/chatmaild/files/chatmail.ini.jinja", chatmail=cmap)
    assert text.strip() == cc.ini_text(cmap).strip()


def test_ip_domain_pages(render, cc, defaults):
    cmap = cc.build(defaults, {}, {"domains": {"192.0.2.7": {}}})
    index = render(
        "chatmail/nginx/files/page.html.jinja", chatmail=cmap, domain="192.0.2.7", page="index"
    )
    assert "DCACCOUNT" not in index and 'fetch("/new"' in index
    # a named domain whose certificate Delta Chat does not trust (self-signed
    # without "_", private CA) offers the same button instead of a QR code
    named = cc.build(
        defaults, {}, {"domains": {"chat.test": {}, "ca.example.org": {"tls": {"mode": "self"}}}}
    )
    for domain in named["domain_list"]:
        page = render(
            "chatmail/nginx/files/page.html.jinja", chatmail=named, domain=domain, page="index"
        )
        assert "DCACCOUNT" not in page and 'fetch("/new"' in page, domain
        assert "not from a public certificate authority" in page
    vhost = render(
        "chatmail/nginx/files/vhost.conf.jinja", chatmail=cmap, domain="192.0.2.7", https=True
    )
    assert "server_name 192.0.2.7;" in vhost and "default_server" in vhost
    assert "dcaccount:https://192.0.2.7/new" in vhost


@pytest.mark.parametrize("minion_id, has_pillar", [("example", True), ("other.host", False)])
def test_pillar_top_maps_minion_id_to_host_file(tmp_path, minion_id, has_pillar):
    conf = masterless_minion(tmp_path, minion_id, pillar_dir=REPO / "pillar").parent
    base = [str(SALT_CALL), "--local", f"--config-dir={conf}", "--out=json"]
    sync = subprocess.run(
        [*base, "saltutil.sync_all"], capture_output=True, stdin=subprocess.DEVNULL, timeout=300
    )
    assert sync.returncode == 0, sync.stderr
    proc = subprocess.run(
        [*base, "state.show_sls", "chatmail.validate"],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    result = json.loads(proc.stdout)["local"]
    if has_pillar:
        assert proc.returncode == 0, proc.stderr
        nop = result["chatmail-validate-pillar-test-nop"]["test"][0]["name"]
        want = "_test.example.org, chat.example.org (primary chat.example.org)"
        assert nop == f"chatmail pillar valid: {want}"
    else:  # CLI output masks pillar values: look at what the map made of them
        assert proc.returncode != 0
        assert "chatmail:domains: must name at least one chatmail domain" in "".join(result)


def test_www_folder_in_the_vhost(render, cc, defaults, tmp_path):
    cmap = cc.build(defaults, {}, {"domains": {"chat.example.org": {"www_folder": str(tmp_path)}}})
    vhost = render(
        "chatmail/nginx/files/vhost.conf.jinja",
        chatmail=cmap,
        domain="chat.example.org",
        https=True,
    )
    # the operator's host directory serves the pages; autoconfig, MTA-STS and
    # the QR code stay in the tree's web root
    assert f"root {tmp_path};" in vhost
    assert "root /var/www/chatmail/chat.example.org;" in vhost
    assert "location = /qr-chatmail-invite.svg" in vhost
    for folder in ("", "disabled", "salt://site"):
        cmap = cc.build(defaults, {}, {"domains": {"chat.example.org": {"www_folder": folder}}})
        vhost = render(
            "chatmail/nginx/files/vhost.conf.jinja",
            chatmail=cmap,
            domain="chat.example.org",
            https=True,
        )
        assert vhost.count(" root ") == 1, folder


def _args(state):
    """The arguments of a state.show_sls entry as one dict (requisites as
    lists of {module: id})."""
    [(_module, body)] = [(k, v) for k, v in state.items() if not k.startswith("__")]
    args = {}
    for item in body:
        if isinstance(item, dict):
            args.update(item)
    return args


def test_www_folder_states(salt_env, example):
    pillar = json.loads(json.dumps(example))
    domains = pillar["chatmail"]["domains"]
    domains["chat.example.org"]["www_folder"] = "salt://chatmail/nginx/files"
    domains["_test.example.org"]["www_folder"] = "disabled"
    proc = salt_env("state.show_sls", "chatmail.nginx", pillar_data=pillar)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    states = json.loads(proc.stdout)["local"]
    ids = set(states)
    assert "chatmail-nginx-chat.example.org-www-folder-recursed" in ids
    assert "chatmail-nginx-chat.example.org-index-page-file-managed" not in ids
    assert "chatmail-nginx-_test.example.org-index-page-file-managed" not in ids
    assert "chatmail-nginx-_test.example.org-autoconfig-file-managed" in ids
    # switching www_folder leaves nothing of the earlier mode behind: a
    # cleaning web-root state keeps only what the current mode manages
    # (salt's file.directory clean keeps the files of required file states,
    # those a required file.recurse copies included) and the QR code
    for domain, kept in (
        ("chat.example.org", ["www-folder-recursed", "autoconfig-file-managed"]),
        ("_test.example.org", ["autoconfig-file-managed"]),
    ):
        args = _args(states[f"chatmail-nginx-{domain}-www-cleaned"])
        assert args["name"] == f"/var/www/chatmail/{domain}" and args["clean"] is True
        assert args["exclude_pat"] == r"E@^qr-chatmail-invite\.svg$"
        required = {r["file"] for r in args["require"]}
        assert {f"chatmail-nginx-{domain}-{k}" for k in kept} | {
            f"chatmail-nginx-{domain}-mta-sts-file-managed"
        } == required, domain


def test_generated_pages_keep_their_assets(salt_env, example):
    proc = salt_env("state.show_sls", "chatmail.nginx", pillar_data=example)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    states = json.loads(proc.stdout)["local"]
    domain = "chat.example.org"
    required = {r["file"] for r in _args(states[f"chatmail-nginx-{domain}-www-cleaned"])["require"]}
    pages = {f"chatmail-nginx-{domain}-{p}-page-file-managed" for p in ("index", "info", "privacy")}
    assets = {f"chatmail-nginx-{domain}-{a}-file-managed" for a in ("chatmail.css", "qr.js")}
    assert pages | assets <= required
    for sid in assets:
        assert _args(states[sid])["source"].startswith("salt://chatmail/nginx/files/")
