"""The files derived from chatmaild/src/chatmaild/params.json are up to date
(rewrite them with ./cmsalt docs)."""

import pytest

from tests import paramdocs


@pytest.mark.parametrize("path", sorted(paramdocs.expected_files(), key=str), ids=lambda p: p.name)
def test_derived_file_is_current(path):
    want = paramdocs.expected_files()[path]
    assert path.read_text() == want, f"{path} is out of date: run ./cmsalt docs"
