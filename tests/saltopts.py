"""Minion options for a masterless salt loader over this repository's state
tree (custom modules reach it through salt://_modules like on a minion)."""

import pathlib

import salt.config

REPO = pathlib.Path(__file__).resolve().parents[1]


def minion_opts(root: pathlib.Path, minion_id: str) -> dict:
    """Options of a local minion keeping all its state below ``root``; its
    pillar is read from ``root/pillar`` (created here)."""
    (root / "pillar").mkdir(exist_ok=True)
    opts = salt.config.minion_config(None)
    opts.update(
        {
            "id": minion_id,
            "root_dir": str(root),
            "cachedir": str(root / "cache"),
            "pki_dir": str(root / "pki"),
            "sock_dir": str(root / "sock"),
            "log_file": str(root / "minion.log"),
            "file_client": "local",
            "file_roots": {"base": [str(REPO / "salt")]},
            "pillar_roots": {"base": [str(root / "pillar")]},
            "fileserver_backend": ["roots"],
            "grains_cache": False,
        }
    )
    return opts
