"""Render the mail states (postfix, dovecot, opendkim) exactly as Salt does --
state.show_sls with the merged map, then every file.managed source through
Salt's jinja renderer -- and check the results: structure for several
domains per host, and, where the tools are installed, that postfix
(postconf) and dovecot (doveconf) accept them without a warning."""

import json
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import yaml

from tests.saltopts import masterless_minion

REPO = pathlib.Path(__file__).resolve().parents[2]
MAIL_SLS = ["chatmail.opendkim", "chatmail.postfix", "chatmail.dovecot"]
CLEAN_SLS = ["chatmail.opendkim.clean", "chatmail.postfix.clean", "chatmail.dovecot.clean"]

# Runs in a child interpreter (Salt's loader and logging stay out of pytest):
# prints {"states": {...}, "files": {dest: rendered text}}.
RENDER = textwrap.dedent(
    """
    import json, sys
    import salt.client, salt.config
    opts = salt.config.minion_config(sys.argv[1])
    caller = salt.client.Caller(mopts=opts)
    caller.cmd("saltutil.sync_all")
    out = {"states": {}, "files": {}}
    for sls in sys.argv[2].split(","):
        states = caller.cmd("state.show_sls", sls)
        if not isinstance(states, dict):
            print(json.dumps({"error": states}))
            sys.exit(1)
        out["states"].update(states)
    for sid, state in out["states"].items():
        args = {}
        for arg in state.get("file", []):
            if isinstance(arg, dict):
                args.update(arg)
        if "source" not in args or args.get("template") != "jinja":
            continue  # not a template, e.g. the patched Dovecot's archive
        src = caller.cmd("cp.get_file_str", args["source"])
        text = caller.cmd(
            "file.apply_template_on_contents",
            src, "jinja", args.get("context", {}), {}, "base",
        )
        out["files"][args["name"]] = text
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """A throwaway key and self-signed certificate (doveconf reads both)."""
    d = tmp_path_factory.mktemp("certs")
    key, cert = d / "privkey.pem", d / "fullchain.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=test", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return {"key": str(key), "cert": str(cert)}


@pytest.fixture(scope="module")
def render(tmp_path_factory):
    def _render(pillar, sls=MAIL_SLS):
        root = tmp_path_factory.mktemp("mailsalt")
        conf = masterless_minion(root, "mail-render-test", pillar)
        proc = subprocess.run(
            [sys.executable, "-c", RENDER, str(conf), ",".join(sls)],
            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    return _render


@pytest.fixture(scope="module")
def example(render, certs):
    """pillar.example (two named domains), TLS of both pointed at real files."""
    pillar = yaml.safe_load((REPO / "pillar.example").read_text())["chatmail"]
    for dom in pillar["domains"].values():
        dom["tls"] = {"mode": "external", **certs}
    return render(pillar)


@pytest.fixture(scope="module")
def mixed(render, certs):
    """An IP-only domain beside a named one, the IP domain sorting first."""
    pillar = {
        "primary": "chat.example.net",
        "domains": {
            "192.0.2.7": {},
            "chat.example.net": {
                "tls": {"mode": "external", **certs},
                "max_mailbox_size": "2G",
                "dkim": {"selector": "s2026"},
            },
        },
        "params": {"disable_ipv6": True},
        "limits": {
            "smtp_connection_rate_per_minute": 17,
            "queue_lifetime": "3d",
            "queue_retry": "20s",
            "imap_login_rate_per_minute": 30,
        },
        "imap": {"hibernate_timeout": 0},
    }
    return render(pillar)


def write_tree(files, root):
    for dest, text in files.items():
        path = root / dest.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def cf(text):
    """main.cf as a dict (continuation lines joined)."""
    out = {}
    for line in re.sub(r"\n[ \t]+", " ", text).splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def master_services(text):
    """master.cf as {service name: [fields..., -o options...]}."""
    out = {}
    for line in re.sub(r"\n[ \t]+", " ", text).splitlines():
        if line.strip() and not line.startswith("#"):
            fields = line.split()
            out[f"{fields[0]}/{fields[1]}"] = fields
    return out


def test_state_ids_and_requisites(example):
    states = example["states"]
    for sid in [
        "chatmail-opendkim-config-key-chat.example.org-present",
        "chatmail-opendkim-config-key-_test.example.org-present",
        "chatmail-opendkim-service-running",
        "chatmail-postfix-config-main-cf-file-managed",
        "chatmail-postfix-config-tls-server-sni-cmd-run",
        "chatmail-postfix-service-config-checked",
        "chatmail-postfix-service-running",
        "chatmail-postfix-service-enabled",
        "chatmail-postfix-package-exim4-cmd-run",
        "chatmail-dovecot-config-file-managed",
        "chatmail-dovecot-service-running",
    ]:
        assert sid in states, sid
    assert all(s.startswith("chatmail-") for s in states if not s.startswith("__"))
    key = states["chatmail-opendkim-config-key-chat.example.org-present"]["chatmail_dkim"]
    assert {"selector": "opendkim"} in key and {"keydir": "/etc/dkimkeys"} in key
    # a restart only follows a passed check, and only when files changed
    running = states["chatmail-postfix-service-running"]["service"]
    require = next(a["require"] for a in running if isinstance(a, dict) and "require" in a)
    assert {"cmd": "chatmail-postfix-service-config-checked"} in require
    check = states["chatmail-postfix-service-config-checked"]["cmd"]
    assert any(isinstance(a, dict) and "onchanges" in a for a in check)
    dove = states["chatmail-dovecot-config-file-managed"]["file"]
    assert {"check_cmd": "doveconf -n -c"} in dove


def test_clean_states_render(render, certs):
    pillar = {"domains": {"chat.example.org": {"tls": {"mode": "external", **certs}}}}
    states = render(pillar, sls=CLEAN_SLS)["states"]
    assert "chatmail-postfix-clean-service-dead" in states
    assert "chatmail-dovecot-clean-service-dead" in states
    assert "chatmail-opendkim-clean-service-dead" in states
    absent = json.dumps(states["chatmail-opendkim-clean-config-file-absent"])
    assert "/etc/dkimkeys" not in absent  # DKIM keys survive a clean


def test_postfix_unit_tracks_the_master(example):
    """Debian's postfix@ unit has GuessMainPID=no and no PIDFile: systemd did
    not know the master, so Restart=always never fired after a kill -9 of it
    (tests/faults)."""
    state = example["states"]["chatmail-postfix-config-systemd-dropin-file-managed"]
    args = {k: v for arg in state["file"] if isinstance(arg, dict) for k, v in arg.items()}
    lines = args["contents"].splitlines()
    assert "PIDFile=/var/spool/postfix/pid/master.pid" in lines
    assert "Restart=always" in lines


def test_postfix_main_cf(example):
    main = cf(example["files"]["/etc/postfix/main.cf"])
    assert main["virtual_mailbox_domains"].split() == ["_test.example.org", "chat.example.org"]
    assert main["virtual_transport"] == "lmtp:unix:private/dovecot-lmtp"
    assert main["virtual_mailbox_maps"] == ""  # unknown users: dovecot's userdb, VRFY says 252
    assert main["disable_vrfy_command"] == "no"
    assert main["myhostname"] == "chat.example.org"
    assert main["message_size_limit"] == "31457280"
    assert main["maximal_queue_lifetime"] == "5d"
    # postfix's own retry schedule unless limits:queue_retry says otherwise
    assert main["minimal_backoff_time"] == main["queue_run_delay"] == "300s"
    # no notices to a postmaster that has no mailbox (they bounced: tests/faults)
    assert main["notify_classes"] == ""
    assert main["smtpd_client_connection_rate_limit"] == "60"
    assert main["anvil_rate_time_unit"] == "60s"
    assert main["smtp_tls_security_level"] == "verify"
    # several messages per TLS connection to another relay (tlsproxy in master.cf)
    assert main["smtp_tls_connection_reuse"] == "yes"
    assert main["smtpd_sender_login_maps"] == "regexp:/etc/postfix/login_map"
    assert main["tls_server_sni_maps"] == "hash:/etc/postfix/tls_server_sni"
    assert main["non_smtpd_milters"] == "unix:opendkim/opendkim.sock"
    assert main["lmtp_header_checks"] == "regexp:/etc/postfix/lmtp_header_cleanup"
    assert "proxy_interfaces" not in main


def test_postfix_master_cf(example):
    svc = master_services(example["files"]["/etc/postfix/master.cf"])
    smtp = " ".join(svc["smtp/inet"])
    assert "smtpd_tls_security_level=encrypt" in smtp
    assert "smtpd_proxy_filter=127.0.0.1:10081" in smtp
    for name in ("submission/inet", "submissions/inet"):
        opts = " ".join(svc[name])
        assert "smtpd_tls_mandatory_protocols=>=TLSv1.3" in opts
        assert "smtpd_sasl_path=private/auth" in opts
        assert "smtpd_proxy_filter=127.0.0.1:10080" in opts
        assert "smtpd_sender_restrictions=$mua_sender_restrictions" in opts
    assert "smtpd_tls_wrappermode=yes" in svc["submissions/inet"]
    # port 443 with ALPN "smtp" (chatmail:alpn): nginx's stream server hands
    # the connection to a loopback submissions service with a PROXY header;
    # it is a submission port like 465 (TLS, SASL, filtermail), not a way in
    alpn = " ".join(svc["127.0.0.1:10465/inet"])
    for opt in (
        "smtpd_upstream_proxy_protocol=haproxy",
        "smtpd_tls_wrappermode=yes",
        "smtpd_tls_mandatory_protocols=>=TLSv1.3",
        "smtpd_sasl_auth_enable=yes",
        "smtpd_relay_restrictions=permit_sasl_authenticated,reject",
        "smtpd_sender_restrictions=$mua_sender_restrictions",
        "smtpd_proxy_filter=127.0.0.1:10080",
    ):
        assert opt in alpn, opt
    # filtermail reinjects through UNIX sockets in public/ (group postdrop),
    # never a TCP port any local process could use
    loopback = [name for name in svc if name.endswith("/inet") and name.startswith("127.")]
    assert loopback == ["127.0.0.1:10465/inet"]
    out = " ".join(svc["reinject/unix"])
    assert svc["reinject/unix"][2] == "n"  # public/
    assert "smtpd_milters=unix:opendkim/opendkim.sock" in out
    assert "milter_macro_daemon_name=ORIGINATING" in out
    assert "cleanup_service_name=authclean" in out
    inc = " ".join(svc["reinject_incoming/unix"])
    assert svc["reinject_incoming/unix"][2] == "n"
    assert "opendkim" not in inc
    assert "header_checks=regexp:/etc/postfix/submission_header_cleanup" in svc["authclean/unix"]


def test_qmgr_wakes_up_every_10_seconds(example):
    """Mail no trigger announced (a postfix reload restarted the queue manager
    during its delivery, e.g. a certificate renewal) is picked up at qmgr's
    next wake-up: 10 s, not Debian's 300 s (docs/faults.md)."""
    svc = master_services(example["files"]["/etc/postfix/master.cf"])
    # service type private unpriv chroot wakeup maxproc command
    assert svc["qmgr/unix"][:8] == ["qmgr", "unix", "n", "-", "n", "10", "1", "qmgr"]
    assert svc["pickup/unix"][5] == "60"


def test_tlsproxy_for_reused_smtp_connections(example):
    """smtp_tls_connection_reuse needs the tlsproxy service."""
    svc = master_services(example["files"]["/etc/postfix/master.cf"])
    assert svc["tlsproxy/unix"][:8] == ["tlsproxy", "unix", "-", "-", "n", "-", "0", "tlsproxy"]


# RCPT TO lines on port 25: only the plain form of an account passes the
# command filter unchanged; everything else becomes "RCPT TO:<@>" (501 5.1.3).
RCPT_PASSES = [
    "RCPT TO:<victim1234@chat.example.org>",
    "RCPT TO:<VICTIM1234@CHAT.EXAMPLE.ORG>",
    "RCPT TO:<a.b-c_d@_test.example.org>",
    "RCPT TO:<victim1234@chat.example.org> NOTIFY=NEVER ORCPT=rfc822;x@y.z",
    "rcpt to:<victim1234@chat.example.org>",
    "RCPT TO:<victim1234@[192.0.2.7]>",
    "MAIL FROM:<anyone+tag@example.net.>",  # only RCPT is filtered
]
RCPT_REFUSED = [
    "RCPT TO:<victim1234+x@chat.example.org>",
    "RCPT TO:<victim1234@chat.example.org.>",
    'RCPT TO:<"victim1234"@chat.example.org>',
    "RCPT TO:<@chat.example.org:victim1234@chat.example.org>",
    "RCPT TO:<victim1234%chat.example.org@chat.example.org>",
    "RCPT TO:<chat.example.org!victim1234@chat.example.org>",
    "RCPT TO:victim1234@chat.example.org",
    "RCPT TO:<victim1234@chat>",
    "RCPT TO:<victim1234@chat.example..org>",
    "RCPT TO:<victim1234@chat.example.org>>",
    "RCPT TO:<victim1234@chat.example.org><x@y.z>",
    "RCPT TO:<victim1234@@chat.example.org>",
    "RCPT TO:<victim\u00e9@chat.example.org>",
    "RCPT TO:<>",
    "RCPT TO:<not-verified+any@vrfy.invalid>",  # the VRFY stand-in (below)
]
# VRFY lines: every argument becomes one fixed address that the port-25
# restrictions permit first, so an existing account and any other address get
# the same "252 2.0.0" (the host tests check the replies).
VRFY_LINES = [
    "VRFY victim1234@chat.example.org",
    "vrfy <victim1234@[192.0.2.7]>",
    "VRFY wrongaddress",
    "VRFY echo",
]


@pytest.mark.skipif(not shutil.which("postmap"), reason="postfix (postmap) not installed")
@pytest.mark.parametrize("line", RCPT_PASSES + RCPT_REFUSED + VRFY_LINES)
def test_mx_command_filter(example, tmp_path, line):
    """postfix's own regexp engine (postmap -q) on the rendered table."""
    table = tmp_path / "mx_command_filter"
    table.write_text(example["files"]["/etc/postfix/mx_command_filter"])
    confdir = tmp_path / "postfix"  # postmap reads main.cf of its own config directory
    confdir.mkdir()
    (confdir / "main.cf").write_text("compatibility_level = 3.6\n")
    proc = subprocess.run(
        ["postmap", "-c", str(confdir), "-q", line, f"regexp:{table}"],
        capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert "warning" not in proc.stderr and "fatal" not in proc.stderr, proc.stderr
    if line in RCPT_PASSES:
        assert proc.returncode == 1 and proc.stdout == "", proc.stdout
    elif line in VRFY_LINES:
        assert proc.stdout.strip() == "VRFY <not-verified+any@vrfy.invalid>", proc
    else:
        assert proc.returncode == 0 and proc.stdout.strip() == "RCPT TO:<@>", proc


def test_port25_checks_recipients_and_no_sub_addressing(example, certs):
    files = example["files"]
    main = cf(files["/etc/postfix/main.cf"])
    assert main["recipient_delimiter"] == ""
    assert main["allow_percent_hack"] == "no" and main["swap_bangpath"] == "no"
    # the VRFY stand-in of mx_command_filter is permitted before any lookup
    vrfy = "check_recipient_access inline:{not-verified+any@vrfy.invalid=OK}"
    assert main["mx_vrfy_access"] == vrfy
    assert main["mx_relay_restrictions"] == "$mx_vrfy_access, reject_unauth_destination"
    assert main["mx_recipient_restrictions"] == (
        "$mx_vrfy_access, check_policy_service unix:private/quota-status"
    )
    svc = master_services(files["/etc/postfix/master.cf"])
    assert "smtpd_relay_restrictions=$mx_relay_restrictions" in svc["smtp/inet"]
    for name in ("smtp/inet", "reinject_incoming/unix"):
        assert "smtpd_command_filter=regexp:/etc/postfix/mx_command_filter" in svc[name]
    assert "smtpd_recipient_restrictions=$mx_recipient_restrictions" in svc["smtp/inet"]
    conf = files["/etc/dovecot/dovecot.conf"]
    assert re.search(r"^recipient_delimiter =$", conf, re.M)
    assert "unix_listener /var/spool/postfix/private/quota-status" in conf
    assert "quota_status_nouser = 550 5.1.1 No such user here" in conf


def test_header_cleanup_tables(example):
    files = example["files"]
    sub = files["/etc/postfix/submission_header_cleanup"]
    for header in ("Received", "X-Originating-IP", "X-Mailer", "User-Agent"):
        assert re.search(rf"^/\^{header}:/i\s+IGNORE$", sub, re.M), header
    assert re.search(r"^/\^Subject:/i\s+REPLACE Subject: \[\.\.\.\]$", sub, re.M)
    lmtp = files["/etc/postfix/lmtp_header_cleanup"]
    for header in ("DKIM-Signature", "Authentication-Results", "Received"):
        assert re.search(rf"^/\^{header}:/i\s+IGNORE$", lmtp, re.M), header


def test_sni_and_dkim_tables_list_each_domain_once(example, certs):
    files = example["files"]
    sni = [ln.split() for ln in files["/etc/postfix/tls_server_sni"].splitlines()
           if ln and not ln.startswith("#")]  # fmt: skip
    assert sni == [
        ["_test.example.org", certs["key"], certs["cert"]],
        ["chat.example.org", certs["key"], certs["cert"]],
    ]
    keytable = files["/etc/opendkim/KeyTable"]
    assert (
        "opendkim._domainkey.chat.example.org "
        "chat.example.org:opendkim:/etc/dkimkeys/chat.example.org.opendkim.private"
    ) in keytable
    signing = files["/etc/opendkim/SigningTable"]
    assert "*@_test.example.org opendkim._domainkey._test.example.org" in signing
    conf = files["/etc/opendkim.conf"]
    assert re.search(r"^Mode\s+s$", conf, re.M)
    assert re.search(r"^MTA\s+ORIGINATING$", conf, re.M)
    assert re.search(r"^Socket\s+local:/var/spool/postfix/opendkim/opendkim.sock$", conf, re.M)


def test_dovecot_conf(example, certs):
    conf = example["files"]["/etc/dovecot/dovecot.conf"]
    assert "imap_capability = +XDELTAPUSH XCHATMAIL" in conf
    assert "ssl = required" in conf and "ssl_min_protocol = TLSv1.3" in conf
    assert re.findall(r"^local_name (\S+) \{", conf, re.M) == [
        "_test.example.org",
        "chat.example.org",
    ]
    assert f"ssl_cert = <{certs['cert']}" in conf
    assert "mail_home = /home/vmail/mail/%d/%u" in conf
    assert "mail_location = maildir:~:VOLATILEDIR=~/dovecot-volatile" in conf
    # fallback quota: the primary's size; doveauth answers per domain
    assert "quota_rule = *:storage=500M" in conf
    # trimmed at 75%, at 100% and when a session starts over quota; deferred when full
    for line in (
        "quota_warning = storage=75%% quota-warning 70 %u %h",
        "quota_warning2 = storage=100%% quota-warning 70 %u %h",
        "quota_over_flag_value = TRUE",
        "quota_over_script = quota-warning 70 %u %h",
        "quota_full_tempfail = yes",
    ):
        assert line in conf, line
    assert "mail_max_userip_connections = 20" in conf
    assert "mail_attribute_dict = proxy:/run/chatmail-metadata/metadata.socket:metadata" in conf
    assert "last_login_dict = proxy:/run/chatmail-lastlogin/lastlogin.socket:lastlogin" in conf
    assert "service_count = 0" in conf
    # IDLE sessions quiet for a minute hibernate (the patched build: no
    # new-mail notice can be pending in a debounce when they are handed over)
    assert "imap_hibernate_timeout = 60s" in conf
    assert re.search(r"unix_listener imap-master \{\s+user = \$default_internal_user", conf)
    # login brakes: the same Lua passdb before doveauth's (check) and after it
    # (counts a failure), for IMAP and SMTP AUTH
    lua = "args = file=/etc/dovecot/chatmail-login-limit.lua blocking=no"
    dict_passdb = conf.index("args = /etc/dovecot/chatmail-auth.conf.ext")
    assert conf.index(lua) < dict_passdb < conf.rindex(lua)
    assert conf.count(lua) == 2
    limit = example["files"]["/etc/dovecot/chatmail-login-limit.lua"]
    assert "local LOGIN_LIMIT = 60\n" in limit
    assert "local FAIL_PAIR_LIMIT = 5\n" in limit
    assert "local FAIL_IP_LIMIT = 20\n" in limit
    assert "local FAIL_WINDOW = 600\n" in limit
    auth = example["files"]["/etc/dovecot/chatmail-auth.conf.ext"]
    assert "uri = proxy:/run/doveauth/doveauth.socket:auth" in auth
    assert 'password_key = passdb/%Ew"%Eu' in auth
    assert "user_key = userdb/%Eu" in auth
    lua = example["files"]["/etc/dovecot/push_notification.lua"]
    assert 'metadata_set("/private/messagenew", value)' in lua
    script = example["files"]["/usr/local/bin/chatmail-quota-warning"]
    assert script.startswith("#!/usr/local/lib/chatmaild/bin/python3\n")
    compile(script, "chatmail-quota-warning", "exec")


def test_debian_dovecot_never_hibernates(render, certs):
    """dovecot:source debian: a notice pending in Debian's 500 ms delay would
    die with the hand-off to imap-hibernate, so sessions stay live whatever
    imap:hibernate_timeout says."""
    pillar = {
        "domains": {"chat.example.net": {"tls": {"mode": "external", **certs}}},
        "dovecot": {"source": "debian"},
        "imap": {"hibernate_timeout": 30},
    }
    out = render(pillar, sls=["chatmail.dovecot"])
    conf = out["files"]["/etc/dovecot/dovecot.conf"]
    assert "hibernate" not in conf
    assert "NOTIFY_DELAY_MSECS" in conf  # the comment saying why IDLE is slower
    states = out["states"]
    assert "chatmail-dovecot-repo-file-absent" in states
    assert "chatmail-dovecot-repo-pin-file-managed" not in states


def test_ip_only_domain(mixed, certs):
    files = mixed["files"]
    main = cf(files["/etc/postfix/main.cf"])
    assert main["virtual_mailbox_domains"] == "chat.example.net"
    assert main["proxy_interfaces"] == "192.0.2.7"
    assert main["local_transport"] == "lmtp:unix:private/dovecot-lmtp"
    assert main["inet_protocols"] == "ipv4"
    assert main["smtpd_client_connection_rate_limit"] == "17"
    assert main["maximal_queue_lifetime"] == "3d"
    assert main["minimal_backoff_time"] == main["queue_run_delay"] == "20s"
    assert "192.0.2.7" not in files["/etc/postfix/tls_server_sni"]
    assert "192.0.2.7" not in files["/etc/opendkim/KeyTable"]
    assert "s2026._domainkey.chat.example.net" in files["/etc/opendkim/SigningTable"]
    conf = files["/etc/dovecot/dovecot.conf"]
    assert re.findall(r"^local_name (\S+) \{", conf, re.M) == ["chat.example.net"]
    assert "quota_rule = *:storage=2048M" in conf
    assert "listen = *\n" in conf
    assert "hibernate" not in conf  # imap: hibernate_timeout: 0
    assert "local LOGIN_LIMIT = 30\n" in files["/etc/dovecot/chatmail-login-limit.lua"]


@pytest.mark.skipif(not shutil.which("postconf"), reason="postfix is not installed")
@pytest.mark.parametrize("variant", ["example", "mixed"])
def test_postfix_accepts_config(variant, request, tmp_path):
    files = request.getfixturevalue(variant)["files"]
    etc = write_tree(files, tmp_path) / "etc" / "postfix"
    for args in (["-n"], ["-M"]):
        proc = subprocess.run(
            ["postconf", "-c", str(etc), *args],
            capture_output=True, text=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr


@pytest.mark.skipif(not shutil.which("doveconf"), reason="dovecot is not installed")
@pytest.mark.parametrize("variant", ["example", "mixed"])
def test_dovecot_accepts_config(variant, request, tmp_path):
    files = request.getfixturevalue(variant)["files"]
    conf = write_tree(files, tmp_path) / "etc" / "dovecot" / "dovecot.conf"
    proc = subprocess.run(
        ["doveconf", "-n", "-c", str(conf)],
        capture_output=True, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert "imap_capability = +XDELTAPUSH XCHATMAIL" in proc.stdout


@pytest.fixture(scope="module")
def bypass(render, certs):
    """The benchmark-only switch chatmail:testing:filtermail_bypass on."""
    pillar = {
        "domains": {"chat.example.net": {"tls": {"mode": "external", **certs}}},
        "testing": {"filtermail_bypass": True},
    }
    return render(pillar, sls=["chatmail.postfix"])


def test_filtermail_bypass_master_cf(bypass, tmp_path):
    text = bypass["files"]["/etc/postfix/master.cf"]
    svc = master_services(text)
    assert "CLEARTEXT MAIL CAN LEAVE THIS RELAY" in text
    for name in ("submission/inet", "submissions/inet"):
        opts = " ".join(svc[name])
        assert "smtpd_proxy_filter" not in opts
        # the same treatment as filtermail's reinject port: header cleanup, DKIM
        assert "cleanup_service_name=authclean" in opts
        assert "milter_macro_daemon_name=ORIGINATING" in opts
        assert "smtpd_milters=unix:opendkim/opendkim.sock" in opts
        assert "smtpd_sasl_path=private/auth" in opts
    # incoming mail from other relays keeps its filter
    assert "smtpd_proxy_filter=127.0.0.1:10081" in " ".join(svc["smtp/inet"])
    if not shutil.which("postconf"):
        pytest.skip("postfix is not installed")
    etc = write_tree(bypass["files"], tmp_path) / "etc" / "postfix"
    proc = subprocess.run(
        ["postconf", "-c", str(etc), "-M"],
        capture_output=True, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    for name in ("submission", "submissions"):
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith(name + " "))
        assert "smtpd_proxy_filter" not in line and "cleanup_service_name=authclean" in line


def test_filtermail_bypass_off_by_default(example):
    assert "CLEARTEXT" not in example["files"]["/etc/postfix/master.cf"]


@pytest.mark.parametrize(
    "testing, problem",
    [
        ({"filtermail_bypass": "yes"}, "chatmail:testing:filtermail_bypass: "),
        ({"filtermail_bypas": True}, "chatmail:testing:filtermail_bypas: unknown key"),
        ("on", "chatmail:testing: must be a mapping"),
    ],
)
def test_filtermail_bypass_validated(cc, defaults, testing, problem):
    pillar = {"domains": {"chat.example.net": {}}, "testing": testing}
    with pytest.raises(cc.ChatmailConfigError) as exc:
        cc.build(defaults, {}, pillar, check_files=False)
    assert any(e.startswith(problem) for e in exc.value.errors), exc.value.errors
