"""Fixtures for the state-tree unit tests: the chatmail_config module imported
as plain Python, the defaults and the example pillar."""

import importlib.util
import json
import pathlib
import sys

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
CHATMAILD_SRC = REPO / "chatmaild" / "src"


def _load_module(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def cc():
    """_modules/chatmail_config.py, outside the Salt loader (it needs none)."""
    return _load_module("chatmail_config_under_test", REPO / "_modules" / "chatmail_config.py")


@pytest.fixture(scope="session")
def chatmaild_config():
    if str(CHATMAILD_SRC) not in sys.path:
        sys.path.insert(0, str(CHATMAILD_SRC))
    import chatmaild.config

    return chatmaild.config


@pytest.fixture(scope="session")
def defaults():
    return yaml.safe_load((REPO / "salt" / "chatmail" / "defaults.yaml").read_text())


@pytest.fixture(scope="session")
def example_pillar():
    return yaml.safe_load((REPO / "pillar.example").read_text())["chatmail"]


def masterless_minion(root: pathlib.Path, minion_id: str, pillar: dict | None = None):
    """Write a masterless minion config under ``root`` that serves this
    repository's ``salt/`` and a pillar dir ``root/pillar`` (top: chatmail).

    ``pillar`` (the value of ``chatmail:``) is written when given. Returns the
    path of the minion config file; its directory also works as
    ``--config-dir``."""
    pillar_dir = root / "pillar"
    pillar_dir.mkdir(exist_ok=True)
    (pillar_dir / "top.sls").write_text("base:\n  '*':\n    - chatmail\n")
    if pillar is not None:
        write_pillar(root, pillar)
    conf_dir = root / "conf"
    conf_dir.mkdir(exist_ok=True)
    conf = conf_dir / "minion"
    conf.write_text(
        yaml.safe_dump(
            {
                "id": minion_id,
                "file_client": "local",
                "root_dir": str(root),
                "cachedir": str(root / "cache"),
                "extension_modules": str(root / "extmods"),
                "pki_dir": str(root / "pki"),
                "log_file": str(root / "minion.log"),
                "file_roots": {"base": [str(REPO / "salt")]},
                "pillar_roots": {"base": [str(pillar_dir)]},
            }
        )
    )
    return conf


def write_pillar(root: pathlib.Path, chatmail: dict):
    """Replace the chatmail pillar of a :func:`masterless_minion`."""
    (root / "pillar" / "chatmail.sls").write_text(json.dumps({"chatmail": chatmail}))
