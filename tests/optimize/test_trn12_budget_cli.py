"""`yard optimize` says the accuracy budget as it was given (``rougeL=-0.05``), not as the Python dict it
was parsed into (``{'rougeL': -0.05}``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from _onnx_tiny import Tiny, tiny  # tests/optimize/_onnx_tiny.py

from modelyard import registry
from modelyard.core import Platform
from modelyard.testing import Yard

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    return tiny(tmp_path_factory)


def test_yard_optimize_prints_the_budget_as_given(
    model: Tiny, platform: Platform, yard: Yard, tmp_path: Path
) -> None:
    from modelyard.data import add_version
    from modelyard.training import write_dataset

    ctx = platform.context()
    files = write_dataset(tmp_path / "norm", 40, seed=1)
    add_version(platform, ctx, files[0].parent, "norm")
    parent = registry.register(platform, ctx, model.model_dir, "tiny").spec
    r = yard(
        "optimize", parent, "--quantize", "none", "--data", "norm@1", "--budget", "rougeL=-0.05",
        "--budget", "bleu=-2.5", "--max-samples", "4", "--max-new-tokens", "8", "--threads", "1",
    )  # fmt: skip
    assert r.code == 0, (r.out, r.err)
    # onnx-fp32 decodes as PyTorch does: picked, within the budget (sorted by metric)
    assert "within the budget bleu=-2.5, rougeL=-0.05" in r.out, r.out
    assert "{'" not in r.out
