"""Fixtures for the state-tree unit tests: the chatmail_config module imported
as plain Python, the defaults and the example pillar."""

import importlib.util
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
