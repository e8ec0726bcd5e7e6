"""A salt master on the CI machine (salt from /opt/cm-venv) for the test hosts,
and minions enrolled with the repo's fleet bootstrap state.

The master is configured from the shipped etc/salt/master.d/chatmail.conf with
only the paths changed (repository, temp root, pillar of the run) and listens
on the test network's gateway address, so minions on the network reach it.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from . import GATEWAY, LOG_DIR, REPO, hosts, network_address, ports

SALT_BIN = Path(sys.executable).parent
SHIPPED_CONF = REPO / "etc" / "salt" / "master.d" / "chatmail.conf"
SHIPPED_ROOT = "/srv/chatmail-salt"
MINION_BIN = "/usr/local/bin/salt-minion"


def free_port(host=None):
    """A free TCP port on `host` (default: the slot's gateway, network created)."""
    return ports.free_port(host or network_address())


def repath(value, tree):
    """`value` (a loaded master config) with the shipped /srv/chatmail-salt
    paths moved below `tree`."""
    if isinstance(value, str) and value.startswith(SHIPPED_ROOT):
        return str(tree) + value[len(SHIPPED_ROOT) :]
    if isinstance(value, list):
        return [repath(v, tree) for v in value]
    if isinstance(value, dict):
        return {k: repath(v, tree) for k, v in value.items()}
    return value


SNAPSHOT_DIRS = ["salt", "pillar", "_runners"]


def snapshot_tree(dest):
    """Copy salt/ (links resolved), pillar/ and _runners/ of the work tree, so
    that edits to the tree during a run do not reach the minions mid-test."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")
    for name in SNAPSHOT_DIRS:
        shutil.copytree(REPO / name, Path(dest) / name, symlinks=False, ignore=ignore)
    return Path(dest)


def master_config(root, pillar_dir, fleet_settings=None, extra=None, snapshot=True):
    """The shipped master config with the repository's path (or a snapshot of
    it), this run's pillar directory in front of pillar/ and a fleet settings
    override."""
    tree = snapshot_tree(Path(root) / "tree") if snapshot else REPO
    conf = repath(yaml.safe_load(SHIPPED_CONF.read_text()), tree)
    conf["pillar_roots"]["base"] = [str(pillar_dir)] + conf["pillar_roots"]["base"]
    if fleet_settings is not None:
        fleet_dir = Path(root) / "fleet-pillar"
        fleet_dir.mkdir(parents=True, exist_ok=True)
        (fleet_dir / "settings.yaml").write_text(yaml.safe_dump(fleet_settings))
        conf["pillar_roots"]["fleet"] = [str(fleet_dir)] + conf["pillar_roots"]["fleet"]
    conf.update(
        {
            "root_dir": str(root),
            "user": "root",
            "interface": GATEWAY,
            "publish_port": free_port(),
            "ret_port": free_port(),
            "log_file": str(Path(root) / "master.log"),
            "log_level_logfile": "info",
            "sock_dir": str(Path(root) / "sock"),
            "pidfile": str(Path(root) / "master.pid"),
            "worker_threads": 4,
        }
    )
    conf.update(extra or {})
    return conf


class Master:
    """salt-master process with its own config dir; CLI helpers bound to it."""

    def __init__(self, pillar_dir, fleet_settings=None, extra=None, root=None, snapshot=True):
        self.root = Path(root or tempfile.mkdtemp(prefix="cmsalt-master-"))
        self.pillar_dir = Path(pillar_dir)
        self.conf_dir = self.root / "etc"
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        self.conf = master_config(self.root, self.pillar_dir, fleet_settings, extra, snapshot)
        (self.conf_dir / "master").write_text(yaml.safe_dump(self.conf))
        self.proc = None

    @property
    def ports(self):
        return self.conf["ret_port"], self.conf["publish_port"]

    def start(self, timeout=60):
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        with open(self.root / "master.out", "ab") as out:
            self.proc = subprocess.Popen(
                [str(SALT_BIN / "salt-master"), "-c", str(self.conf_dir), "-l", "warning"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"salt-master exited: {self.log_tail()}")
            try:
                with socket.create_connection((GATEWAY, self.conf["ret_port"]), timeout=1):
                    return self
            except OSError:
                time.sleep(0.3)
        raise TimeoutError(f"salt-master did not listen: {self.log_tail()}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def cleanup(self):
        self.stop()
        keep = LOG_DIR / "fleet-master.log"
        try:
            shutil.copy(self.root / "master.log", keep)
        except OSError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, n=4000):
        text = ""
        for name in ("master.out", "master.log"):
            try:
                text += (self.root / name).read_text()[-n:]
            except OSError:
                pass
        return text

    def _cli(self, tool, *args, timeout=600):
        return subprocess.run(
            [str(SALT_BIN / tool), "-c", str(self.conf_dir), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def salt(self, tgt, fun, *args, tgt_type="list", timeout=600):
        """Run `salt` and return {minion: return} (JSON out)."""
        if isinstance(tgt, (list, tuple)):
            tgt = ",".join(tgt)
        flag = {"list": ["-L"], "glob": [], "compound": ["-C"]}[tgt_type]
        proc = self._cli(
            "salt", *flag, tgt, fun, *args, "--out=json", "--static", f"--timeout={timeout}",
            timeout=timeout + 60,
        )  # fmt: skip
        try:
            return json.loads(proc.stdout) if proc.stdout.strip() else {}
        except ValueError as exc:
            raise RuntimeError(f"salt {fun}: {proc.stdout[-2000:]} {proc.stderr[-2000:]}") from exc

    def run(self, fun, *args, out="json", timeout=300):
        """salt-run; JSON-decoded return (or text with out=txt... raw stdout)."""
        proc = self._cli("salt-run", fun, *args, f"--out={out}", timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"salt-run {fun}: {proc.stdout[-2000:]} {proc.stderr[-2000:]}")
        return json.loads(proc.stdout) if out == "json" else proc.stdout

    def keys(self):
        proc = self._cli("salt-key", "--out=json", "-L")
        return json.loads(proc.stdout)

    def accept(self, minion_ids, timeout=120):
        """Wait until the minions' keys are pending, then accept exactly them."""
        want = set(minion_ids)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            keys = self.keys()
            pending = set(keys.get("minions_pre", []))
            accepted = set(keys.get("minions", []))
            for minion in sorted(want & pending):
                self._cli("salt-key", "-y", "-a", minion)
            if want <= accepted:
                return
            time.sleep(1)
        raise TimeoutError(f"keys not pending/accepted: {self.keys()}")

    def wait_ping(self, minion_ids, timeout=120):
        deadline = time.monotonic() + timeout
        got = {}
        while time.monotonic() < deadline:
            got = self.salt(list(minion_ids), "test.ping", timeout=10)
            if all(got.get(m) is True for m in minion_ids):
                return
            time.sleep(1)
        raise TimeoutError(f"minions not answering: {got}")


def bootstrap_minion(host, master, timeout=600):
    """Turn a booted harness host into a minion of `master` with the fleet state.

    The harness writes a masterless minion config (file_client: local) at boot;
    it is removed first, then salt/fleet is applied locally (salt-call --local
    with the repo mounted in the host), which writes the minion config and
    starts the salt-minion unit."""
    host.exec("rm", "-f", hosts.MINION_CONF)
    pillar = {
        "fleet": {
            "master": GATEWAY,
            "master_port": master.conf["ret_port"],
            "publish_port": master.conf["publish_port"],
            "manage_unit": True,
            "minion_bin": MINION_BIN,
        }
    }
    proc = host.exec(
        "salt-call", "--local", "--retcode-passthrough", "--out=json",
        f"--file-root={hosts.REPO_MOUNT}/salt", "--pillar-root=/nonexistent",
        f"--id={host.fqdn}", "state.apply", "fleet", "pillar=" + json.dumps(pillar),
        check=False, timeout=timeout,
    )  # fmt: skip
    result = hosts.parse_state_output(proc.returncode, proc.stdout, proc.stderr)
    if not result.ok:
        raise RuntimeError(f"{host.name}: fleet bootstrap failed\n{result.summary()}")
    return result


def highstate(master, minion_ids, timeout=1800):
    """state.highstate from the master (queue=True: waits for a scheduled run
    that may be going); returns {minion: ConvergeResult}."""
    master.salt(list(minion_ids), "saltutil.sync_all", timeout=300)
    data = master.salt(list(minion_ids), "state.highstate", "queue=True", timeout=timeout)
    out = {}
    for minion in minion_ids:
        ret = data.get(minion)
        payload = json.dumps({"local": ret}) if ret is not None else ""
        out[minion] = hosts.parse_state_output(0 if ret is not None else 1, payload, "")
        if ret is None:
            out[minion].errors.append(f"{minion} did not return")
    return out
