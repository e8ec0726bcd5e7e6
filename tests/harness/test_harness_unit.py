"""Harness pieces that need no docker: salt output parsing, zone text, mirror detection,
chatmail/relay's suite (skip list, outcome check, missing source)."""

import json
import shutil
import subprocess

import pytest

from tests.harness import dns, network
from tests.harness.hosts import minion_config, parse_state_output


def state(sid, fun, result, changes=None, comment="", run_num=0):
    key = f"{fun.split('.')[0]}_|-{sid}_|-{sid}-name_|-{fun.split('.')[1]}"
    return key, {
        "__id__": sid,
        "result": result,
        "changes": changes or {},
        "comment": comment,
        "__run_num__": run_num,
    }


def test_parse_results_counts_changed_and_failed():
    out = dict(
        [
            state("a-pkg-installed", "pkg.installed", True, {"cron": {"new": "1"}}, run_num=0),
            state("b-file-managed", "file.managed", True, run_num=1),
            state("c-cmd-run", "cmd.run", False, {"stderr": "boom"}, "failed", run_num=2),
        ]
    )
    res = parse_state_output(2, json.dumps({"local": out}), "")
    assert res.changed == ["a-pkg-installed", "c-cmd-run"]
    assert res.failed == [("c-cmd-run", "failed")]
    assert not res.ok
    assert "stderr: boom" in res.summary()


def test_parse_render_error_list():
    stdout = json.dumps({"local": ["Rendering SLS 'base:chatmail.validate' failed: bad key"]})
    res = parse_state_output(1, stdout, "")
    assert res.errors and "bad key" in res.errors[0]
    assert res.changed == [] and not res.ok


def test_parse_garbage_is_an_error():
    res = parse_state_output(1, "Traceback ...", "boom")
    assert not res.ok and "unparseable" in res.errors[0]


def test_minion_config_is_local_with_both_roots():
    conf = json.loads(minion_config("relay.test"))
    assert conf["id"] == "relay.test" and conf["file_client"] == "local"
    assert conf["pillar_roots"] == {"base": ["/srv/pillar"]}
    assert conf["file_roots"]["base"][0] == "/srv/chatmail-salt/salt"


def test_mirror_is_an_http_debian_archive():
    mirror = network.debian_mirror()
    assert mirror.startswith("http") and mirror.endswith("/debian")


@pytest.mark.skipif(not shutil.which("nsd-checkzone"), reason="nsd not installed")
def test_zone_text_is_a_valid_zone(tmp_path):
    text = dns.zone_text(
        "chat1.test", ["@ IN A 172.31.77.20", "@ IN MX 10 chat1.test.", '_dmarc IN TXT "v=DMARC1"']
    )
    path = tmp_path / "chat1.test.zone"
    path.write_text(text)
    subprocess.run(["nsd-checkzone", "chat1.test", str(path)], check=True, capture_output=True)


def test_refsuite_skip_list_matches_parametrized_and_class_members():
    from tests.harness import refsuite

    assert refsuite.skip_reason("test_1_basic.py::TestSSHExecutor::test_ls")
    assert refsuite.skip_reason("test_1_basic.py::test_rewrite_subject")
    assert refsuite.skip_reason("test_1_basic.py::test_rewrite_subject_x") is None
    assert refsuite.skip_reason("test_0_login.py::test_no_vrfy") is None
    run = refsuite.Run(
        outcomes={
            "test_0_login.py::test_no_vrfy": "passed",
            "test_0_login.py::test_login_same_password[imap]": "failed",
            "test_1_basic.py::TestSSHExecutor::test_ls": "skipped",
            "test_1_basic.py::test_deployed_state": "passed",
            "test_1_basic.py::test_remote[smtp]": "skipped",
        },
        reasons={},
        output="",
        seconds=0,
    )
    # a failure, a listed test that ran, an unlisted test that skipped itself
    assert run.unexpected() == {
        "test_0_login.py::test_login_same_password[imap]": "failed",
        "test_1_basic.py::test_deployed_state": "passed",
        "test_1_basic.py::test_remote[smtp]": "skipped",
    }


def test_refsuite_unavailable_without_the_source(monkeypatch, tmp_path):
    from tests.harness import refsuite

    monkeypatch.setenv("CMSALT_REFERENCE_REPO", str(tmp_path / "missing"))
    assert "CMSALT_REFERENCE_REPO" in refsuite.unavailable()
    empty = tmp_path / "empty.git"
    subprocess.run(["git", "init", "-q", "--bare", str(empty)], check=True)
    monkeypatch.setenv("CMSALT_REFERENCE_REPO", str(empty))
    assert refsuite.COMMIT[:12] in refsuite.unavailable()


RELEASING_PROCESS = """
import sys, time
from tests import harness
print(harness.SLOT, flush=True)
harness.release()
print("released", flush=True)
time.sleep(30)
"""


def test_a_released_slot_is_free_while_its_process_still_runs():
    """Sessions ending together: each must see the others' released slots
    free, or none of them stops dockerd and the apt proxy."""
    import subprocess
    import sys

    from tests import harness

    proc = subprocess.Popen(
        [sys.executable, "-c", RELEASING_PROCESS],
        cwd=harness.REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        slot = int(proc.stdout.readline())
        assert proc.stdout.readline().strip() == "released"
        assert slot not in harness.slots_in_use()
    finally:
        proc.kill()
        proc.wait()


def test_pid_alive_refuses_a_reused_process_number(tmp_path):
    """A stale pidfile names whoever got its number later: neither a process
    started after the file was written nor one without the expected command
    line is taken for the daemon (stop_process would kill it)."""
    import os
    import subprocess
    import time

    from tests import harness

    def state():
        """What pid_alive saw, for a failure's message (it failed once in a
        CI run, not since: this says why if it does again)."""
        facts = {"poll": proc.poll(), "now": time.time(), "mtime": pidfile.stat().st_mtime}
        for name in ("stat", "cmdline"):
            try:
                with open(f"/proc/{proc.pid}/{name}", "rb") as proc_file:
                    facts[name] = proc_file.read()
            except OSError as exc:
                facts[name] = exc
        facts["btime"] = harness._boot_time()
        facts["fds"] = len(os.listdir("/proc/self/fd"))
        return facts

    proc = subprocess.Popen(["sleep", "60"])
    try:
        pidfile = tmp_path / "daemon.pid"
        pidfile.write_text(f"{proc.pid}\n")
        assert harness.pid_alive(pidfile) == proc.pid, state()
        assert harness.pid_alive(pidfile, "sleep") == proc.pid, state()
        assert harness.pid_alive(pidfile, "nsd -d -c /somewhere/nsd.conf") is None
        assert not harness.stop_process(pidfile, "nsd")
        assert proc.poll() is None
        # the file is older than the process: written for an earlier one
        past = time.time() - 120
        os.utime(pidfile, (past, past))
        assert harness.pid_alive(pidfile) is None
        assert not harness.stop_process(pidfile)
        assert proc.poll() is None
        pidfile.touch()
        assert harness.stop_process(pidfile, "sleep")
        assert proc.wait(10) is not None
    finally:
        proc.kill()
        proc.wait()
