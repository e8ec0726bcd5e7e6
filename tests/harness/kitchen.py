"""Run the suites of kitchen.yml on systemd test hosts, the way Test Kitchen
with kitchen-salt (salt_solo) and the shell verifier would:
create -> converge -> verify -> destroy.

Test Kitchen cannot be installed on the CI machines (no gem server), so this
reads the same kitchen.yml: suite names, pillars (pillars / pillars_from_files),
salt_run_highstate, pre_salt_command and the verifier command.  Paths of the
kitchen sandbox in commands are mapped to the harness host's paths.

    python -m tests.harness.kitchen list
    python -m tests.harness.kitchen test [suite ...] [--keep]
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import REPO, ensure_infra, hosts

KITCHEN_YML = REPO / "kitchen.yml"
# kitchen-salt sandbox paths -> harness host paths
PATH_MAP = {
    "/tmp/kitchen/srv/salt": hosts.REPO_MOUNT,
    "/tmp/kitchen/etc/salt": "/etc/salt",
}


def load(path=KITCHEN_YML):
    return yaml.safe_load(Path(path).read_text())


def _merge(base, over):
    out = dict(base or {})
    for key, value in (over or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@dataclass
class Suite:
    name: str
    platform: str
    provisioner: dict
    verifier: dict
    driver: dict

    @property
    def instance(self):
        return f"{self.name}-{self.platform}".replace(".", "")

    @property
    def run_highstate(self):
        return bool(self.provisioner.get("salt_run_highstate", True))

    def pillar_files(self):
        """{file name in the pillar root: text} as kitchen-salt writes them."""
        files = {}
        for name, data in (self.provisioner.get("pillars") or {}).items():
            files[name] = yaml.safe_dump(data, default_flow_style=False)
        for name, src in (self.provisioner.get("pillars_from_files") or {}).items():
            files[name] = (REPO / src).read_text()
        return files

    def pillar(self, name="chatmail.sls"):
        return yaml.safe_load(self.pillar_files().get(name, "")) or {}


def suites(config=None):
    config = config or load()
    out = []
    for platform in config.get("platforms") or [{"name": "default"}]:
        for suite in config["suites"]:
            out.append(
                Suite(
                    name=suite["name"],
                    platform=platform["name"],
                    provisioner=_merge(config.get("provisioner"), suite.get("provisioner")),
                    verifier=_merge(config.get("verifier"), suite.get("verifier")),
                    driver=_merge(
                        _merge(config.get("driver"), platform.get("driver")), suite.get("driver")
                    ),
                )
            )
    return out


def map_paths(command):
    for src, dst in PATH_MAP.items():
        command = command.replace(src, dst)
    return command


@dataclass
class Stage:
    ok: bool
    seconds: float
    output: str = ""


@dataclass
class SuiteResult:
    suite: str
    stages: dict = field(default_factory=dict)

    @property
    def ok(self):
        return all(stage.ok for stage in self.stages.values()) and "verify" in self.stages

    def summary(self):
        lines = [f"suite {self.suite}: {'OK' if self.ok else 'FAILED'}"]
        for name, stage in self.stages.items():
            lines.append(f"  {name:9} {'ok' if stage.ok else 'FAILED'} {stage.seconds:.0f}s")
            if not stage.ok:
                lines.append("    " + stage.output[-3000:].replace("\n", "\n    "))
        return "\n".join(lines)


def _host_name(suite):
    return "cmsalt-kitchen-" + re.sub(r"[^a-z0-9-]", "", suite.instance)


def _fqdn(suite):
    domains = list((suite.pillar().get("chatmail") or {}).get("domains") or {})
    return domains[0].lstrip("_") if domains else f"{suite.name}.test"


def verify_env(suite, host):
    env = dict(os.environ)
    env.update(
        {
            "KITCHEN_HOSTNAME": host.ip,
            "KITCHEN_SUITE": suite.name,
            "KITCHEN_PLATFORM": suite.platform,
            "KITCHEN_INSTANCE": suite.instance,
            "KITCHEN_USERNAME": "root",
            "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
        }
    )
    env.pop("PYTEST_XDIST_WORKER", None)
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


def run_suite(suite, keep=False, log=print):
    """create -> converge -> verify -> destroy of one Suite; returns SuiteResult."""
    result = SuiteResult(suite.name)
    pillar_dir = Path(tempfile.mkdtemp(prefix=f"cmsalt-kitchen-{suite.name}-"))
    host = None

    def stage(name, func):
        t0 = time.monotonic()
        try:
            ok, output = func()
        except Exception as exc:  # a stage failing ends the suite, destroy still runs
            ok, output = False, f"{type(exc).__name__}: {exc}"
        result.stages[name] = Stage(ok, time.monotonic() - t0, output)
        log(f"[kitchen] {suite.instance}: {name} {'ok' if ok else 'FAILED'}")
        return ok

    def create():
        nonlocal host
        for name, text in suite.pillar_files().items():
            (pillar_dir / name).write_text(text)
        host = hosts.boot(_host_name(suite), _fqdn(suite), pillar_dir=pillar_dir, keep=keep)
        return True, host.ip

    def converge():
        outputs = []
        pre = suite.provisioner.get("pre_salt_command")
        if pre:
            proc = host.sh(map_paths(pre), check=False)
            outputs.append(proc.stdout + proc.stderr)
            if proc.returncode != 0:
                return False, "\n".join(outputs)
        if not suite.run_highstate:
            return True, "salt_run_highstate: false"
        res = hosts.converge(host)
        return res.ok, res.summary()

    def verify():
        command = map_paths(suite.verifier["command"])
        if suite.verifier.get("remote_exec"):
            proc = host.sh(command, check=False)
        else:
            proc = subprocess.run(
                command,
                shell=True,
                cwd=REPO,
                env=verify_env(suite, host),
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
                timeout=900,
            )
        return proc.returncode == 0, proc.stdout + proc.stderr

    try:
        if stage("create", create) and stage("converge", converge):
            stage("verify", verify)
    finally:
        if not keep and host is not None:
            stage("destroy", lambda: (hosts.destroy(host) or True, ""))
        shutil.rmtree(pillar_dir, ignore_errors=True)
    return result


def run_suites(names=None, keep=False, parallel=4, log=print):
    """Run the named suites (all by default) in parallel; {name: SuiteResult}."""
    ensure_infra()
    selected = [s for s in suites() if not names or s.name in names]
    unknown = set(names or ()) - {s.name for s in selected}
    if unknown:
        raise KeyError(f"no such suite in kitchen.yml: {', '.join(sorted(unknown))}")
    with ThreadPoolExecutor(max(1, min(parallel, len(selected)))) as pool:
        results = list(pool.map(lambda s: run_suite(s, keep=keep, log=log), selected))
    return {r.suite: r for r in results}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tests.harness.kitchen")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="suites of kitchen.yml")
    test = sub.add_parser("test", help="create, converge, verify, destroy")
    test.add_argument("suites", nargs="*")
    test.add_argument("--keep", action="store_true", help="keep the hosts (no destroy)")
    test.add_argument("--parallel", type=int, default=4)
    args = parser.parse_args(argv)
    if args.cmd == "list":
        for suite in suites():
            files = ", ".join(suite.provisioner.get("pillars_from_files", {}).values())
            print(f"{suite.instance:28} {files}")
        return 0
    results = run_suites(args.suites, keep=args.keep, parallel=args.parallel)
    for res in results.values():
        print(res.summary())
    return 0 if all(r.ok for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
