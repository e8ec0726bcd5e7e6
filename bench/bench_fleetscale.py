"""Benchmark the salt master's side of a large fleet with lightweight minions.

    python bench/bench_fleetscale.py [--sizes 10,50,100,200] [--keep-going]

Real fleets are hundreds of relays; this machine holds a few test hosts. The
master's work does not depend on what the minions converge, so N real
``salt-minion`` processes on loopback stand in for N relays: each has its own
id, keys and cache, the shipped fleet pillar (the highstate schedule with its
splay, the real mine functions of pillar/fleet/mine.sls, which run the
repository's chatmail_dns/chatmail_dkim/chatmail_status/chatmail_metrics
modules against a machine that is not a relay) and a small stand-in state
tree (20 states: files in the minion's own directory, no packages). The
master is the shipped etc/salt/master.d/chatmail.conf with only the paths,
the loopback interface, its ports and auto_accept changed.

For each size it records: time until all N minions answer test.ping (enroll),
a fleet-wide saltutil.sync_all, a fleet-wide state.highstate (time for all
returns), a second highstate, mine.update (time until every minion's mine
entries are on the master), and the runner (chatmail_fleet.status/.dns/
.records) over the job cache; master CPU seconds per phase and its memory
(PSS of all master processes), the CPU the master burns per minute while
the fleet idles, and the minions' memory. Bounded: every phase has a
timeout, a size is skipped when free memory is short, every process it
started is stopped at the end (also on failure). Sends nothing beyond
127.0.0.1 (fqdn grains are off, so no minion resolves names).
"""

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from resource import RUSAGE_CHILDREN, getrusage

import psutil
import salt.config
import salt.loader
import yaml

from bench import release_harness_at_exit
from tests.harness import fleet_master

REPO = Path(__file__).resolve().parents[1]
SALT_BIN = Path(sys.executable).parent
SHIPPED_CONF = REPO / "etc" / "salt" / "master.d" / "chatmail.conf"
# the shipped schedule (pillar/fleet/settings.yaml): 30 min + up to 300 s splay
FLEET_SETTINGS = yaml.safe_load((REPO / "pillar" / "fleet" / "settings.yaml").read_text())
MINION_MEM = 80 * 1024**2  # a salt-minion with its job process, measured at 10 minions
STANDIN_STATES = 20


def free_port():
    return fleet_master.free_port("127.0.0.1")


def standin_tree(root):
    """file_roots: a top file, a small state and the repository's modules."""
    tree = root / "tree"
    (tree / "salt" / "standin").mkdir(parents=True)
    (tree / "salt" / "top.sls").write_text("base:\n  '*':\n    - standin\n")
    states = ["{% set d = opts['root_dir'] ~ '/standin' %}"]
    for i in range(STANDIN_STATES // 2):
        states.append(
            f"standin-file-{i}:\n  file.managed:\n    - name: {{{{ d }}}}/f{i}.conf\n"
            f"    - makedirs: true\n    - contents: 'setting {i} = {{{{ grains.id }}}}'\n"
        )
        states.append(f"standin-check-{i}:\n  test.succeed_without_changes: []\n")
    (tree / "salt" / "standin" / "init.sls").write_text("\n".join(states))
    for name in ("_modules", "_utils", "_states"):
        os.symlink(REPO / name, tree / "salt" / name)
    (tree / "pillar").mkdir()
    (tree / "pillar" / "top.sls").write_text("base: {}\n")
    fleet = root / "fleet-pillar"
    shutil.copytree(REPO / "pillar" / "fleet", fleet)
    return tree


def master_conf(root, tree):
    conf = fleet_master.repath(yaml.safe_load(SHIPPED_CONF.read_text()), root / "repo")
    conf["file_roots"] = {"base": [str(tree / "salt")]}
    conf["pillar_roots"] = {"base": [str(tree / "pillar")], "fleet": [str(root / "fleet-pillar")]}
    conf["runner_dirs"] = [str(REPO / "_runners")]
    conf.update(
        {
            "root_dir": str(root / "master"),
            "user": "root",
            "interface": "127.0.0.1",
            "publish_port": free_port(),
            "ret_port": free_port(),
            "sock_dir": str(root / "master" / "sock"),
            "pidfile": str(root / "master" / "master.pid"),
            "log_file": str(root / "master" / "master.log"),
            "log_level_logfile": "warning",
            # the bench accepts its own minions; the shipped config does not
            "auto_accept": True,
        }
    )
    return conf


def minion_conf(root, minion_id, master):
    base = root / "minions" / minion_id
    return {
        "id": minion_id,
        "master": "127.0.0.1",
        "master_port": master["ret_port"],
        "publish_port": master["publish_port"],
        "root_dir": str(base),
        "pki_dir": str(base / "pki"),
        "cachedir": str(base / "cache"),
        "sock_dir": str(base / "sock"),
        "pidfile": str(base / "minion.pid"),
        "log_file": str(base / "minion.log"),
        "log_level_logfile": "warning",
        "user": "root",
        "enable_fqdns_grains": False,
        "acceptance_wait_time": 2,
    }


class Fleet:
    def __init__(self, root):
        self.root = root
        self.tree = standin_tree(root)
        self.conf = master_conf(root, self.tree)
        self.conf_dir = root / "master-etc"
        self.conf_dir.mkdir()
        (self.conf_dir / "master").write_text(yaml.safe_dump(self.conf))
        self.master = None
        self.minions = {}

    def start_master(self):
        out = open(self.root / "master.out", "ab")  # noqa: SIM115 (kept for the process)
        self.master = subprocess.Popen(
            [str(SALT_BIN / "salt-master"), "-c", str(self.conf_dir), "-l", "warning"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.conf["ret_port"]), timeout=1):
                    return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError("salt-master did not start")

    def add_minions(self, ids):
        for minion_id in ids:
            conf_dir = self.root / "minions" / minion_id / "etc"
            conf_dir.mkdir(parents=True)
            conf = minion_conf(self.root, minion_id, self.conf)
            (conf_dir / "minion").write_text(yaml.safe_dump(conf))
            self.minions[minion_id] = subprocess.Popen(
                [str(SALT_BIN / "salt-minion"), "-c", str(conf_dir), "-l", "quiet"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
            time.sleep(0.2)  # a burst of key exchanges is not what a fleet sees

    def cli(self, tool, *args, timeout):
        return subprocess.run(
            [str(SALT_BIN / tool), "-c", str(self.conf_dir), *map(str, args)],
            capture_output=True, text=True, timeout=timeout + 60, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def salt(self, fun, *args, timeout=600):
        proc = self.cli("salt", "*", fun, *args, "--out=json", "--static",
                        f"--timeout={timeout}", timeout=timeout)  # fmt: skip
        try:
            return json.loads(proc.stdout) if proc.stdout.strip() else {}
        except ValueError:
            return {}

    def run(self, fun, *args, timeout=900):
        return self.cli("salt-run", fun, *args, "--out=json", timeout=timeout)

    def master_procs(self):
        try:
            parent = psutil.Process(self.master.pid)
            return [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def master_cpu(self):
        total = 0.0
        for proc in self.master_procs():
            try:
                t = proc.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
            except psutil.NoSuchProcess:
                pass
        return total

    def master_pss(self):
        return _pss(self.master_procs())

    def minions_pss(self):
        procs = []
        for popen in self.minions.values():
            try:
                parent = psutil.Process(popen.pid)
                procs += [parent, *parent.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        return _pss(procs)

    def stop(self):
        for popen in list(self.minions.values()) + ([self.master] if self.master else []):
            try:
                os.killpg(popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 60
        for popen in list(self.minions.values()) + ([self.master] if self.master else []):
            try:
                popen.wait(max(1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                popen.wait(10)


def _pss(procs):
    total = 0
    for proc in procs:
        try:
            total += proc.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def _cli_cpu():
    """CPU seconds of the finished salt/salt-run processes this bench waited for."""
    usage = getrusage(RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(fleet, func, cli=None):
    """(result, seconds, master CPU seconds); with a dict `cli`, the CPU of the
    CLI process (salt-run runs the runner in its own process) goes to cli["cpu"]."""
    cpu0, cli0, t0 = fleet.master_cpu(), _cli_cpu(), time.monotonic()
    result = func()
    if cli is not None:
        cli["cpu"] = _cli_cpu() - cli0
    return result, time.monotonic() - t0, fleet.master_cpu() - cpu0


def wait_all(fleet, ids, fun, check, timeout):
    """Repeat `salt '*' fun` until check(returns) holds for every id."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = fleet.salt(fun, timeout=60)
        except subprocess.TimeoutExpired:  # the CLI itself starved while minions start
            got = {}
        if all(check(got.get(m)) for m in ids):
            return got
        if time.monotonic() > deadline:
            missing = [m for m in ids if not check(got.get(m))]
            raise TimeoutError(f"{fun}: {len(missing)} minions missing, e.g. {missing[:5]}")
        time.sleep(3)


def highstate_ok(ret):
    return isinstance(ret, dict) and ret and all(v.get("result") for v in ret.values())


def fill_history(fleet, returns, ids, days):
    """Store `days` of scheduled highstate results (every 30 min plus splay,
    each minion its own jid, as scheduled jobs are) through the job cache's
    returner; returns the number of jobs written."""
    conf = dict(fleet.conf)
    opts = salt.config.master_config(str(fleet.conf_dir / "master"))
    opts.update(conf)
    cache = opts.get("master_job_cache") or "local_cache"
    returners = salt.loader.returners(opts, {})
    rnd = random.Random(1)
    now = time.time()
    jobs = 0
    for minion in ids:
        ret = returns.get(minion)
        if not isinstance(ret, dict):
            continue
        for run in range(int(days * 48)):
            stamp = now - 3600 - run * 1800 - rnd.uniform(0, 300)
            jid = time.strftime("%Y%m%d%H%M%S", time.gmtime(stamp)) + f"{rnd.randrange(10**6):06d}"
            returners[f"{cache}.prep_jid"](passed_jid=jid)
            load = {"fun": "state.highstate", "arg": [], "jid": jid, "tgt": minion,
                    "tgt_type": "glob", "user": "Scheduler"}  # fmt: skip
            returners[f"{cache}.save_load"](jid, load)
            returners[f"{cache}.returner"](
                {"jid": jid, "id": minion, "fun": "state.highstate", "return": ret,
                 "retcode": 0, "schedule": "chatmail-highstate"}
            )  # fmt: skip
            jobs += 1
    return jobs


def one_size(size, keep_going=False, days=7):
    root = Path(tempfile.mkdtemp(prefix=f"cmsalt-fleetscale-{size}-"))
    fleet = Fleet(root)
    ids = [f"scale{i:03d}.test" for i in range(1, size + 1)]
    row = {"size": size, "load_before": os.getloadavg()}
    try:
        fleet.start_master()
        _, row["enroll"], row["enroll_cpu"] = timed(
            fleet,
            lambda: (
                fleet.add_minions(ids),
                wait_all(fleet, ids, "test.ping", lambda r: r is True, 600 + 6 * size),
            ),
        )
        _, row["sync"], row["sync_cpu"] = timed(
            fleet, lambda: fleet.salt("saltutil.sync_all", timeout=900)
        )
        first, row["highstate"], row["highstate_cpu"] = timed(
            fleet, lambda: fleet.salt("state.highstate", timeout=1800)
        )
        row["highstate_ok"] = sum(1 for m in ids if highstate_ok(first.get(m)))
        again, row["highstate2"], row["highstate2_cpu"] = timed(
            fleet, lambda: fleet.salt("state.highstate", timeout=1800)
        )
        row["highstate2_ok"] = sum(1 for m in ids if highstate_ok(again.get(m)))
        mine, row["mine"], row["mine_cpu"] = timed(
            fleet, lambda: fleet.salt("mine.update", timeout=900)
        )
        row["mine_ok"] = sum(1 for m in ids if mine.get(m) is True)
        for name in ("status", "dns", "records"):
            cli = {}
            proc, row[name], row[f"{name}_cpu"] = timed(
                fleet, lambda n=name: fleet.run(f"chatmail_fleet.{n}", "text=False"), cli
            )
            row[f"{name}_runner_cpu"] = cli["cpu"]
            data = json.loads(proc.stdout) if proc.returncode == 0 and proc.stdout else {}
            row[f"{name}_ok"] = proc.returncode == 0
            if name == "status":
                row["status_rows"] = sum(
                    1 for m in ids if m in data and data[m]["row"]["highstate"].startswith("ok")
                )
        # a week of scheduled results in the job cache (keep_jobs_seconds of the
        # shipped master config), then the runner again
        t0 = time.monotonic()
        row["history_jobs"] = fill_history(fleet, first, ids, days)
        row["history_fill"] = time.monotonic() - t0
        cli = {}
        proc, row["status_week"], cpu = timed(
            fleet, lambda: fleet.run("chatmail_fleet.status", "text=False"), cli
        )
        row["status_week_cpu"] = cpu + cli["cpu"]
        data = json.loads(proc.stdout) if proc.returncode == 0 and proc.stdout else {}
        row["status_week_rows"] = sum(
            1 for m in ids if m in data and data[m]["row"]["highstate"].startswith("ok")
        )
        # the steady state: the fleet connected, nothing started by anyone
        cpu0 = fleet.master_cpu()
        time.sleep(60)
        row["idle_cpu_per_min"] = fleet.master_cpu() - cpu0
        row["master_pss"] = fleet.master_pss()
        row["minions_pss"] = fleet.minions_pss()
        row["load_after"] = os.getloadavg()
    except Exception as exc:  # a size that fails still reports how far it got
        row["error"] = f"{type(exc).__name__}: {exc}"[:300]
        if not keep_going:
            raise
    finally:
        fleet.stop()
        shutil.rmtree(root, ignore_errors=True)
    return row


def mib(n):
    return f"{n / 1024**2:.0f}"


def print_table(rows):
    print("| minions | enroll s | sync_all s | highstate s (ok) | repeat highstate s (ok)"
          " | mine.update s (ok) | runner status s (rows ok) | runner dns s | runner records s"
          " | master CPU s: highstate / mine | status runner CPU s"
          " | status with a week of jobs s (jobs) | master idle CPU s/min"
          " | master PSS MiB | minions PSS MiB | load before → after |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        if "error" in r and "highstate" not in r:
            print(f"| {r['size']} | failed: {r['error']} |")
            continue
        before = "/".join(f"{x:.1f}" for x in r["load_before"])
        after = "/".join(f"{x:.1f}" for x in r.get("load_after", (0, 0, 0)))
        print(
            f"| {r['size']} | {r['enroll']:.0f} | {r['sync']:.0f}"
            f" | {r['highstate']:.0f} ({r['highstate_ok']}) | {r['highstate2']:.0f}"
            f" ({r['highstate2_ok']}) | {r['mine']:.1f} ({r['mine_ok']})"
            f" | {r['status']:.1f} ({r.get('status_rows')}) | {r['dns']:.1f} | {r['records']:.1f}"
            f" | {r['highstate_cpu']:.0f} / {r['mine_cpu']:.0f}"
            f" | {r['status_runner_cpu'] + r['status_cpu']:.1f}"
            f" | {r['status_week']:.1f} ({r['history_jobs']})"
            f" | {r['idle_cpu_per_min']:.1f} | {mib(r['master_pss'])} | {mib(r['minions_pss'])}"
            f" | {before} → {after} |" + (f" error: {r['error']}" if "error" in r else "")
        )


def main(argv=None):
    release_harness_at_exit()
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10,50,100,200")
    parser.add_argument("--keep-going", action="store_true", help="report a failed size, go on")
    parser.add_argument(
        "--history-days", type=float, default=7, help="days of scheduled results in the job cache"
    )
    args = parser.parse_args(argv)
    rows = []
    for size in (int(n) for n in args.sizes.split(",")):
        available = psutil.virtual_memory().available
        if available < size * MINION_MEM + 2 * 1024**3:
            print(f"(skipped {size} minions: {mib(available)} MiB available)\n")
            continue
        rows.append(one_size(size, args.keep_going, args.history_days))
        print(f"<!-- {json.dumps(rows[-1], default=str)} -->", flush=True)
    print_table(rows)
    return 0 if rows and all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
