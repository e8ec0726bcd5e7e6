"""The metrics side of the state tree without a host: chatmail.metrics and
fleet.prometheus rendered by salt-call for the example pillar, the pillar
validation of chatmail:metrics and fleet:prometheus, the mtail program on
sample Postfix log lines, the status text of chatmail_metrics and the alert
rules."""

import copy
import importlib.util
import json
import pathlib
import shutil
import subprocess
import time
import urllib.request

import pytest
import yaml

from tests.harness.ports import free_port
from tests.unit.test_render import cmap, example, render, salt_env  # noqa: F401  (fixtures)

REPO = pathlib.Path(__file__).resolve().parents[2]
MTAIL_PROG = REPO / "salt" / "chatmail" / "metrics" / "files" / "postfix.mtail"
RULES = REPO / "salt" / "fleet" / "files" / "chatmail-rules.yml"


def _states(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    states = json.loads(proc.stdout)["local"]
    assert isinstance(states, dict), states
    return states


def _arg(state, name):
    """The value of argument `name` of a show_sls state entry."""
    for fun_args in state.values():
        if isinstance(fun_args, list):
            for item in fun_args:
                if isinstance(item, dict) and name in item:
                    return item[name]
    raise KeyError(name)


def test_metrics_states_render(salt_env, example):  # noqa: F811
    states = _states(salt_env("state.show_sls", "chatmail.metrics", pillar_data=example))
    for want in (
        "chatmail-metrics-pkgs-installed",
        "chatmail-metrics-node-exporter-service-running",
        "chatmail-metrics-postfix-exporter-service-running",
        "chatmail-metrics-mtail-service-running",
        "chatmail-metrics-chatmail-fsreport-metrics-timer-running",
        "chatmail-metrics-chatmail-status-metrics-timer-running",
        "chatmail-metrics-targets-file-managed",
    ):
        assert want in states, want
    # nothing listens beyond loopback by default, and the settings are in
    # place before the packages (whose services start on installation)
    node = _arg(states["chatmail-metrics-node-exporter-default-file-managed"], "contents")
    assert "--web.listen-address=127.0.0.1:9100" in node
    assert "--collector.textfile.directory=/var/lib/chatmail-metrics" in node
    pfx = _arg(states["chatmail-metrics-postfix-exporter-default-file-managed"], "contents")
    assert "--web.listen-address=127.0.0.1:9154" in pfx
    requires = _arg(states["chatmail-metrics-pkgs-installed"], "require")
    assert {"file": "chatmail-metrics-node-exporter-default-file-managed"} in requires
    targets = _arg(states["chatmail-metrics-targets-file-managed"], "dataset")
    assert targets == {
        "node": "127.0.0.1:9100",
        "postfix": "127.0.0.1:9154",
        "mtail": "127.0.0.1:3903",
        "dovecot": "127.0.0.1:9900",
    }
    args = _arg(states["chatmail-metrics-status-args-file-managed"], "dataset")
    # IP-only domains have no DNS to check
    assert set(args["domains"]) == {"chat.example.org", "_test.example.org"}
    assert args["domains"]["chat.example.org"]["selector"]


def test_metrics_switched_off_renders_the_clean_states(salt_env, example):  # noqa: F811
    pillar = copy.deepcopy(example)
    pillar["chatmail"]["metrics"]["enabled"] = False
    states = _states(salt_env("state.show_sls", "chatmail.metrics", pillar_data=pillar))
    assert "chatmail-metrics-services-dead" in states
    assert not [s for s in states if s.endswith("-running")]


def test_metrics_clean_renders(salt_env, example):  # noqa: F811
    states = _states(salt_env("state.show_sls", "chatmail.metrics.clean", pillar_data=example))
    names = _arg(states["chatmail-metrics-clean-files-absent"], "names")
    assert "/var/lib/chatmail-metrics" in names


def test_fleet_prometheus_renders_targets(salt_env, example):  # noqa: F811
    pillar = copy.deepcopy(example)
    pillar["fleet"] = {
        "prometheus": {
            "enabled": True,
            "listen_address": "192.0.2.10",
            "static_relays": {
                "old.example.org": {"node": "192.0.2.20:9100", "dovecot": "192.0.2.20:9900"},
                # loopback of another host: unreachable, left out
                "lo.example.org": {"node": "127.0.0.1:9100"},
            },
        }
    }
    states = _states(salt_env("state.show_sls", "fleet.prometheus", pillar_data=pillar))
    node = _arg(states["chatmail-fleet-prometheus-node-targets-file-managed"], "dataset")
    assert node == [{"targets": ["192.0.2.20:9100"], "labels": {"relay": "old.example.org"}}]
    mtail = _arg(states["chatmail-fleet-prometheus-mtail-targets-file-managed"], "dataset")
    assert mtail == []
    default = _arg(states["chatmail-fleet-prometheus-default-file-managed"], "contents")
    assert "--web.listen-address=192.0.2.10:9090" in default
    rules = states["chatmail-fleet-prometheus-rules-file-managed"]
    assert _arg(rules, "check_cmd") == "/usr/bin/promtool check rules"
    pillar["fleet"]["prometheus"]["enabled"] = False
    states = _states(salt_env("state.show_sls", "fleet.prometheus", pillar_data=pillar))
    assert list(s for s in states if not s.startswith("__")) == [
        "chatmail-fleet-prometheus-service-dead"
    ]


def test_prometheus_config_template():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(REPO / "salt")))
    text = env.get_template("fleet/files/prometheus.yml.jinja").render(
        prom={"scrape_interval": "30s"},
        self_target="127.0.0.1:9090",
        kinds=["node", "postfix", "mtail", "dovecot"],
    )
    conf = yaml.safe_load(text)
    jobs = {job["job_name"]: job for job in conf["scrape_configs"]}
    assert set(jobs) == {"prometheus", "chatmail_node", "chatmail_postfix", "chatmail_mtail",
                         "chatmail_dovecot"}  # fmt: skip
    assert jobs["chatmail_node"]["file_sd_configs"][0]["files"] == [
        "/etc/prometheus/chatmail-targets/node.json"
    ]
    # a file read while Salt still had it at 0600 is read again soon
    assert {job["file_sd_configs"][0]["refresh_interval"] for n, job in jobs.items()
            if n != "prometheus"} == {"30s"}  # fmt: skip
    assert conf["rule_files"] == ["/etc/prometheus/chatmail-rules.yml"]


def test_alert_rules():
    rules = {r["alert"]: r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    # the alerts the fleet needs at least
    for name in (
        "ChatmailRelayDown",
        "ChatmailQueueGrowing",
        "ChatmailCertificateExpiresSoon",
        "ChatmailDnsCheckFailing",
        "ChatmailDiskFull",
        "ChatmailMailboxDiskFull",
    ):
        assert name in rules, name
        assert "relay" in rules[name]["annotations"]["summary"]
    assert "< 14" in rules["ChatmailCertificateExpiresSoon"]["expr"]
    assert "> 0.85" in rules["ChatmailDiskFull"]["expr"]
    promtool = shutil.which("promtool")
    if promtool:  # the fleet test runs it on the Prometheus host in any case
        proc = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr


# --- validation ------------------------------------------------------------


def _problems(cc, defaults, pillar):
    try:
        cc.build(defaults, {}, pillar)
    except cc.ChatmailConfigError as exc:
        return exc.errors
    return []


@pytest.mark.parametrize(
    "metrics, problem",
    [
        ({"listen_address": "localhost"}, "chatmail:metrics:listen_address: not an IP address"),
        ({"ports": {"node": 25}}, "chatmail:metrics:ports:node: port 25 clashes with the smtp"),
        ({"ports": {"node": 10080}}, "chatmail:metrics:ports:node: port 10080 clashes with params"),
        ({"ports": {"mtail": 9100}}, "chatmail:metrics:ports:node: port 9100 clashes with metrics"),
        ({"ports": {"node": 70000}}, "chatmail:metrics:ports:node: not a TCP port"),
        ({"fsreport_interval": "often"}, "chatmail:metrics:fsreport_interval: not a positive"),
        ({"status_interval": "0min"}, "chatmail:metrics:status_interval: not a positive"),
        ({"public": "yes"}, "chatmail:metrics:public: must be true or false"),
        ({"ports": {"grafana": 3000}}, "chatmail:metrics:ports:grafana: unknown key"),
    ],
)
def test_metrics_pillar_validated(cc, defaults, metrics, problem):
    pillar = {"domains": {"chat.example.org": {}}, "metrics": metrics}
    problems = _problems(cc, defaults, pillar)
    assert any(p.startswith(problem) for p in problems), problems


def test_metrics_pillar_accepts_an_address_and_ipv6(cc, defaults):
    for addr in ("10.0.0.5", "fd00::5"):
        pillar = {"domains": {"chat.example.org": {}}, "metrics": {"listen_address": addr}}
        assert cc.build(defaults, {}, pillar)["metrics"]["listen_address"] == addr


def _fleet_defaults():
    return yaml.safe_load((REPO / "salt" / "fleet" / "defaults.yaml").read_text())["fleet"][
        "prometheus"
    ]


@pytest.mark.parametrize(
    "pillar, problem",
    [
        ({"port": "x"}, "fleet:prometheus:port: must be an integer"),
        ({"listen_address": "all"}, "fleet:prometheus:listen_address: not an IP address"),
        ({"retention": "30 days"}, "fleet:prometheus:retention: not a Prometheus duration"),
        ({"static_relays": {"r": {"web": "h:1"}}}, "fleet:prometheus:static_relays:r:web: must"),
        ({"scrape": "1m"}, "fleet:prometheus:scrape: unknown key"),
    ],
)
def test_prometheus_settings_validated(cc, pillar, problem):
    with pytest.raises(cc.ChatmailConfigError) as info:
        cc.prometheus_settings(_fleet_defaults(), pillar)
    assert any(p.startswith(problem) for p in info.value.errors), info.value.errors


def test_prometheus_settings_defaults(cc):
    prom = cc.prometheus_settings(_fleet_defaults(), {"enabled": True})
    assert prom["listen_address"] == "127.0.0.1" and prom["port"] == 9090


# --- mtail program ------------------------------------------------------------

SAMPLE_LOG = """\
2026-12-05T02:00:00+0000 chat1 postfix/lmtp[123]: 4AbC1x2yZ: to=<abc@chat1.test>, relay=chat1.test[private/dovecot-lmtp], delay=0.1, delays=0/0/0/0.1, dsn=2.0.0, status=sent (250 2.0.0 <abc@chat1.test> ok)
2026-12-05T02:00:00+0000 chat1 postfix/lmtp[123]: 4AbC1x2yZ: to=<def@chat1.test>, relay=chat1.test[private/dovecot-lmtp], delay=0.1, delays=0/0/0/0.1, dsn=2.0.0, status=sent (250 2.0.0 <def@chat1.test> ok)
2026-12-05T02:00:01+0000 chat1 postfix/smtp[124]: 5BcD2y3zA: to=<abc@other.test>, relay=none, delay=30, delays=0/0/30/0, dsn=4.4.1, status=deferred (connect to other.test[192.0.2.4]:25: Connection refused)
2026-12-05T02:00:01+0000 chat1 postfix/smtp[124]: 6CdE: to=<x@other.test>, relay=other.test[192.0.2.4]:25, delay=1, dsn=2.0.0, status=sent (250 ok)
2026-12-05T02:00:02+0000 chat1 postfix/submission/smtpd[125]: warning: unknown[192.0.2.1]: SASL PLAIN authentication failed: authentication failure
2026-12-05T02:00:03+0000 chat1 postfix/smtpd[126]: NOQUEUE: reject: RCPT from unknown[192.0.2.1]: 554 5.7.1 <x@y>: Relay access denied; from=<a@b> to=<x@y> proto=ESMTP helo=<h>
2026-12-05T02:00:04+0000 chat1 postfix/qmgr[127]: 4AbC1x2yZ: removed
2026-12-05T02:00:05+0000 chat1 dovecot[99]: lmtp(abc@chat1.test): status=sent is not a postfix line
"""  # noqa: E501


@pytest.mark.skipif(not shutil.which("mtail"), reason="no mtail (./cmsalt installs it)")
def test_mtail_program_counts_sample_lines(tmp_path):
    progs = tmp_path / "progs"
    progs.mkdir()
    shutil.copy(MTAIL_PROG, progs)
    log = tmp_path / "mail.log"
    log.write_text(SAMPLE_LOG)
    proc = subprocess.run(
        ["mtail", "--progs", str(progs), "--logs", str(log), "--one_shot",
         "--one_shot_format=prometheus", "--emit_prog_label=false"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line and not line.startswith("#")]
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines}
    assert samples == {
        'chatmail_postfix_deliveries_total{status="sent",transport="lmtp"}': 2,
        'chatmail_postfix_deliveries_total{status="deferred",transport="smtp"}': 1,
        'chatmail_postfix_deliveries_total{status="sent",transport="smtp"}': 1,
        "chatmail_postfix_sasl_failures_total": 1,
        'chatmail_postfix_smtpd_rejects_total{code="554"}': 1,
        "chatmail_postfix_messages_removed_total": 1,
    }


# --- chatmail_metrics.status_text ---------------------------------------------


@pytest.fixture(scope="module")
def cm():
    spec = importlib.util.spec_from_file_location(
        "chatmail_metrics_under_test", REPO / "_modules" / "chatmail_metrics.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_status_text(cm):
    report = {
        "services": {"postfix": "active", "dovecot": "failed"},
        "disk": {"used_percent": 42.5},
        "domains": {
            "chat.example.org": {
                "cert": {
                    "served": {"not_after": "2027-01-01T00:00:00Z", "days_left": 20},
                    "file": {"not_after": "2027-01-01T00:00:00Z", "days_left": 20},
                    "days_left": 20,
                }
            },
            "10.0.0.1": {
                "cert": {
                    "served": {"error": "refused"},
                    "file": {"days_left": 3, "not_after": "2026-12-08T00:00:00Z"},
                    "days_left": 3,
                }
            },
        },
    }
    dns = {
        "chat.example.org": {"ok": False, "problems": ["MX missing", "SPF wrong"], "warnings": []},
        "10.0.0.1": {"ok": True, "skipped": "IP-address relay", "problems": [], "warnings": []},
    }
    text = cm.status_text(report, dns, now=1000)
    lines = set(text.splitlines())
    assert "chatmail_status_timestamp_seconds 1000" in lines
    assert 'chatmail_service_up{unit="dovecot"} 0' in lines
    assert 'chatmail_service_up{unit="postfix"} 1' in lines
    assert (
        'chatmail_tls_cert_expiry_timestamp_seconds{domain="chat.example.org",source="served"}'
        " 1798761600" in lines
    )
    assert 'chatmail_tls_cert_days_left{domain="10.0.0.1"} 3' in lines
    assert 'chatmail_tls_cert_ok{domain="10.0.0.1"} 0' in lines
    assert 'chatmail_tls_cert_ok{domain="chat.example.org"} 1' in lines
    assert 'chatmail_dns_check_ok{domain="chat.example.org"} 0' in lines
    assert 'chatmail_dns_check_problems{domain="chat.example.org"} 2' in lines
    assert not [line for line in lines if "dns" in line and "10.0.0.1" in line]
    assert "chatmail_mailbox_disk_used_ratio 0.425" in lines
    # every sample's family is declared once
    assert len([ln for ln in lines if ln.startswith("# TYPE")]) == len(
        {ln.split("{")[0].split(" ")[0] for ln in lines if not ln.startswith("#")}
    )


def test_targets_reads_the_states_file(cm, tmp_path):
    path = tmp_path / "t.json"
    assert cm.targets(str(path)) == {}
    path.write_text(json.dumps({"node": "10.0.0.5:9100"}))
    assert cm.targets(str(path)) == {"node": "10.0.0.5:9100"}


def test_top_applies_prometheus_where_the_pillar_switches_it_on(salt_env, example):  # noqa: F811
    pillar = copy.deepcopy(example)
    for enabled, want in ((True, ["chatmail", "fleet.prometheus"]), (False, ["chatmail"])):
        pillar["fleet"] = {"prometheus": {"enabled": enabled}}
        proc = salt_env("state.show_top", pillar_data=pillar)
        assert json.loads(proc.stdout)["local"]["base"] == want


# --- Dovecot's stats endpoint --------------------------------------------------


@pytest.mark.skipif(not shutil.which("dovecot"), reason="dovecot is not installed")
def test_dovecot_metrics_are_valid_openmetrics_before_any_event(render, cmap, tmp_path):  # noqa: F811
    """The metric blocks of the relay's dovecot.conf, in a private Dovecot
    with no protocols: every counter sample ends in _total (OpenMetrics), so
    Prometheus accepts the scrape also before the first login."""
    text = render("chatmail/dovecot/files/dovecot.conf.jinja", chatmail=cmap, grains={})
    block = text[text.index("# --- Metrics") :]
    port = free_port()
    block = block.replace("port = 9900", f"port = {port}")
    conf = tmp_path / "dovecot.conf"
    conf.write_text(
        f"base_dir = {tmp_path}/run\nstate_dir = {tmp_path}/state\nlog_path = {tmp_path}/log\n"
        "protocols =\nssl = no\ndefault_internal_user = nobody\ndefault_login_user = nobody\n"
        + block
    )
    proc = subprocess.Popen(["dovecot", "-F", "-c", str(conf)], stdin=subprocess.DEVNULL)
    try:
        body = ""
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                    body = resp.read().decode()
                break
            except OSError:
                time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(10)
    counters = {line.split()[2] for line in body.splitlines() if line.endswith(" counter")}
    samples = [line.split()[0] for line in body.splitlines() if line and not line.startswith("#")]
    for name in ("auth_success_imap", "auth_success_smtp", "auth_failure_imap",
                 "auth_failure_smtp", "mail_delivery"):  # fmt: skip
        assert f"dovecot_{name}_total" in samples, body
    for sample in samples:
        family = sample.split("{")[0]
        if any(family.startswith(c) for c in counters):
            assert family.endswith("_total"), sample
