"""An output directory inside the directory being read is refused: the result would become an unlisted file
of its own source, which then fails verification (nothing is written, the source stays as it was)."""

from __future__ import annotations

from pathlib import Path

import pytest
from _onnx_tiny import Tiny, tiny  # tests/optimize/_onnx_tiny.py

from modelyard.errors import UsageError
from modelyard.optimize import export_onnx, prune_model, quantize_int8
from modelyard.serving import _format as fmt
from modelyard.training import verify_model_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    return tiny(tmp_path_factory)


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def test_an_export_into_its_own_model_directory_is_refused(model: Tiny, tmp_path: Path) -> None:
    import shutil

    src = Path(shutil.copytree(model.model_dir, tmp_path / "model"))
    before = _files(src)
    (tmp_path / "link").symlink_to(src)
    for out in (src / "onnx", src / "sub" / "onnx", tmp_path / "link" / "onnx"):
        with pytest.raises(UsageError, match="inside"):
            export_onnx(src, out)
        with pytest.raises(UsageError, match="inside"):
            prune_model(src, out, amount=0.3)
        assert _files(src) == before
    verify_model_dir(src)  # still what its manifest lists


def test_a_quantisation_into_its_own_export_is_refused(model: Tiny, tmp_path: Path) -> None:
    import shutil

    src = Path(shutil.copytree(model.onnx_dir, tmp_path / "fp32"))
    before = _files(src)
    with pytest.raises(UsageError, match="inside"):
        quantize_int8(src, src / "int8")
    assert _files(src) == before
    fmt.read_meta(src, verify=True)
