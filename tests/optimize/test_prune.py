"""Magnitude pruning of the session's trained T5 (tests/conftest.py: ``trained``, ``model_dir``): unstructured
zeros where the magnitudes are smallest, structured pruning that really shrinks d_ff (and equals zeroing those
neurons), a fine-tune through the real loop that keeps the pruned weights at zero and recovers loss, and bad
input refused with nothing written."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelyard.core import Platform
from modelyard.errors import AlreadyExistsError, IntegrityError, NotFoundError, UsageError, ValidationError
from modelyard.testing import TINY_RECIPE, TrainedModel, make_platform
from modelyard.tracking import Client

torch = pytest.importorskip("torch")

from modelyard.optimize._prune import PRUNED_LAYERS, prune_model  # noqa: E402
from modelyard.training import generate, load_model, parse_recipe, verify_model_dir  # noqa: E402

PROBES = ["normalise date (en-US): 7/12/2003", "normalise amount (de-DE): 1.234,56 €"]


@pytest.fixture(scope="module")
def norm_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """A home of its own with ``norm@1`` (the trained model's data), for the fine-tune runs."""
    from modelyard.data import add_version
    from modelyard.training import write_dataset

    root = tmp_path_factory.mktemp("prune-home")
    platform = make_platform(root / "home")
    files = write_dataset(root / "data", 600, seed=1)
    add_version(platform, platform.context(), files[0].parent, "norm")
    yield platform
    platform.close()


def _layers(model: Any) -> dict[str, Any]:
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in PRUNED_LAYERS
    }


def _generates(out: Path) -> list[str]:
    from transformers import AutoTokenizer

    model = load_model(out)
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    preds = generate(model, tokenizer, PROBES, max_new_tokens=16)
    assert len(preds) == len(PROBES) and all(isinstance(p, str) for p in preds)
    return preds


def _test_loss(model_dir: Path, data: Path) -> float:
    """Mean token cross-entropy of the model on the test split (what the fine-tune should lower)."""
    from transformers import AutoTokenizer

    model = load_model(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    rows = [json.loads(line) for line in (data / "test.jsonl").read_text().splitlines()]
    total, tokens = 0.0, 0
    with torch.no_grad():
        for row in rows:
            enc = tokenizer(row["source"], return_tensors="pt", truncation=True, max_length=64)
            labels = tokenizer(row["target"], return_tensors="pt", truncation=True, max_length=48).input_ids
            loss = model(**enc, labels=labels).loss
            total, tokens = total + float(loss) * labels.numel(), tokens + labels.numel()
    return total / tokens


def _finetune_recipe(steps: int) -> Any:
    spec = copy.deepcopy(TINY_RECIPE)
    spec["experiment"] = "prune-finetune"
    spec["hyperparameters"].update(max_steps=steps, lr=1e-3, warmup_steps=0)
    spec["train"].update(log_every_steps=5)
    return parse_recipe(spec)


# -- unstructured --------------------------------------------------------------------------------------


def test_unstructured_prunes_the_smallest_30_percent_of_every_layer(model_dir: Path, tmp_path: Path) -> None:
    before = load_model(model_dir)
    result = prune_model(model_dir, tmp_path / "pruned", amount=0.3)

    assert result.out_dir == tmp_path / "pruned"
    assert result.method == "unstructured-l1-layer"
    assert result.sparsity == pytest.approx(0.3, abs=0.002)
    assert result.params_after == result.params_before  # zeros in dense tensors
    assert result.nonzero_after == pytest.approx(result.nonzero_before - result.pruned_weights, abs=50)
    assert result.d_ff_after == result.d_ff_before == 128
    assert result.finetune_run_id is None
    verify_model_dir(result.out_dir)  # written by save_model: manifest, hashes, no pickle

    after = load_model(result.out_dir)
    old, new = _layers(before), _layers(after)
    assert len(new) == 6 * 4 + 4 * 3  # q, k, v, o of 6 attentions; wi_0, wi_1, wo of 4 FFNs
    for name, layer in new.items():
        w, w0 = layer.weight, old[name].weight
        zero = w == 0
        assert zero.float().mean().item() == pytest.approx(0.3, abs=0.01), name
        # the zeros are the smallest magnitudes; everything else is unchanged
        assert torch.equal(w[~zero], w0[~zero])
        assert w0[zero].abs().max() <= w0[~zero].abs().min()
    # the shared embedding (tied to the output layer), position biases and norms are left alone
    assert torch.equal(after.shared.weight, before.shared.weight)
    for name, p in after.named_parameters():
        if "layer_norm" in name or "relative_attention_bias" in name:
            assert torch.equal(p, dict(before.named_parameters())[name]), name
    _generates(result.out_dir)
    verify_model_dir(model_dir)  # the source is untouched


def test_global_scope_prunes_the_smallest_weights_overall(model_dir: Path, tmp_path: Path) -> None:
    result = prune_model(model_dir, tmp_path / "pruned", amount=0.3, scope="global")
    assert result.method == "unstructured-l1-global"
    assert result.sparsity == pytest.approx(0.3, abs=0.002)
    shares = [(m.weight == 0).float().mean().item() for m in _layers(load_model(result.out_dir)).values()]
    assert max(shares) - min(shares) > 0.05  # one threshold for all layers: uneven per layer
    _generates(result.out_dir)


# -- structured ----------------------------------------------------------------------------------------


def test_structured_removes_ffn_neurons_and_equals_zeroing_them(model_dir: Path, tmp_path: Path) -> None:
    before = load_model(model_dir)
    result = prune_model(model_dir, tmp_path / "pruned", amount=0.3, structured=True)

    assert result.method == "structured-ffn-l2"
    assert result.d_ff_before == 128
    assert result.d_ff_after == 128 - round(0.3 * 128) == 90
    assert result.params_after < result.params_before
    layers_per_ffn = 3  # wi_0, wi_1 (d_model x d_ff) and wo (d_ff x d_model)
    ffns = 2 + 2  # encoder and decoder blocks
    removed = ffns * layers_per_ffn * 64 * (128 - 90)
    assert result.params_before - result.params_after == removed
    assert result.sparsity == pytest.approx(removed / result.pruned_layer_weights)
    after = load_model(result.out_dir)
    assert after.config.d_ff == 90
    assert json.loads((result.out_dir / "config.json").read_text())["d_ff"] == 90

    # Removing a neuron is exactly zeroing its input rows and output column in the dense model.
    zeroed = load_model(model_dir)
    for name, ff in zeroed.named_modules():
        if not hasattr(ff, "wi_0"):
            continue
        small = after.get_submodule(name)
        rows = {tuple(r.tolist()) for r in small.wi_0.weight}
        drop = torch.tensor([tuple(r.tolist()) not in rows for r in ff.wi_0.weight])
        assert int(drop.sum()) == 38
        with torch.no_grad():
            ff.wi_0.weight[drop] = 0
            ff.wi_1.weight[drop] = 0
            ff.wo.weight[:, drop] = 0
        keep = ~drop
        assert torch.equal(small.wi_1.weight, ff.wi_1.weight[keep])
        assert torch.equal(small.wo.weight, ff.wo.weight[:, keep])
    enc = {"input_ids": torch.tensor([[5, 9, 17, 33, 1]]), "decoder_input_ids": torch.tensor([[0, 7, 12]])}
    with torch.no_grad():
        assert torch.allclose(after(**enc).logits, zeroed(**enc).logits, atol=1e-5)
        assert not torch.allclose(after(**enc).logits, before(**enc).logits, atol=1e-5)
    _generates(result.out_dir)


def test_structured_handles_non_gated_feed_forward(model_dir: Path, tmp_path: Path) -> None:
    """T5 v1.0 style (``feed_forward_proj: relu``): one ``wi`` per layer instead of ``wi_0``/``wi_1``."""
    from transformers import AutoTokenizer

    from modelyard.training import build_model, save_model

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    recipe = parse_recipe(
        {
            "data": {"train": "norm@1"},
            "tokenizer": {"train": "sentencepiece", "vocab_size": 200},
            "model": {
                "init": "scratch",
                "config": {
                    "d_model": 32,
                    "d_ff": 40,
                    "num_layers": 1,
                    "num_heads": 2,
                    "feed_forward_proj": "relu",
                },
            },
            "hyperparameters": {"lr": 1e-3, "max_steps": 1},
        }
    )
    save_model(build_model(recipe, vocab_size=len(tokenizer)), tokenizer, tmp_path / "relu")
    result = prune_model(tmp_path / "relu", tmp_path / "pruned", amount=0.5, structured=True)
    model = load_model(result.out_dir)
    assert result.d_ff_after == model.config.d_ff == 20
    ff = model.encoder.block[0].layer[1].DenseReluDense
    assert ff.wi.weight.shape == (20, 32) and ff.wo.weight.shape == (32, 20)
    assert result.params_before - result.params_after == 2 * 2 * 32 * 20  # wi and wo of 2 FFNs
    _generates(result.out_dir)


# -- fine-tune -----------------------------------------------------------------------------------------


def test_finetune_keeps_pruned_weights_zero_and_lowers_loss(
    model_dir: Path, tmp_path: Path, norm_platform: Platform, trained: TrainedModel
) -> None:
    plain = prune_model(model_dir, tmp_path / "plain", amount=0.5)
    with Client(norm_platform) as client:
        tuned = prune_model(
            model_dir, tmp_path / "tuned", amount=0.5, finetune=_finetune_recipe(30), client=client
        )
        assert tuned.finetune_run_id is not None
        info = client.get_run(tuned.finetune_run_id)
        losses = client.metric_history(tuned.finetune_run_id, ["loss"])["loss"]

    assert info.status == "FINISHED"
    assert info.params["prune.amount"] == "0.5"
    assert info.params["prune.method"] == "unstructured-l1-layer"
    assert info.params["prune.structured"] == "false"
    assert info.params["prune.source"] == str(model_dir.resolve())
    assert info.params["model.pretrained"]  # the pruned model was the starting point
    assert info.params["tokenizer.from"] == "model"
    assert len(losses) == 6 and all(math.isfinite(float(p.value or "nan")) for p in losses)

    # the pruned weights are still exactly zero, the others have trained
    a, b = _layers(load_model(plain.out_dir)), _layers(load_model(tuned.out_dir))
    for name in a:
        assert torch.equal(a[name].weight == 0, b[name].weight == 0), name
    assert any(not torch.equal(a[n].weight, b[n].weight) for n in a)
    assert tuned.sparsity == plain.sparsity == pytest.approx(0.5, abs=0.001)
    assert set(tuned.metrics) >= {"rougeL", "bleu"} and plain.metrics == {}
    verify_model_dir(tuned.out_dir)
    _generates(tuned.out_dir)

    data = trained.home.parent / "data"  # norm@1's files (same rows as this test's home)
    original, no_finetune, finetuned = (
        _test_loss(d, data) for d in (model_dir, plain.out_dir, tuned.out_dir)
    )
    assert original < no_finetune  # pruning half the weights costs something ...
    assert finetuned < no_finetune  # ... and 30 steps win part of it back


def test_structured_finetune_trains_the_smaller_model(
    model_dir: Path, tmp_path: Path, norm_platform: Platform
) -> None:
    with Client(norm_platform) as client:
        result = prune_model(
            model_dir,
            tmp_path / "tuned",
            amount=0.25,
            structured=True,
            finetune=_finetune_recipe(5),
            client=client,
        )
        assert result.finetune_run_id is not None
        params = client.get_run(result.finetune_run_id).params
    assert params["prune.structured"] == "true" and params["prune.d_ff"] == "96"
    assert result.d_ff_after == load_model(result.out_dir).config.d_ff == 96
    _generates(result.out_dir)


def test_finetune_platform_and_context(model_dir: Path, tmp_path: Path, norm_platform: Platform) -> None:
    """A service caller passes the platform and the acting context instead of a client."""
    ctx = norm_platform.context()
    result = prune_model(
        model_dir,
        tmp_path / "tuned",
        amount=0.2,
        finetune=_finetune_recipe(2),
        platform=norm_platform,
        ctx=ctx,
    )
    with Client(norm_platform) as client:
        info = client.get_run(result.finetune_run_id or "")
    assert info.status == "FINISHED" and info.params["prune.amount"] == "0.2"


# -- bad input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("amount", [0, 1, 1.0, -0.1, 1.5, math.nan, math.inf, True, "0.3", None])
def test_amount_outside_0_1_is_refused(model_dir: Path, tmp_path: Path, amount: Any) -> None:
    with pytest.raises(ValidationError, match="amount"):
        prune_model(model_dir, tmp_path / "out", amount=amount)
    assert not (tmp_path / "out").exists()


def test_too_small_a_structured_amount_is_refused(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="removes no feed-forward neuron"):
        prune_model(model_dir, tmp_path / "out", amount=0.001, structured=True)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.*"))  # no staging left behind


def test_bad_scope_is_refused(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="scope"):
        prune_model(model_dir, tmp_path / "out", amount=0.3, scope="row")  # type: ignore[arg-type]


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="not found"):
        prune_model(tmp_path / "nope", tmp_path / "out", amount=0.3)
    assert not (tmp_path / "out").exists()


def test_pickle_in_the_model_directory_is_refused(model_dir: Path, tmp_path: Path) -> None:
    (model_dir / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(IntegrityError, match=r"pytorch_model\.bin"):
        prune_model(model_dir, tmp_path / "out", amount=0.3)
    assert not (tmp_path / "out").exists()


def test_tampered_weights_are_refused(model_dir: Path, tmp_path: Path) -> None:
    weights = model_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"model\.safetensors"):
        prune_model(model_dir, tmp_path / "out", amount=0.3)


def test_existing_output_is_not_overwritten(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(AlreadyExistsError, match="not empty"):
        prune_model(model_dir, out, amount=0.3)
    assert (out / "keep.txt").read_text() == "mine"


def test_finetune_needs_somewhere_to_record_the_run(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="client="):
        prune_model(model_dir, tmp_path / "out", amount=0.3, finetune=_finetune_recipe(2))
    assert not (tmp_path / "out").exists()


# -- the loop's invariants with a pruning hook ---------------------------------------------------------


def test_masked_finetune_resumes_exactly(model_dir: Path, tmp_path: Path, norm_platform: Platform) -> None:
    """A run interrupted after a checkpoint and resumed ends with the weights of an uninterrupted one, masks
    included (they are re-applied on build and restored with the checkpoint)."""
    from safetensors.torch import load_file

    from modelyard.optimize._prune import finetune_recipe, mask_hook
    from modelyard.training._train import TrainHooks, train

    pruned = prune_model(model_dir, tmp_path / "pruned", amount=0.4).out_dir
    masks = {name: m.weight != 0 for name, m in _layers(load_model(pruned)).items()}
    spec = _finetune_recipe(15).model_dump(by_alias=True, exclude_unset=True)
    spec["experiment"] = "prune-resume"
    spec["train"].update(eval_every_steps=5)
    spec["checkpoints"].update(every_steps=5, keep_best=False)
    recipe = finetune_recipe(parse_recipe(spec), pruned)
    hooks = TrainHooks(params={"prune.amount": 0.4}, model=mask_hook(masks))

    def stop_at_10(step: int, metrics: dict[str, float]) -> None:
        if step == 10:
            raise KeyboardInterrupt

    with Client(norm_platform) as client:
        straight = train(recipe, client=client, hooks=hooks, progress=False).run_id
        with pytest.raises(KeyboardInterrupt):
            train(recipe, client=client, hooks=hooks, progress=False, on_eval=stop_at_10)
        (killed,) = [r.id for r in client.search_runs("prune-resume") if r.status == "KILLED"]
        resumed = train(recipe, client=client, hooks=hooks, progress=False, resume=killed)
        assert resumed.run_id == killed and resumed.steps == 15
        a = client.download_artifacts(straight, "model", tmp_path / "a")
        b = client.download_artifacts(killed, "model", tmp_path / "b")
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys() and not any(k.endswith(("_orig", "_mask")) for k in wa)
    for name, tensor in wa.items():
        assert torch.equal(tensor, wb[name]), name
    for name, layer in _layers(load_model(b)).items():
        assert torch.equal(layer.weight != 0, masks[name]), name
