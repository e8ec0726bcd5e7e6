"""A short run of every fuzz target (``fuzz/``, ``./cmsalt fuzz`` runs the
long one): about 1000 generated cases each, failing on any finding."""

import logging
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fuzz.targets import TARGETS, run_target  # noqa: E402

CASES = 1000


@pytest.mark.parametrize("name", list(TARGETS))
def test_fuzz_target_short(name):
    if name == "migrate":
        pytest.importorskip("saltfactories")
    logging.disable(logging.CRITICAL)
    try:
        result = run_target(name, CASES)
    finally:
        logging.disable(logging.NOTSET)
    assert not result.findings, "\n".join(result.findings)
    assert result.cases >= CASES // 2
    assert result.accepted > 0, f"{name}: the generator never reached the accepting side"
