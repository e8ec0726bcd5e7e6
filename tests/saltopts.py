"""Salt configuration for tests: local minions over this repository's state
tree (custom modules reach it through salt://_modules like on a minion) and
the pillar trees they read.  Used by the unit and module tests, and for the
pillar of test hosts by the harness."""

import json
import pathlib

import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
TOP = "base:\n  '*':\n    - chatmail\n"


def write_pillar_tree(directory, chatmail):
    """A pillar tree whose top.sls gives every minion `chatmail.sls`, holding
    ``{"chatmail": chatmail}`` (JSON is YAML; a str is written as it is).  The
    directory is made world-readable (salt-call in test hosts reads it through
    a bind mount).  Returns it as a Path."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    (directory / "top.sls").write_text(TOP)
    text = chatmail if isinstance(chatmail, str) else json.dumps({"chatmail": chatmail}, indent=2)
    (directory / "chatmail.sls").write_text(text + "\n")
    return directory


def local_paths(root: pathlib.Path) -> dict:
    """Minion options that keep all of a local minion's state below ``root``."""
    return {
        "file_client": "local",
        "root_dir": str(root),
        "cachedir": str(root / "cache"),
        "extension_modules": str(root / "extmods"),
        "pki_dir": str(root / "pki"),
        "sock_dir": str(root / "sock"),
        "log_file": str(root / "minion.log"),
        "file_roots": {"base": [str(REPO / "salt")]},
    }


def minion_opts(root: pathlib.Path, minion_id: str) -> dict:
    """Options of a local minion (for salt's loader in this process); its
    pillar is read from ``root/pillar`` (created here)."""
    import salt.config

    (root / "pillar").mkdir(exist_ok=True)
    opts = salt.config.minion_config(None)
    opts.update(local_paths(root))
    opts.update(
        {
            "id": minion_id,
            "pillar_roots": {"base": [str(root / "pillar")]},
            "fileserver_backend": ["roots"],
            "grains_cache": False,
        }
    )
    return opts


def masterless_minion(
    root: pathlib.Path,
    minion_id: str,
    chatmail: dict | str | None = None,
    pillar_dir: pathlib.Path | None = None,
):
    """Write a masterless minion config (for ``salt-call --local``) under ``root``
    that serves this repository's ``salt/`` and a pillar tree: ``pillar_dir`` as
    it is, or ``root/pillar`` holding ``chatmail`` (see write_pillar_tree; an
    empty chatmail pillar unless given).  Returns the path of the minion config
    file; its directory also works as ``--config-dir``."""
    if pillar_dir is None:
        pillar_dir = write_pillar_tree(root / "pillar", {} if chatmail is None else chatmail)
    conf_dir = root / "conf"
    conf_dir.mkdir(exist_ok=True)
    conf = conf_dir / "minion"
    opts = {"id": minion_id, **local_paths(root), "pillar_roots": {"base": [str(pillar_dir)]}}
    conf.write_text(yaml.safe_dump(opts))
    return conf
