"""Step 3 (model) and the precision decision of step 5: seeded scratch builds, safetensors-only pretrained
loading, precision for every device branch (CUDA branches through injected DeviceCaps), manifest-verified
save/load. CPU only, no network."""

from __future__ import annotations

import copy
import json
import math
import warnings
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from modelyard.errors import IntegrityError, UsageError  # noqa: E402
from modelyard.training import parse_recipe  # noqa: E402
from modelyard.training._model import (  # noqa: E402
    MANIFEST_NAME,
    DeviceCaps,
    PrecisionWarning,
    autocast_context,
    build_model,
    device_caps,
    load_model,
    make_grad_scaler,
    resolve_precision,
    save_model,
    verify_model_dir,
)
from modelyard.training._recipe import Recipe  # noqa: E402

VOCAB = 100

MINIMAL: dict[str, Any] = {
    "data": {"train": "pairs@1"},
    "tokenizer": {"train": "sentencepiece", "vocab_size": 256},
    "model": {"init": "scratch", "preset": "tiny"},
    "hyperparameters": {"lr": 1e-3, "max_steps": 10, "seed": 7},
}


def make_recipe(model: dict[str, Any] | None = None, seed: int = 7, **top: Any) -> Recipe:
    data = copy.deepcopy(MINIMAL)
    if model is not None:
        data["model"] = model
        if "pretrained" in model:
            data["tokenizer"] = {"from": "model"}
    data["hyperparameters"]["seed"] = seed
    data.update(top)
    return parse_recipe(data)


def same_state(a: Any, b: Any) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def tiny() -> Any:
    return build_model(make_recipe(), vocab_size=VOCAB)


SAMPLE = [[5, 17, 42, 8, 99, 3, 1]]


def greedy(model: Any) -> list[list[int]]:
    model.eval()
    with torch.no_grad():
        out = model.generate(torch.tensor(SAMPLE), max_new_tokens=8, do_sample=False, num_beams=1)
    return [list(map(int, row)) for row in out]


# -- build ------------------------------------------------------------------------------------------------


def test_tiny_preset_has_the_preset_dims_and_the_tokenizer_vocab(tiny: Any) -> None:
    c = tiny.config
    assert (c.d_model, c.d_ff, c.num_layers, c.num_decoder_layers, c.num_heads, c.d_kv) == (
        64,
        128,
        2,
        2,
        4,
        16,
    )
    assert c.vocab_size == VOCAB and c.feed_forward_proj == "gated-gelu"
    # transformers 5 always ties lm_head to the shared embedding; scratch models scale the decoder output
    # as a tied head needs, so the loss at init is near ln(vocab), not tens.
    assert c.tie_word_embeddings
    ids = torch.randint(3, VOCAB, (4, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        loss = float(tiny(input_ids=ids, labels=ids).loss)
    assert loss < 2 * math.log(VOCAB)
    assert (c.pad_token_id, c.eos_token_id, c.decoder_start_token_id) == (0, 1, 0)
    assert tiny.get_input_embeddings().num_embeddings == VOCAB
    assert tiny.get_output_embeddings().out_features == VOCAB
    assert tiny.training and next(tiny.parameters()).device.type == "cpu"
    assert next(tiny.parameters()).dtype == torch.float32


def test_same_seed_is_bitwise_equal_other_seed_differs(tiny: Any) -> None:
    again = build_model(make_recipe(), vocab_size=VOCAB)
    assert same_state(tiny, again)
    other = build_model(make_recipe(seed=8), vocab_size=VOCAB)
    assert not same_state(tiny, other)


def test_build_leaves_the_callers_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model(make_recipe(), vocab_size=VOCAB)
    assert torch.equal(torch.rand(3), expected)


def test_explicit_config() -> None:
    cfg = {"d_model": 32, "d_ff": 48, "num_layers": 1, "num_heads": 2, "num_decoder_layers": 2}
    cfg |= {"feed_forward_proj": "relu", "dropout_rate": 0.0}
    model = build_model(make_recipe({"init": "scratch", "config": cfg}), vocab_size=50, pad_token_id=3)
    c = model.config
    assert (c.d_model, c.d_ff, c.num_layers, c.num_decoder_layers, c.num_heads, c.d_kv) == (
        32,
        48,
        1,
        2,
        2,
        16,
    )
    assert (c.feed_forward_proj, c.dropout_rate, c.vocab_size, c.pad_token_id) == ("relu", 0.0, 50, 3)


def test_scratch_needs_a_vocab_size_and_ids_inside_it() -> None:
    with pytest.raises(UsageError, match="vocab_size"):
        build_model(make_recipe(), vocab_size=None)
    with pytest.raises(UsageError, match="eos_token_id 200 is outside"):
        build_model(make_recipe(), vocab_size=VOCAB, eos_token_id=200)


def test_forward_with_labels_gives_a_finite_loss(tiny: Any) -> None:
    ids = torch.tensor(SAMPLE)
    labels = torch.tensor([[7, 9, 11, 1]])
    out = tiny(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
    assert out.loss.ndim == 0 and math.isfinite(float(out.loss.detach()))
    out.loss.backward()  # the graph is trainable
    assert tiny.get_input_embeddings().weight.grad is not None
    tiny.zero_grad(set_to_none=True)


# -- pretrained -------------------------------------------------------------------------------------------


def test_pretrained_from_a_local_directory(tiny: Any, tmp_path: Path) -> None:
    tiny.save_pretrained(tmp_path, safe_serialization=True)
    model = build_model(make_recipe({"pretrained": str(tmp_path)}), vocab_size=None)
    assert model.training and same_state(model, tiny)
    assert model.config.vocab_size == VOCAB


def test_pretrained_grows_embeddings_for_a_larger_tokenizer(tiny: Any, tmp_path: Path) -> None:
    tiny.save_pretrained(tmp_path, safe_serialization=True)
    model = build_model(make_recipe({"pretrained": str(tmp_path)}), vocab_size=VOCAB + 28)
    assert model.get_input_embeddings().num_embeddings == VOCAB + 28
    assert model.get_output_embeddings().out_features == VOCAB + 28
    # a smaller tokenizer (flan-t5: 32100 tokens, 32128 rows) leaves the table alone
    smaller = build_model(make_recipe({"pretrained": str(tmp_path)}), vocab_size=VOCAB - 4)
    assert smaller.get_input_embeddings().num_embeddings == VOCAB


def test_pretrained_pickle_only_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(UsageError, match=r"only pickle weights \(pytorch_model.bin\).*safetensors"):
        build_model(make_recipe({"pretrained": str(tmp_path)}), vocab_size=None)


# -- save / load ------------------------------------------------------------------------------------------


class StubTokenizer:
    def save_pretrained(self, out: Path) -> None:
        (Path(out) / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer"}))


@pytest.fixture
def saved(tiny: Any, tmp_path: Path) -> Path:
    return save_model(tiny, StubTokenizer(), tmp_path / "model")


def test_save_writes_safetensors_configs_tokenizer_and_a_manifest_of_everything(saved: Path) -> None:
    names = sorted(p.name for p in saved.iterdir())
    assert names == sorted(
        ["config.json", "generation_config.json", MANIFEST_NAME, "model.safetensors", "tokenizer_config.json"]
    )
    manifest = json.loads((saved / MANIFEST_NAME).read_text())
    listed = {e["path"]: e for e in manifest["files"]}
    assert set(listed) == set(names) - {MANIFEST_NAME}
    assert listed["model.safetensors"]["size"] == (saved / "model.safetensors").stat().st_size
    assert all(len(e["sha256"]) == 64 for e in manifest["files"])


def test_round_trip_is_identical(tiny: Any, saved: Path) -> None:
    loaded = load_model(saved)
    assert same_state(loaded, tiny)
    assert greedy(loaded) == greedy(copy.deepcopy(tiny))


def test_flipped_byte_is_refused(saved: Path) -> None:
    path = saved / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"model\.safetensors does not match its SHA-256"):
        load_model(saved)


@pytest.mark.parametrize("name", ["pytorch_model.bin", "optimizer.pt", "extra.pkl"])
def test_directory_with_a_pickle_file_is_refused(saved: Path, name: str) -> None:
    (saved / name).write_bytes(b"\x80\x04.")
    with pytest.raises(IntegrityError, match=f"pickle files.*{name}"):
        load_model(saved)


def test_directory_without_manifest_is_refused(saved: Path) -> None:
    (saved / MANIFEST_NAME).unlink()
    with pytest.raises(IntegrityError, match=r"no manifest\.json"):
        load_model(saved)


def test_unlisted_missing_and_symlinked_files_are_refused(saved: Path, tmp_path: Path) -> None:
    (saved / "notes.txt").write_text("hi")
    with pytest.raises(IntegrityError, match=r"not in the manifest: notes\.txt"):
        verify_model_dir(saved)
    (saved / "notes.txt").unlink()
    (saved / "tokenizer_config.json").unlink()
    with pytest.raises(IntegrityError, match=r"tokenizer_config\.json is listed in the manifest but missing"):
        verify_model_dir(saved)
    (tmp_path / "outside").write_text("{}")
    (saved / "tokenizer_config.json").symlink_to(tmp_path / "outside")
    with pytest.raises(IntegrityError, match="symlink"):
        verify_model_dir(saved)


def test_manifest_with_an_escaping_path_is_refused(saved: Path) -> None:
    manifest = json.loads((saved / MANIFEST_NAME).read_text())
    manifest["files"].append({"path": "../evil.safetensors", "size": 1, "sha256": "0" * 64})
    (saved / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError, match="unsafe path"):
        verify_model_dir(saved)


def test_resave_replaces_the_manifest(tiny: Any, saved: Path) -> None:
    save_model(tiny, None, saved)
    verify_model_dir(saved)  # the old tokenizer file is still there and listed again


# -- precision --------------------------------------------------------------------------------------------

CPU = DeviceCaps("cpu", bf16=True, fp16=False)
AMPERE = DeviceCaps("cuda", bf16=True, fp16=True)
VOLTA = DeviceCaps("cuda", bf16=False, fp16=True)
MPS = DeviceCaps("mps", bf16=False, fp16=False)


@pytest.mark.parametrize(
    ("request_", "caps", "model_type", "expected"),
    [
        ("auto", CPU, "t5", "fp32"),  # CPU bf16 autocast is slow on most CPUs
        ("auto", AMPERE, "t5", "bf16"),
        ("auto", VOLTA, "t5", "fp32"),  # never fp16 for T5
        ("auto", VOLTA, "mt5", "fp32"),
        ("auto", VOLTA, "bart", "fp16"),  # other models may use fp16 + scaler
        ("auto", MPS, "t5", "fp32"),
        ("fp32", AMPERE, "t5", "fp32"),
        ("bf16", AMPERE, "t5", "bf16"),
        ("bf16", CPU, "t5", "bf16"),  # explicit bf16 on CPU: allowed, via CPU autocast
        ("fp16", AMPERE, "bart", "fp16"),
    ],
)
def test_precision_decision(request_: str, caps: DeviceCaps, model_type: str, expected: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_precision(request_, caps, model_type) == expected


def test_explicit_fp16_on_t5_is_allowed_with_a_warning() -> None:
    with pytest.warns(PrecisionWarning, match="overflow"):
        assert resolve_precision("fp16", VOLTA, "t5") == "fp16"


@pytest.mark.parametrize(
    ("request_", "caps", "match"),
    [
        ("bf16", VOLTA, "bf16 is not supported on this cuda device"),
        ("bf16", MPS, "bf16 is not supported"),
        ("fp16", CPU, "fp16 needs a CUDA device, not cpu; use bf16 or fp32"),
        ("fp8", AMPERE, "must be auto, bf16, fp16 or fp32"),
    ],
)
def test_precision_the_device_cannot_run_is_refused(request_: str, caps: DeviceCaps, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        resolve_precision(request_, caps, "t5")


def test_real_cpu_probe() -> None:
    assert device_caps("cpu") == CPU
    assert resolve_precision("auto", "cpu", "t5") == "fp32"
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="CUDA is not available"):
            device_caps("cuda")


def test_autocast_and_scaler(tiny: Any) -> None:
    with autocast_context("fp32", "cpu"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast_context("bf16", "cpu"):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
        out = torch.nn.functional.linear(torch.ones(2, 4), torch.ones(3, 4))
        assert out.dtype == torch.bfloat16
    with warnings.catch_warnings():  # without CUDA, torch warns that the context will be disabled
        warnings.simplefilter("ignore")
        ctx = autocast_context("fp16", AMPERE)
    assert isinstance(ctx, torch.autocast) and ctx.device == "cuda" and ctx.fast_dtype == torch.float16
    for precision, device in [("fp32", "cpu"), ("bf16", "cpu"), ("bf16", AMPERE), ("fp16", CPU)]:
        assert not make_grad_scaler(precision, device).is_enabled()
    if torch.cuda.is_available():
        assert make_grad_scaler("fp16", "cuda").is_enabled()
    # a disabled scaler passes everything through, so the loop can always use one
    scaler = make_grad_scaler("fp32", "cpu")
    loss = torch.tensor(2.0)
    assert scaler.scale(loss) is loss


@pytest.mark.parametrize(
    "config",
    [
        {"d_model": 32, "d_ff": 48, "num_layers": 2, "num_heads": 4},
        {"d_model": 24, "d_ff": 40, "num_layers": 1, "num_decoder_layers": 3, "num_heads": 2, "d_kv": 5},
        {"d_model": 16, "d_ff": 32, "num_layers": 2, "num_heads": 2, "feed_forward_proj": "relu"},
        {"d_model": 16, "d_ff": 32, "num_layers": 1, "num_heads": 2, "tie_word_embeddings": False},
    ],
)
def test_parameter_estimate_is_the_built_models_count(config: dict[str, Any]) -> None:
    # The recipe's size limit relies on this count; it must be what build_model really makes.
    recipe = make_recipe({"init": "scratch", "config": config})
    dims = recipe.model.dims()
    assert dims is not None
    model = build_model(recipe, vocab_size=VOCAB)
    assert dims.parameters(VOCAB) == sum(p.numel() for p in model.parameters())
