"""The ONNX runtime: it works with torch and transformers import-blocked, checks what it loads (missing,
altered or corrupt files are clear errors), validates its arguments, and is batch- and thread-independent."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

# the shared tiny model lives with the optimize tests (test directories are not packages)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "optimize"))
from _onnx_tiny import Tiny, sources, tiny

from modelyard.errors import IntegrityError, NotFoundError, UsageError

pytest.importorskip("onnxruntime")
pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    pytest.importorskip("torch")
    return tiny(tmp_path_factory)


def _python(code: str, *, prelude: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True, timeout=300
    )


BLOCK = """
import sys
sys.modules["torch"] = None  # an import of torch (or transformers) now raises ImportError
sys.modules["transformers"] = None
"""


def test_serving_works_with_torch_and_transformers_blocked(model: Tiny, tmp_path: Path) -> None:
    from modelyard.serving import OnnxSeq2Seq

    texts = sources(12)
    expected = {
        str(path): OnnxSeq2Seq(path, intra_op_threads=1).generate(texts, max_new_tokens=16, batch_size=5)
        for path in (model.onnx_dir, model.int8_dir())
    }
    (tmp_path / "job.json").write_text(json.dumps({"texts": texts, "dirs": list(expected)}))
    proc = _python(
        f"""
        import json
        job = json.loads(open({str(tmp_path / "job.json")!r}).read())
        import modelyard.serving
        assert "onnxruntime" not in sys.modules  # loaded on first use, not on import
        from modelyard.serving import OnnxSeq2Seq
        out = {{d: OnnxSeq2Seq(d, intra_op_threads=1).generate(job["texts"], max_new_tokens=16, batch_size=5)
               for d in job["dirs"]}}
        loaded = sorted(m for m in sys.modules if sys.modules[m] is not None
                        and m.split(".")[0] in ("torch", "transformers", "sentencepiece"))
        print(json.dumps({{"out": out, "loaded": loaded}}))
        """,
        prelude=BLOCK,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    assert result["out"] == expected


def test_importing_the_stages_loads_no_heavy_library() -> None:
    proc = _python(
        """
        import sys
        import modelyard.optimize, modelyard.serving
        from modelyard.optimize import export_onnx, quantize_int8
        heavy = sorted(m for m in ("torch", "transformers", "onnx", "onnxruntime", "tokenizers", "numpy")
                       if m in sys.modules)
        print(heavy)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_public_surface() -> None:
    import modelyard.optimize
    import modelyard.serving
    from modelyard.serving import _onnx

    assert "OnnxSeq2Seq" in modelyard.serving.__all__ and "create_app" in modelyard.serving.__all__
    assert modelyard.serving.OnnxSeq2Seq is _onnx.OnnxSeq2Seq
    assert {"export_onnx", "quantize_int8"} <= set(modelyard.optimize.__all__)
    assert modelyard.optimize.export_onnx.__module__ == "modelyard.optimize._onnx"
    with pytest.raises(AttributeError):
        _ = modelyard.serving.Nope  # type: ignore[attr-defined]


# -- what it loads -----------------------------------------------------------------------------------------


def _copy(model: Tiny, dst: Path) -> Path:
    shutil.copytree(model.onnx_dir, dst)
    return dst


def _rehash(root: Path, name: str) -> None:
    """Make onnx.json vouch for the current bytes of ``name`` (as an attacker with write access could)."""
    from modelyard.serving._format import sha256_file

    meta = json.loads((root / "onnx.json").read_text())
    meta["files"][name] = {"size": (root / name).stat().st_size, "sha256": sha256_file(root / name)}
    (root / "onnx.json").write_text(json.dumps(meta))


def test_missing_and_foreign_directories(model: Tiny, tmp_path: Path) -> None:
    from modelyard.serving import OnnxSeq2Seq

    with pytest.raises(NotFoundError, match="not found"):
        OnnxSeq2Seq(tmp_path / "nope")
    with pytest.raises(UsageError, match=r"not an ONNX model directory \(no onnx.json\); make one with"):
        OnnxSeq2Seq(model.model_dir)
    bad = _copy(model, tmp_path / "bad-json")
    (bad / "onnx.json").write_text("{not json")
    with pytest.raises(IntegrityError, match=r"onnx\.json is not valid JSON"):
        OnnxSeq2Seq(bad)
    meta = json.loads((model.onnx_dir / "onnx.json").read_text())
    future = _copy(model, tmp_path / "future")
    (future / "onnx.json").write_text(json.dumps({**meta, "format": "modelyard.onnx-seq2seq/9"}))
    with pytest.raises(UsageError, match=r"this modelyard reads 'modelyard\.onnx-seq2seq/1'"):
        OnnxSeq2Seq(future)
    unsafe = _copy(model, tmp_path / "unsafe")
    files = {**meta["files"], "../escape": {"size": 1, "sha256": "0" * 64}}
    (unsafe / "onnx.json").write_text(json.dumps({**meta, "files": files}))
    with pytest.raises(IntegrityError, match=r"unsafe file name '\.\./escape'"):
        OnnxSeq2Seq(unsafe)


def test_altered_missing_or_extra_files_are_refused(model: Tiny, tmp_path: Path) -> None:
    from modelyard.serving import OnnxSeq2Seq

    flipped = _copy(model, tmp_path / "flipped")
    data = bytearray((flipped / "decoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (flipped / "decoder.onnx").write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"decoder\.onnx does not match its SHA-256") as info:
        OnnxSeq2Seq(flipped)
    assert info.value.details["file"] == "decoder.onnx"

    gone = _copy(model, tmp_path / "gone")
    (gone / "tokenizer.json").unlink()
    with pytest.raises(IntegrityError, match=r"tokenizer\.json is listed in onnx.json but missing"):
        OnnxSeq2Seq(gone)

    extra = _copy(model, tmp_path / "extra")
    (extra / "payload.pkl").write_bytes(b"\x80\x04.")
    with pytest.raises(IntegrityError, match=r"files not listed in onnx.json: payload\.pkl"):
        OnnxSeq2Seq(extra)

    linked = _copy(model, tmp_path / "linked")
    (linked / "config.json").unlink()
    (linked / "config.json").symlink_to(model.onnx_dir / "config.json")
    with pytest.raises(IntegrityError, match=r"config\.json is listed in onnx.json but missing"):
        OnnxSeq2Seq(linked)


def test_corrupt_graph_or_tokenizer_is_a_clear_error(model: Tiny, tmp_path: Path) -> None:
    from modelyard.serving import OnnxSeq2Seq

    corrupt = _copy(model, tmp_path / "corrupt")
    (corrupt / "encoder.onnx").write_bytes(b"this is not a protobuf" * 10)
    with pytest.raises(IntegrityError, match=r"encoder\.onnx does not match"):
        OnnxSeq2Seq(corrupt)
    _rehash(corrupt, "encoder.onnx")  # the description vouches for the bad bytes: onnxruntime refuses them
    with pytest.raises(IntegrityError, match=r"encoder\.onnx cannot be loaded by onnxruntime") as info:
        OnnxSeq2Seq(corrupt)
    assert info.value.details["file"] == "encoder.onnx"
    # without verification the load itself still fails cleanly
    truncated = _copy(model, tmp_path / "truncated")
    blob = (truncated / "decoder_with_past.onnx").read_bytes()
    (truncated / "decoder_with_past.onnx").write_bytes(blob[: len(blob) // 3])
    with pytest.raises(IntegrityError, match=r"decoder_with_past\.onnx cannot be loaded by onnxruntime"):
        OnnxSeq2Seq(truncated, verify=False)
    # a graph swapped for another valid one is caught by its input names
    swapped = _copy(model, tmp_path / "swapped")
    shutil.copyfile(swapped / "decoder.onnx", swapped / "encoder.onnx")
    with pytest.raises(IntegrityError, match=r"encoder\.onnx has inputs"):
        OnnxSeq2Seq(swapped, verify=False)
    bad_tok = _copy(model, tmp_path / "bad-tok")
    (bad_tok / "tokenizer.json").write_text('{"version": "1.0", "model": 42}')
    with pytest.raises(IntegrityError, match=r"tokenizer\.json cannot be loaded"):
        OnnxSeq2Seq(bad_tok, verify=False)


# -- generation ---------------------------------------------------------------------------------------------


def test_generate_arguments_order_and_batch_independence(model: Tiny) -> None:
    from modelyard.serving import OnnxSeq2Seq

    runner = OnnxSeq2Seq(model.onnx_dir, intra_op_threads=1)
    assert "OnnxSeq2Seq(" in repr(runner)
    texts = sources(20, seed=11)
    whole = runner.generate(texts, max_new_tokens=12, batch_size=64)
    assert runner.generate(texts, max_new_tokens=12, batch_size=3) == whole
    assert runner.generate(texts[::-1], max_new_tokens=12, batch_size=7) == whole[::-1]
    assert runner.generate([], max_new_tokens=12) == []
    assert runner.generate([""], max_new_tokens=3) == runner.generate([""], max_new_tokens=3)
    short = runner.generate_ids(texts, max_new_tokens=2)
    assert all(len(ids) <= 2 for ids in short)
    forced = runner.generate_ids(texts[:3], max_new_tokens=9, min_new_tokens=9)
    assert all(len(ids) == 9 and 1 not in ids for ids in forced)
    for bad in (
        {"max_new_tokens": 0},
        {"batch_size": 0},
        {"max_source_length": 1},
        {"min_new_tokens": -1},
        {"batch_size": 2.5},
        {"max_new_tokens": True},
    ):
        with pytest.raises(UsageError, match="must be a whole number >="):
            runner.generate(texts, **bad)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="not one string"):
        runner.generate("normalise date (en-US): 7/12/2003")
    with pytest.raises(UsageError, match="item 1 is int"):
        runner.generate(["a", 3])  # type: ignore[list-item]
    with pytest.raises(UsageError, match="intra_op_threads must be a whole number >= 1"):
        OnnxSeq2Seq(model.onnx_dir, intra_op_threads=0)


def test_one_instance_serves_several_threads(model: Tiny) -> None:
    from modelyard.serving import OnnxSeq2Seq

    runner = OnnxSeq2Seq(model.onnx_dir, intra_op_threads=1)
    texts = sources(24, seed=5)
    expected = runner.generate(texts, max_new_tokens=12, batch_size=4)
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            chunk = texts[offset:] + texts[:offset]
            out = runner.generate(chunk, max_new_tokens=12, batch_size=4)
            results.append(out[len(texts) - offset :] + out[: len(texts) - offset])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i * 6,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results == [expected] * 4
