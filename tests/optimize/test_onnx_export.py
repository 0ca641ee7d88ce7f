"""ONNX export of a T5 model: the files and their description, greedy generation equal to PyTorch's (batch 1
and padded batches), token handling equal to transformers', and bad input refused with nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from _onnx_tiny import Tiny, sources, tiny  # tests/optimize/_onnx_tiny.py

from modelyard.errors import AlreadyExistsError, IntegrityError, NotFoundError, UsageError

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    return tiny(tmp_path_factory)


@pytest.fixture(scope="module")
def torch_model(model: Tiny) -> Any:
    return model.torch_model()


@pytest.fixture(scope="module")
def tokenizer(model: Tiny) -> Any:
    return model.tokenizer()


def _runner(path: Path) -> Any:
    from modelyard.serving import OnnxSeq2Seq

    return OnnxSeq2Seq(path, intra_op_threads=1)


# -- the directory ------------------------------------------------------------------------------------------


def test_export_writes_graphs_tokenizer_and_description(model: Tiny) -> None:
    import onnx
    import tokenizers

    out = model.onnx_dir
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "config.json",
        "decoder.onnx",
        "decoder_with_past.onnx",
        "encoder.onnx",
        "generation_config.json",
        "onnx.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "weights.onnx.data",
    ]
    meta = json.loads((out / "onnx.json").read_text())
    assert meta["format"] == "modelyard.onnx-seq2seq/1"
    assert meta["config"] == {
        "num_layers": 2,
        "num_decoder_layers": 2,
        "num_heads": 4,
        "d_kv": 16,
        "d_model": 64,
        "d_ff": 128,
        "vocab_size": 200,
    }
    assert meta["tokens"] == {"pad_token_id": 0, "eos_token_id": [1], "decoder_start_token_id": 0}
    assert meta["opset"] == 17 and meta["quantization"] is None
    assert meta["exporter"]["name"] == "torch.onnx.export" and meta["exporter"]["torch"]
    assert meta["optimization"] == {"level": "basic", "tool": "onnxruntime"}
    assert meta["graphs"]["encoder"] == {
        "file": "encoder.onnx",
        "inputs": ["input_ids", "attention_mask"],
        "outputs": ["last_hidden_state"],
    }
    assert meta["graphs"]["decoder"]["inputs"] == [
        "input_ids",
        "encoder_hidden_states",
        "encoder_attention_mask",
    ]
    assert meta["graphs"]["decoder"]["outputs"][:5] == [
        "logits",
        "present.0.decoder.key",
        "present.0.decoder.value",
        "present.0.encoder.key",
        "present.0.encoder.value",
    ]
    assert meta["graphs"]["decoder_with_past"]["inputs"][:4] == [
        "input_ids",
        "encoder_attention_mask",
        "past_key_values.0.decoder.key",
        "past_key_values.0.decoder.value",
    ]
    assert meta["graphs"]["decoder_with_past"]["outputs"] == [
        "logits",
        "present.0.decoder.key",
        "present.0.decoder.value",
        "present.1.decoder.key",
        "present.1.decoder.value",
    ]
    assert set(meta["files"]) == set(names) - {"onnx.json"}
    manifest = (model.model_dir / "manifest.json").read_bytes()
    import hashlib

    assert meta["source"]["model_manifest_sha256"] == hashlib.sha256(manifest).hexdigest()
    # the graphs are valid ONNX and their weights live in the directory, by relative name only
    for graph in ("encoder", "decoder", "decoder_with_past"):
        onnx.checker.check_model(str(out / f"{graph}.onnx"))
        proto = onnx.load(str(out / f"{graph}.onnx"), load_external_data=False)
        locations = {
            entry.value
            for t in proto.graph.initializer
            for entry in t.external_data
            if entry.key == "location"
        }
        assert locations == {"weights.onnx.data"}
        assert {node.domain for node in proto.graph.node} <= {"", "ai.onnx"}  # standard ops only (portable)
        assert [(op.domain, op.version) for op in proto.opset_import] == [("", 17)]
    # the decoder graphs share their weights: the file is far smaller than three inline copies would be
    weights = (out / "weights.onnx.data").stat().st_size
    assert weights < 1.5 * (model.model_dir / "model.safetensors").stat().st_size
    # the tokenizer works with the tokenizers library alone
    plain = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    assert plain.encode("normalise date (en-US): 7/12/2003").ids[-1] == 1


# -- generation equals PyTorch's ----------------------------------------------------------------------------


def test_greedy_generation_equals_pytorch(model: Tiny, torch_model: Any, tokenizer: Any) -> None:
    from modelyard.training import generate

    texts = sources(40)
    onnx_runner = _runner(model.onnx_dir)
    for batch_size in (1, 16):
        expected = generate(
            torch_model, tokenizer, texts, num_beams=1, max_new_tokens=24, batch_size=batch_size
        )
        got = onnx_runner.generate(texts, max_new_tokens=24, batch_size=batch_size)
        assert got == expected, batch_size
    assert len(set(expected)) >= 10  # input-dependent outputs, not one string repeated
    # the padded batches held sources of different lengths, so the padding masks were exercised
    lengths = {len(ids) for ids in onnx_runner.encode(texts[:16])}
    assert len(lengths) >= 5


def test_limits_and_min_new_tokens_equal_pytorch(model: Tiny, torch_model: Any, tokenizer: Any) -> None:
    import torch

    from modelyard.training import generate

    texts = sources(12, seed=3)
    runner = _runner(model.onnx_dir)
    # truncated sources: the same ids as transformers' truncation, the same outputs
    expected = generate(torch_model, tokenizer, texts, max_new_tokens=10, batch_size=4, max_source_length=9)
    assert runner.generate(texts, max_new_tokens=10, batch_size=4, max_source_length=9) == expected
    assert runner.encode(texts, max_source_length=9) == [
        list(x) for x in tokenizer(texts, truncation=True, max_length=9)["input_ids"]
    ]
    # min_new_tokens forbids eos as transformers' MinNewTokensLengthLogitsProcessor does
    enc = tokenizer(texts[:4], padding=True, return_tensors="pt")
    with torch.inference_mode():
        ids = torch_model.generate(**enc, max_new_tokens=20, min_new_tokens=20, num_beams=1, do_sample=False)
    assert runner.generate_ids(texts[:4], max_new_tokens=20, min_new_tokens=20, batch_size=4) == [
        row[1:] for row in ids.tolist()
    ]


def test_decode_equals_transformers_decode(model: Tiny, tokenizer: Any) -> None:
    import random

    runner = _runner(model.onnx_dir)
    rng = random.Random(0)
    sequences = [[rng.randrange(200) for _ in range(rng.randrange(1, 12))] for _ in range(300)]
    sequences += [[0, 0, 5, 1, 0], [1], [2, 2], []]  # pad, eos, unk only; empty
    expected = tokenizer.batch_decode(sequences, skip_special_tokens=True)
    assert runner.decode(sequences) == expected
    # leading "▁" is dropped, inner ones become spaces
    word = tokenizer.convert_tokens_to_ids(tokenizer.tokenize("normalise date"))
    assert runner.decode([word]) == ["normalise date"]


def test_large_model_path_writes_the_same_directory_shape(
    model: Tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Models over the external-data threshold are optimised with per-graph data files, which are folded into
    weights.onnx.data; the result generates the same."""
    from modelyard.optimize import _onnx, export_onnx

    monkeypatch.setattr(_onnx, "EXTERNAL_DATA_THRESHOLD", 0)
    out = export_onnx(model.model_dir, tmp_path / "big", opset=15)
    assert not [
        p.name for p in out.iterdir() if p.name.endswith(".onnx.data") and p.name != "weights.onnx.data"
    ]
    assert json.loads((out / "onnx.json").read_text())["opset"] == 15
    texts = sources(8, seed=9)
    assert _runner(out).generate(texts, max_new_tokens=12) == _runner(model.onnx_dir).generate(
        texts, max_new_tokens=12
    )


# -- bad input ---------------------------------------------------------------------------------------------


def _nothing_written(parent: Path, out: Path) -> None:
    assert not out.exists()
    assert [p.name for p in parent.iterdir() if p.name.startswith(f".{out.name}.")] == []


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_missing_and_unverified_model_dirs_are_refused(model: Tiny, tmp_path: Path) -> None:
    from modelyard.optimize import export_onnx

    out = tmp_path / "out"
    with pytest.raises(NotFoundError, match="not found"):
        export_onnx(tmp_path / "nope", out)
    _nothing_written(tmp_path, out)

    altered = _copy(model.model_dir, tmp_path / "altered")
    with open(altered / "model.safetensors", "r+b") as fh:
        fh.seek(-8, 2)
        fh.write(b"\x00" * 8)
    with pytest.raises(IntegrityError, match=r"model\.safetensors does not match its SHA-256"):
        export_onnx(altered, out)
    _nothing_written(tmp_path, out)

    unsaved = _copy(model.model_dir, tmp_path / "unsaved")
    (unsaved / "manifest.json").unlink()
    with pytest.raises(IntegrityError, match=r"no manifest\.json"):
        export_onnx(unsaved, out)

    pickled = _copy(model.model_dir, tmp_path / "pickled")
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(IntegrityError, match=r"pickle files \(pytorch_model\.bin\)"):
        export_onnx(pickled, out)
    _nothing_written(tmp_path, out)

    with pytest.raises(UsageError, match="is a file"):
        export_onnx(model.model_dir / "config.json", out)


def test_non_t5_model_is_refused(model: Tiny, tokenizer: Any, tmp_path: Path) -> None:
    from transformers import BartConfig, BartForConditionalGeneration

    from modelyard.optimize import export_onnx
    from modelyard.training import save_model

    config = BartConfig(
        vocab_size=200,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=64,
    )
    bart = save_model(BartForConditionalGeneration(config), tokenizer, tmp_path / "bart")
    out = tmp_path / "out"
    with pytest.raises(UsageError, match=r"supports T5 seq2seq models .* not model_type 'bart'"):
        export_onnx(bart, out)
    _nothing_written(tmp_path, out)


def test_bad_arguments_and_occupied_output(model: Tiny, tmp_path: Path) -> None:
    from modelyard.optimize import export_onnx

    out = tmp_path / "out"
    for opset in (13, 21, "17", True):
        with pytest.raises(UsageError, match="opset must be a whole number from 14 to 20"):
            export_onnx(model.model_dir, out, opset=opset)  # type: ignore[arg-type]
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(AlreadyExistsError, match="not empty"):
        export_onnx(model.model_dir, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(AlreadyExistsError, match="not a directory"):
        export_onnx(model.model_dir, tmp_path / "file")


def test_failure_midway_leaves_nothing(model: Tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from modelyard.optimize import _onnx, export_onnx

    def disagree(*args: Any) -> None:
        raise IntegrityError("the exported graphs disagree with the PyTorch model")

    monkeypatch.setattr(_onnx, "_check_against_model", disagree)
    out = tmp_path / "sub" / "out"
    with pytest.raises(IntegrityError, match="disagree"):
        export_onnx(model.model_dir, out)
    _nothing_written(tmp_path / "sub", out)
    # an existing empty directory is accepted, and replaced by the export
    monkeypatch.undo()
    out.mkdir()
    assert export_onnx(model.model_dir, out) == out
    assert (out / "onnx.json").is_file()


def test_decoding_settings_the_runtime_does_not_apply_are_warned_about(
    model: Tiny, torch_model: Any, tokenizer: Any, tmp_path: Path
) -> None:
    from modelyard.optimize import export_onnx
    from modelyard.training import save_model

    torch_model.generation_config.no_repeat_ngram_size = 3
    try:
        src = save_model(torch_model, tokenizer, tmp_path / "ngram")
    finally:
        torch_model.generation_config.no_repeat_ngram_size = 0
    with pytest.warns(UserWarning, match="sets no_repeat_ngram_size; OnnxSeq2Seq decodes greedily without"):
        export_onnx(src, tmp_path / "out")
