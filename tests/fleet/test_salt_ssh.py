"""salt-ssh: converge a systemd host running sshd, without a minion, with the
repository's Saltfile/etc/salt-ssh config (paths made absolute), the state
tree salt/ and the pillar top of pillar/ (pillar/hosts/<id>.sls)."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.harness import REPO, ensure_infra, hosts
from tests.hosts.test_relay import SERVICES, imap_login, new_credentials

from .conftest import KEEP, write_pillar

SALT_SSH = Path(sys.executable).parent / "salt-ssh"
SSH_ID = "sshrelay.test"


def ssh_config_dir(root, pillar_dir):
    """etc/salt-ssh/master (as the Saltfile names it) with absolute paths and
    this run's pillar directory in front of pillar/."""
    saltfile = yaml.safe_load((REPO / "Saltfile").read_text())["salt-ssh"]
    conf = yaml.safe_load((REPO / saltfile["config_dir"] / "master").read_text())

    def absolute(path):
        return str(Path(path) if os.path.isabs(path) else REPO / path)

    conf["file_roots"] = {
        env: [absolute(p) for p in paths] for env, paths in conf["file_roots"].items()
    }
    conf["pillar_roots"] = {
        env: [str(pillar_dir)] + [absolute(p) for p in paths]
        for env, paths in conf["pillar_roots"].items()
    }
    for key in ("root_dir", "cachedir", "pki_dir", "log_file"):
        conf[key] = str(Path(root) / Path(conf.get(key, key)).name)
    conf_dir = Path(root) / "etc"
    conf_dir.mkdir(parents=True, exist_ok=True)
    (conf_dir / "master").write_text(yaml.safe_dump(conf))
    return conf_dir


@pytest.fixture(scope="module")
def ssh_host():
    ensure_infra()
    root = Path(tempfile.mkdtemp(prefix="cmsalt-ssh-"))
    key = root / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    name = "cmsalt-sshrelay"
    host = hosts.boot(name, SSH_ID, keep=KEEP)
    try:
        host.exec("rm", "-f", hosts.MINION_CONF)
        host.sh(
            "DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssh-server >/dev/null"
            " && systemctl enable --now ssh",
            timeout=600,
        )
        host.write_file("/root/.ssh/authorized_keys", key.with_suffix(".pub").read_text(), "0600")
        pillar_dir = root / "pillar"
        write_pillar(pillar_dir, SSH_ID)
        roster = root / "roster"
        roster.write_text(
            yaml.safe_dump(
                {
                    SSH_ID: {
                        "host": host.ip,
                        "user": "root",
                        "port": 22,
                        "priv": str(key),
                        # Test hosts reuse addresses with new host keys: a
                        # known_hosts of this run only, or ssh's "host key
                        # changed" warning lands in the output salt-ssh parses.
                        "ssh_options": [
                            f"UserKnownHostsFile={root / 'known_hosts'}",
                            "StrictHostKeyChecking=no",
                            "LogLevel=ERROR",
                        ],
                    }
                }
            )
        )
        yield host, ssh_config_dir(root, pillar_dir), roster
    finally:
        if not KEEP:
            hosts.destroy(host)
        shutil.rmtree(root, ignore_errors=True)


def salt_ssh(conf_dir, roster, *args, timeout=1800):
    proc = subprocess.run(
        [
            str(SALT_SSH), "-c", str(conf_dir), "--roster-file", str(roster),
            "--ignore-host-keys", "--out=json", "--static", SSH_ID, *args,
        ],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, cwd=REPO,
    )  # fmt: skip
    try:
        return json.loads(proc.stdout)[SSH_ID], proc
    except (ValueError, KeyError):
        return None, proc


@pytest.mark.hosts
@pytest.mark.fleet
def test_salt_ssh_converges_host_without_minion(ssh_host):
    host, conf_dir, roster = ssh_host
    assert host.exec("pgrep", "-f", "salt-minion", check=False).returncode != 0
    ret, proc = salt_ssh(conf_dir, roster, "pillar.get", "chatmail:domains")
    assert ret == {SSH_ID: {}}, (proc.stdout[-2000:], proc.stderr[-2000:])

    ret, proc = salt_ssh(conf_dir, roster, "state.highstate")
    assert isinstance(ret, dict), (proc.stdout[-3000:], proc.stderr[-3000:])
    result = hosts.parse_state_output(proc.returncode, json.dumps({"local": ret}), proc.stderr)
    assert result.ok, result.summary()
    down = [unit for unit in SERVICES if not host.is_active(unit)]
    assert not down, down
    addr, password = new_credentials(SSH_ID)
    imap_login(host.ip, addr, password).logout()

    again, proc = salt_ssh(conf_dir, roster, "state.highstate")
    second = hosts.parse_state_output(proc.returncode, json.dumps({"local": again}), proc.stderr)
    assert second.ok and second.changed == [], second.summary()
