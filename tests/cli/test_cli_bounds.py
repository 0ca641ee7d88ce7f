"""Numbers given to the CLI that no run could honour are usage errors, refused before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.testing import Yard

RECIPE = Path(__file__).resolve().parents[2] / "examples" / "flan-t5" / "recipe-tiny.yaml"


@pytest.mark.parametrize("nproc", ["0", "-2"])
def test_train_nproc_below_one_is_refused(yard: Yard, nproc: str) -> None:
    # It was taken for one process: a typo such as --nproc 0 trained alone, without a word.
    r = yard("train", RECIPE, "--nproc", nproc)
    assert r.code == 2
    assert "--nproc" in r.error
