"""chatmail/relay's own online test suite, run against relays of this tree.

chatmail/relay tests a deployed relay with `cmdeploy/src/cmdeploy/tests/online`
(pytest; the relay is named by a `chatmail.ini`, a second one by
`CHATMAIL_DOMAIN2`, ssh access by `CHATMAIL_SSH`).  This module installs that
suite from chatmail/relay's source at the pinned COMMIT and runs it as a
subprocess:

- the source comes from a git directory holding COMMIT
  (`CMSALT_REFERENCE_REPO`, by default the mirror this machine keeps of
  chatmail/relay); neither PyPI nor this tree carries it, so without that
  git directory the suite is not run (`unavailable()` says why);
- `chatmaild` and `cmdeploy` at COMMIT are extracted into the cache and
  installed (editable, as chatmail/relay's own venv does) into a venv of
  their own, with the dependency versions of `constraints.txt`: chatmail/relay's
  `chatmaild` package must not meet this tree's package of the same name;
- `plugin/cmsalt_refsuite.py` is loaded into the run: it skips the tests of
  SKIPS with their reason and fixes the suite where the suite itself is at
  fault (FIXES in that file);
- ssh: the relay runs sshd, and the suite's plain `ssh root@<relay>` goes
  through an `ssh` wrapper in front of PATH that adds this run's key and
  known_hosts (`ssh_access`).

docs/compat.md lists the skipped tests with their reasons.
"""

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .. import CACHE

COMMIT = "48ad92bf24426ef737deded1c0d87438a4b18dab"
DEFAULT_REPO = "/work/.mirror/chatmail+relay/repo"
HERE = Path(__file__).resolve().parent
CONSTRAINTS = HERE / "constraints.txt"
PLUGIN_DIR = HERE / "plugin"
ONLINE = "cmdeploy/src/cmdeploy/tests/online"
WHEELS = CACHE / "wheels"

# Tests of the suite that are not run, with the reason (node id below
# tests/online/, without parameters: every parametrization).
SKIPS = {
    "test_1_basic.py::TestSSHExecutor": (
        "tests chatmail/relay's own ssh executor (cmdeploy.sshexec: its logging, "
        "its DNS checks run on the relay against the internet), not the relay"
    ),
    "test_1_basic.py::test_nginx_access_log_only_defined_once": (
        "counts access_log lines in `nginx -T` (chatmail/relay writes an nginx.conf "
        "with one); this tree keeps Debian's nginx.conf, whose http block logs, and "
        "switches it off in the relay's vhost (`access_log off;`): two lines, "
        "nothing logged twice"
    ),
    "test_1_basic.py::test_deployed_state": (
        "compares chatmail/relay's /etc/chatmail-version with the git state of a "
        "cmdeploy checkout; this tree deploys with salt and writes no such file"
    ),
    "test_1_basic.py::test_timezone_env": (
        "checks TZ=:/etc/localtime in an ssh login's environment, a setting "
        "chatmail/relay's deploy writes for itself; not relay behaviour"
    ),
    "test_3_status.py::test_status_cmd": (
        "runs chatmail/relay's `cmdeploy status` (its deploy tool over ssh); this "
        "tree's status is chatmail_status.report (tests/hosts/test_status.py)"
    ),
    "test_2_deltachat.py::test_hide_senders_ip_address": (
        "needs the internet (asks icanhazip.com for the public address)"
    ),
    "test_1_basic.py::test_rewrite_subject": (
        "sends encrypted mail with a readable Subject and expects it rewritten to "
        "[...]; this tree refuses such mail instead (523 Encryption Needed: Subject "
        "is not a placeholder such as [...], docs/security-chatmaild.md): a chat "
        "client never writes one, and the header cleanup still makes the Subject "
        "of accepted mail [...]"
    ),
    "test_1_basic.py::test_bounces_are_dkim_signed": (
        "the suite skips it itself for an IP-only relay (no DKIM there)"
    ),
}


def source_repo():
    return Path(os.environ.get("CMSALT_REFERENCE_REPO", DEFAULT_REPO))


def _git(*args, **kw):
    return subprocess.run(
        ["git", f"--git-dir={source_repo()}", *args],
        capture_output=True, stdin=subprocess.DEVNULL, check=False, **kw,
    )  # fmt: skip


def unavailable():
    """Why the suite cannot be installed on this machine (None: it can)."""
    repo = source_repo()
    if not shutil.which("git"):
        return "git is not installed"
    if not repo.is_dir():
        return (
            f"no chatmail/relay git directory at {repo} (set CMSALT_REFERENCE_REPO to a "
            f"clone holding {COMMIT[:12]}): its test suite is on neither PyPI nor in this tree"
        )
    if _git("cat-file", "-e", f"{COMMIT}^{{commit}}").returncode != 0:
        return f"{repo} does not hold chatmail/relay commit {COMMIT[:12]}"
    return None


def workdir():
    return CACHE / f"refsuite-{COMMIT[:12]}"


def _stamp():
    return hashlib.sha256(CONSTRAINTS.read_bytes() + COMMIT.encode()).hexdigest()[:16]


def prepare():
    """The suite's source and venv in the cache (made once per COMMIT and
    constraints.txt; a lock keeps concurrent sessions from building it twice).
    Returns the work directory (src/, venv/)."""
    root = workdir()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = root / ".ready"
        if stamp.exists() and stamp.read_text() == _stamp():
            return root
        for sub in ("src", "venv"):
            shutil.rmtree(root / sub, ignore_errors=True)
        (root / "src").mkdir()
        archive = _git("archive", "--format=tar", COMMIT, "chatmaild", "cmdeploy")
        if archive.returncode != 0:
            raise RuntimeError(f"git archive {COMMIT}: {archive.stderr.decode()}")
        subprocess.run(["tar", "-x", "-C", str(root / "src")], input=archive.stdout, check=True)
        subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
        pip = [str(root / "venv/bin/pip"), "install", "-q", "-c", str(CONSTRAINTS)]
        if WHEELS.is_dir():
            pip += ["--find-links", str(WHEELS)]
        proc = subprocess.run(
            [*pip, "pytest-timeout", "-e", str(root / "src/chatmaild"),
             "-e", str(root / "src/cmdeploy")],
            capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"installing chatmail/relay's suite failed:\n{proc.stderr[-4000:]}")
        stamp.write_text(_stamp())
    return root


def write_ini(path, domain, params=None):
    """A chatmail/relay chatmail.ini naming `domain` (the suite reads its
    limits from it: they must be the relay's)."""
    lines = ["[params]", f"mail_domain = {domain}"]
    lines += [f"{key} = {value}" for key, value in (params or {}).items()]
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


def ssh_access(host, directory):
    """sshd on `host` with a key made here; returns a directory holding an
    `ssh` that uses that key and a known_hosts of this run (test hosts reuse
    addresses with new host keys), for the front of the suite's PATH."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = directory / "id_ed25519"
    if not key.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
            check=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    host.sh(
        "command -v sshd >/dev/null || DEBIAN_FRONTEND=noninteractive"
        " apt-get install -y -q openssh-server >/dev/null; systemctl enable --now ssh",
        timeout=600,
    )
    host.exec("mkdir", "-p", "-m", "0700", "/root/.ssh")
    host.write_file("/root/.ssh/authorized_keys", key.with_suffix(".pub").read_text(), "0600")
    config = directory / "ssh_config"
    config.write_text(
        f"Host *\n  IdentityFile {key}\n  IdentitiesOnly yes\n  User root\n"
        f"  UserKnownHostsFile {directory / 'known_hosts'}\n"
        "  StrictHostKeyChecking no\n  LogLevel ERROR\n  BatchMode yes\n"
    )
    bindir = directory / "bin"
    bindir.mkdir(exist_ok=True)
    wrapper = bindir / "ssh"
    real = shutil.which("ssh") or "/usr/bin/ssh"
    wrapper.write_text(f'#!/bin/sh\nexec {real} -F {config} "$@"\n')
    wrapper.chmod(0o755)
    return bindir


@dataclass
class Run:
    outcomes: dict  # node id below tests/online/ -> passed | failed | skipped
    reasons: dict  # node id -> skip reason
    output: str
    seconds: float

    def unexpected(self):
        """Node ids whose outcome is not the expected one: passed, or skipped
        for the tests of SKIPS."""
        bad = {}
        for nodeid, outcome in self.outcomes.items():
            want = "skipped" if skip_reason(nodeid) else "passed"
            if outcome != want:
                bad[nodeid] = outcome
        return bad


def skip_reason(nodeid):
    for key, reason in SKIPS.items():
        if nodeid == key or nodeid.startswith((key + "[", key + "::")):
            return reason
    return None


def run(
    root, ini, domain2=None, ssh_bindir=None, ssh_host=None, timeout=900, per_test=240, args=()
):
    """Run the suite in `root` (prepare()) against the relay of `ini` (more
    pytest arguments: `args`)."""
    with tempfile.TemporaryDirectory(prefix="cmsalt-refsuite-") as tmp:
        tmp = Path(tmp)
        report = tmp / "report.json"
        skips = tmp / "skips.json"
        skips.write_text(json.dumps(SKIPS))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "CHATMAIL"))}
        env.pop("PYTHONPATH", None)
        env.update(
            CHATMAIL_INI=str(ini),
            PYTHONPATH=str(PLUGIN_DIR),
            CMSALT_REFSUITE_SKIPS=str(skips),
            CMSALT_REFSUITE_REPORT=str(report),
            PATH=os.pathsep.join(
                p for p in (str(ssh_bindir or ""), str(root / "venv/bin"), env.get("PATH", "")) if p
            ),
        )
        if domain2:
            env["CHATMAIL_DOMAIN2"] = domain2
        if ssh_host:
            env["CHATMAIL_SSH"] = ssh_host
        argv = [
            str(root / "venv/bin/python"), "-m", "pytest", str(root / "src" / ONLINE),
            "-p", "cmsalt_refsuite", "-p", "no:cacheprovider", f"--timeout={per_test}",
            "-o", "console_output_style=classic", *args,
        ]  # fmt: skip
        start = time.monotonic()
        proc = subprocess.run(
            argv, cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        seconds = time.monotonic() - start
        data = json.loads(report.read_text()) if report.exists() else {}
    return Run(data.get("outcomes", {}), data.get("reasons", {}), proc.stdout, seconds)
