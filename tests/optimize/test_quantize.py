"""INT8 dynamic quantisation of an ONNX export: a smaller directory that generates, its agreement with FP32
reported (not asserted equal: quantisation changes some outputs), bad input refused with nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from _onnx_tiny import Tiny, sources, tiny  # tests/optimize/_onnx_tiny.py

from modelyard.errors import AlreadyExistsError, IntegrityError, NotFoundError, UsageError

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    return tiny(tmp_path_factory)


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir())


def test_int8_directory_is_smaller_and_generates(model: Tiny, capsys: pytest.CaptureFixture[str]) -> None:
    import onnx

    from modelyard.serving import OnnxSeq2Seq

    int8 = model.int8_dir()
    fp32_meta = json.loads((model.onnx_dir / "onnx.json").read_text())
    meta = json.loads((int8 / "onnx.json").read_text())
    assert meta["quantization"] == "int8-dynamic"
    assert meta["quantization_settings"]["weight_type"] == "QInt8"
    assert set(meta["quantization_settings"]["op_types"]) >= {"MatMul", "Gemm"}
    assert {k: meta[k] for k in ("config", "tokens", "graphs", "opset")} == {
        k: fp32_meta[k] for k in ("config", "tokens", "graphs", "opset")
    }
    assert meta["source"]["model_manifest_sha256"] == fp32_meta["source"]["model_manifest_sha256"]
    assert sorted(p.name for p in int8.iterdir()) == sorted(p.name for p in model.onnx_dir.iterdir())
    for name in ("tokenizer.json", "config.json", "generation_config.json"):
        assert (int8 / name).read_bytes() == (model.onnx_dir / name).read_bytes()
    weights = (int8 / "weights.onnx.data").stat().st_size
    assert weights < 0.5 * (model.onnx_dir / "weights.onnx.data").stat().st_size
    assert _size(int8) < _size(model.onnx_dir)
    ops = {node.op_type for node in onnx.load(str(int8 / "decoder_with_past.onnx")).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops

    texts = sources(40)
    fp32 = OnnxSeq2Seq(model.onnx_dir, intra_op_threads=1).generate(texts, max_new_tokens=24, batch_size=16)
    runner = OnnxSeq2Seq(int8, intra_op_threads=1)
    assert runner.quantization == "int8-dynamic"
    got = runner.generate(texts, max_new_tokens=24, batch_size=16)
    assert len(got) == 40 and all(isinstance(t, str) for t in got)
    agreement = sum(a == b for a, b in zip(got, fp32, strict=True)) / len(got)
    with capsys.disabled():
        print(f"\nINT8 outputs identical to FP32: {agreement:.0%} of {len(got)}")
    # not an equality: only a guard against a broken quantiser (measured 80-95% on this model)
    assert agreement >= 0.5


def test_quantize_refuses_bad_input(model: Tiny, tmp_path: Path) -> None:
    from modelyard.optimize import quantize_int8

    out = tmp_path / "out"

    def nothing_written() -> None:
        assert not out.exists()
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")] == []

    with pytest.raises(NotFoundError, match="not found"):
        quantize_int8(tmp_path / "nope", out)
    with pytest.raises(UsageError, match=r"not an ONNX model directory \(no onnx.json\)"):
        quantize_int8(model.model_dir, out)
    with pytest.raises(UsageError, match="already quantised"):
        quantize_int8(model.int8_dir(), out)
    nothing_written()

    damaged = tmp_path / "damaged"
    shutil.copytree(model.onnx_dir, damaged)
    with open(damaged / "weights.onnx.data", "r+b") as fh:
        fh.seek(100)
        fh.write(b"\xff\xff")
    with pytest.raises(IntegrityError, match=r"weights\.onnx\.data does not match its SHA-256"):
        quantize_int8(damaged, out)
    nothing_written()

    out.mkdir()
    (out / "x").write_text("x")
    with pytest.raises(AlreadyExistsError, match="not empty"):
        quantize_int8(model.onnx_dir, out)
