"""kitchen.yml is a valid kitchen-salt config, and its suites pass when the
harness runs them (create -> converge -> verify -> destroy) on systemd hosts."""

import os
from pathlib import Path

import pytest

from tests.harness import kitchen

SUITES = ["single-domain", "two-domains", "external-tls", "bad-pillar"]
REPO = Path(__file__).resolve().parents[2]
KEEP = os.environ.get("CMSALT_KEEP_HOSTS") == "1"


def test_kitchen_yml_is_a_kitchen_salt_config():
    config = kitchen.load()
    assert config["driver"]["name"] in ("docker", "exec")
    assert config["provisioner"]["name"] == "salt_solo"
    assert config["verifier"]["name"] == "shell"
    assert "pytest" in config["verifier"]["command"]
    assert [s["name"] for s in config["suites"]] == SUITES
    for suite in kitchen.suites(config):
        files = suite.provisioner["pillars_from_files"]
        assert list(files) == ["chatmail.sls"]
        for src in files.values():
            assert (REPO / src).is_file(), src
        top = suite.provisioner["pillars"]["top.sls"]
        assert top == {"base": {"*": ["chatmail"]}}
        assert suite.pillar()["chatmail"]["domains"]
    commands = [s.provisioner.get("pre_salt_command", "") for s in kitchen.suites(config)]
    commands += [s.verifier["command"] for s in kitchen.suites(config)]
    for command in commands:
        for word in command.split():
            if word.startswith("/tmp/kitchen/srv/salt/"):
                assert (REPO / word[len("/tmp/kitchen/srv/salt/") :]).is_file(), word


def test_bad_pillar_suite_expects_failure():
    (bad,) = [s for s in kitchen.suites() if s.name == "bad-pillar"]
    assert bad.run_highstate is False
    assert bad.verifier["remote_exec"] is True


@pytest.fixture(scope="module")
def suite_results():
    return kitchen.run_suites(SUITES, keep=KEEP)


@pytest.mark.hosts
@pytest.mark.fleet
@pytest.mark.parametrize("suite", SUITES)
def test_suite_passes(suite_results, suite):
    result = suite_results[suite]
    assert result.ok, result.summary()
