"""A FINISHED run's checkpoints are deleted once its model is stored; an interrupted run keeps them.

Checkpoints (weights, optimizer state, the tokenizer trained on the user's data) are plain files on local
disk, there for exact resume only. A FINISHED run cannot be resumed, so they were kept for nothing, outside
the encrypted artifact store, for as long as the home lived."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import test_train
from _tiny import write_recipe  # tests/training/_tiny.py
from safetensors.torch import load_file

from modelyard.config import load_settings
from modelyard.core import Platform
from modelyard.tracking import Client
from modelyard.training import _train, load_recipe

pytestmark = pytest.mark.slow


data_home = test_train.data_home  # an initialised home holding norm@1


def _recipe(tmp_path: Path) -> Any:
    return load_recipe(
        write_recipe(
            tmp_path / "r.yaml",
            hyperparameters__max_steps=5,
            train__eval_every_steps=None,
            checkpoints={"every_steps": 2, "keep_last": 5, "metric": "loss"},
        )
    )


def test_a_finished_run_leaves_no_checkpoints_but_keeps_its_model(data_home: Path, tmp_path: Path) -> None:
    with Client(Platform(load_settings(home=data_home))) as c:
        result = _train.train(_recipe(tmp_path), client=c, progress=False, final_eval=False)
        assert c.get_run(result.run_id).status == "FINISHED"
        model = c.download_artifacts(result.run_id, "model", tmp_path / "model")
    assert not (data_home / "checkpoints" / result.run_id).exists()
    # the trained weights and tokenizer are in the (encrypted) artifact store instead
    assert load_file(model / "model.safetensors")
    assert any(p.name.startswith("tokenizer") or p.name == "spiece.model" for p in model.iterdir())


def test_an_interrupted_run_keeps_its_checkpoints_for_resume(data_home: Path, tmp_path: Path) -> None:
    import torch.nn.functional as F

    calls = [0]

    def loss(logits: Any, batch: dict[str, Any]) -> Any:
        calls[0] += 1
        if calls[0] == 4:  # after the checkpoint of step 2
            raise RuntimeError("interrupted")
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1), reduction="sum"
        )

    started: list[str] = []
    with Client(Platform(load_settings(home=data_home))) as c:
        with pytest.raises(RuntimeError, match="interrupted"):
            _train.train(
                _recipe(tmp_path),
                client=c,
                progress=False,
                on_start=started.append,
                hooks=_train.TrainHooks(loss=loss),
            )
        assert c.get_run(started[0]).status == "FAILED"
    root = data_home / "checkpoints" / started[0]
    assert (root / "step-00000002" / "manifest.json").is_file()
    assert (root / "tokenizer" / "done").is_file()


def test_a_deleted_run_is_not_resumed(data_home: Path, tmp_path: Path) -> None:
    # Deleting a run deletes its checkpoints; a resume of it then is an error that brings back neither
    # the run nor a checkpoint folder, and so is one that finds checkpoints an older version left behind.
    from modelyard.errors import NotFoundError

    recipe = _recipe(tmp_path)
    with Client(Platform(load_settings(home=data_home))) as c:
        run = c.start_run("t", params=recipe.params())
        run.end("FAILED", "killed")
        root = data_home / "checkpoints" / run.id
        (root / "step-00000002").mkdir(parents=True)
        (root / "step-00000002" / "manifest.json").write_text("{}")
        c.delete_run(run.id)
        assert not root.exists()
        with pytest.raises(NotFoundError, match=rf"run {run.id[:8]}\w* not found"):
            _train.train(recipe, client=c, resume=run.id, progress=False)
        assert not root.exists()
        (root / "step-00000002").mkdir(parents=True)  # left by a version that did not delete them
        with pytest.raises(NotFoundError, match=rf"run {run.id[:8]}\w* not found"):
            _train.train(recipe, client=c, resume=run.id, progress=False)
        assert sorted(p.name for p in root.iterdir()) == ["step-00000002"]
        assert c.search_runs("t") == []
