"""A recipe whose local ``model.pretrained`` is an ONNX export (what export_onnx or quantize_int8 writes) was
refused only once the model was built, after the tracking run was opened: a config mistake left a FAILED
run in `yard runs ls` (and a job queued that could only fail). Like a missing dataset version, it is now
refused before any run, study or job exists."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelyard.core import Platform
from modelyard.errors import UsageError
from modelyard.testing import Yard
from modelyard.tracking import Client
from modelyard.training import parse_recipe

# the shared tiny model and its exports live with the optimize tests (test directories are not packages)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "optimize"))
from _onnx_tiny import Tiny, tiny

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

EXPERIMENT = "onnx-pretrained"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    return tiny(tmp_path_factory)


@pytest.fixture
def norm(platform: Platform, tmp_path: Path) -> Platform:
    """The home (the one `yard` uses) holding norm@1."""
    from modelyard.data import add_version
    from modelyard.training import write_dataset

    files = write_dataset(tmp_path / "norm", 40, seed=1)
    add_version(platform, platform.context(), files[0].parent, "norm")
    return platform


def _spec(pretrained: Path) -> dict[str, Any]:
    return {
        "experiment": EXPERIMENT,
        "data": {"train": "norm@1", "validation": "norm@1"},
        "tokenizer": {"from": "model", "max_source_length": 64, "max_target_length": 48},
        "model": {"pretrained": str(pretrained)},
        "hyperparameters": {"lr": 1e-3, "batch_size": 4, "max_steps": 1},
        "train": {"eval_every_steps": 1, "eval_max_samples": 4},
        "search": {"hyperparameters.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
    }


def _refused(message: str, onnx_dir: Path) -> None:
    assert f"model.pretrained {onnx_dir} is an ONNX model" in message, message
    assert "exported from" in message, message


def _no_runs(platform: Platform) -> None:
    with Client(platform) as client:
        assert client.search_runs(EXPERIMENT) == []


def test_sdk_train_refuses_an_onnx_export_before_opening_a_run(norm: Platform, model: Tiny) -> None:
    from modelyard.training._train import train

    with Client(norm) as client, pytest.raises(UsageError) as info:
        train(parse_recipe(_spec(model.onnx_dir)), client=client, progress=False)
    _refused(info.value.message, model.onnx_dir)
    _no_runs(norm)


def test_yard_train_refuses_an_onnx_export_before_opening_a_run(
    yard: Yard, norm: Platform, home: Path, tmp_path: Path, model: Tiny
) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(_spec(model.onnx_dir)), encoding="utf-8")
    r = yard("train", recipe, "--no-progress")
    assert r.code == 2, (r.out, r.err)
    _refused(r.error, model.onnx_dir)
    _no_runs(norm)
    assert not (home / "checkpoints").exists()


def test_tune_refuses_an_onnx_export_before_its_parent_run(norm: Platform, model: Tiny) -> None:
    from modelyard.training._tune import tune

    with Client(norm) as client, pytest.raises(UsageError) as info:
        tune(parse_recipe(_spec(model.onnx_dir)), client=client, trials=1, device="cpu")
    _refused(info.value.message, model.onnx_dir)
    _no_runs(norm)


def test_a_train_job_from_an_onnx_export_is_not_queued(norm: Platform, tmp_path: Path, model: Tiny) -> None:
    from modelyard.training import _jobs

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(_spec(model.onnx_dir)), encoding="utf-8")
    ctx = norm.context()
    with pytest.raises(UsageError) as info:
        _jobs.submit_job(norm, ctx, recipe)
    _refused(info.value.message, model.onnx_dir)
    assert _jobs.list_jobs(norm, ctx) == []


def test_its_pytorch_source_still_passes_the_check(model: Tiny) -> None:
    from modelyard.training import check_pretrained

    check_pretrained(parse_recipe(_spec(model.model_dir)))  # no error
