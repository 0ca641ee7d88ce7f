"""A recipe whose ``model.pretrained`` is an ONNX export (what export_onnx or quantize_int8 writes: onnx.json
and .onnx files, no safetensors) was refused with "holds no *.safetensors weights", which does not say
what the directory is. It is now a usage error that says it is an ONNX model and to give the PyTorch
model directory it was exported from, in build_model and in `yard train`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from _tiny import write_recipe  # tests/training/_tiny.py

from modelyard.errors import UsageError
from modelyard.testing import Yard
from modelyard.training import Recipe, build_model, parse_recipe

# the shared tiny model and its exports live with the optimize tests (test directories are not packages)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "optimize"))
import _onnx_tiny
from _onnx_tiny import Tiny

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

model, onnx_dir = _onnx_tiny.model, _onnx_tiny.onnx_dir  # the shared fixtures

ONNX = r"is an ONNX model .*PyTorch.*exported from"


def _recipe(pretrained: Path) -> Recipe:
    return parse_recipe(
        {
            "data": {"train": "n@1"},
            "tokenizer": {"from": "model"},
            "model": {"pretrained": str(pretrained)},
            "hyperparameters": {"lr": 1e-3, "max_steps": 1},
        }
    )


def test_build_model_from_an_onnx_export_says_what_it_is(onnx_dir: Path) -> None:
    recipe = _recipe(onnx_dir)
    with pytest.raises(UsageError, match=ONNX) as info:
        build_model(recipe, vocab_size=None)
    assert f"model.pretrained {onnx_dir} is an ONNX model" in info.value.message


def test_build_model_from_its_pytorch_source_still_works(model: Tiny) -> None:
    recipe = _recipe(model.model_dir)
    assert build_model(recipe, vocab_size=None).config.d_model == 64


@pytest.mark.slow
def test_yard_train_from_an_onnx_export_says_what_it_is(
    yard: Yard, home: Path, tmp_path: Path, model: Tiny
) -> None:
    assert yard("init").code == 0
    made = yard("examples", "make-data", tmp_path / "norm", "--rows", "300", "--seed", "1", "--version=norm")
    assert made.code == 0, made.err
    recipe = write_recipe(
        tmp_path / "r.yaml",
        model={"pretrained": str(model.onnx_dir)},
        tokenizer={"from": "model", "max_source_length": 64, "max_target_length": 48},
    )
    r = yard("train", recipe, "--no-progress")
    assert r.code == 2, (r.out, r.err)
    assert "is an ONNX model" in r.error and "PyTorch" in r.error and "exported from" in r.error, r.error
    assert "holds no" not in r.error
