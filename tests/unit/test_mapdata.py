"""The merged map for pillar.example, compared with a committed reference, so
every change of defaults, merge or resolution shows up in review.

Regenerate after a deliberate change:
    ./cmsalt docs   (or CHATMAIL_UPDATE_MAPDATA=1 python -m pytest tests/unit/test_mapdata.py)
"""

import os
import pathlib

import yaml

from tests import paramdocs

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
REFERENCE = HERE / "mapdata" / "example.yaml"


def test_pillar_example_is_the_example_host_pillar():
    assert (REPO / "pillar.example").read_text() == (
        REPO / "pillar" / "hosts" / "example.sls"
    ).read_text()


def test_pillar_example_shows_every_default(defaults, example_pillar):
    """pillar.example documents every key: same key tree as defaults.yaml."""

    def keys(tree, prefix=""):
        out = set()
        for key, value in tree.items():
            out.add(prefix + key)
            if isinstance(value, dict) and value:
                out |= keys(value, prefix + key + ":")
        return out

    want = keys(defaults["chatmail"])
    have = keys(example_pillar)
    assert want - have == set()


def test_mapdata_matches_reference(cc, defaults, example_pillar):
    text = paramdocs.mapdata_text(cc.build, defaults, example_pillar)
    if os.environ.get("CHATMAIL_UPDATE_MAPDATA"):
        REFERENCE.write_text(text)
    assert yaml.safe_load(text) == yaml.safe_load(REFERENCE.read_text())
