"""`yard optimize` and its steps on bad input or a failure part-way: a clear modelyard error, on record, and
nothing written or registered."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from _onnx_tiny import Tiny, tiny  # tests/optimize/_onnx_tiny.py
from sqlalchemy import select

from modelyard import registry
from modelyard.core import Platform
from modelyard.core._models import AuditRecord
from modelyard.errors import UsageError
from modelyard.optimize import export_onnx, optimize, parse_budget, prune_model, quantize_int8

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    return tiny(tmp_path_factory)


def _refused(platform: Platform) -> list[tuple[str, str]]:
    with platform.db.read() as s:
        rows = s.scalars(select(AuditRecord).where(AuditRecord.outcome == "refused")).all()
    return [(r.action, r.resource) for r in rows]


@pytest.mark.parametrize("missing", ["onnx", "onnxruntime"])
def test_a_missing_optimize_extra_is_named_before_any_work(
    missing: str, model: Tiny, platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each was an unexpected ModuleNotFoundError, and `yard optimize` met it only after it had downloaded
    # and measured the parent.
    monkeypatch.setitem(sys.modules, missing, None)  # what `import onnx` meets where it is not installed
    work = tmp_path / "work"
    work.mkdir()
    for call in (
        lambda: export_onnx(model.model_dir, work / "onnx"),
        lambda: quantize_int8(model.onnx_dir, work / "int8"),
    ):
        with pytest.raises(UsageError, match=rf"needs {missing}\b.*pip install 'modelyard\[optimize\]'"):
            call()
    assert list(work.iterdir()) == []
    ctx = platform.context()
    with pytest.raises(UsageError, match=rf"needs {missing}\b"):
        optimize(platform, ctx, "m@1")
    assert _refused(platform) == [("model.register", "model:m@1")]


def test_an_output_below_a_file_is_a_clear_error(model: Tiny, tmp_path: Path) -> None:
    # mkdir of the staging folder's parent raised a bare FileExistsError
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "out"
    for call in (
        lambda: export_onnx(model.model_dir, out),
        lambda: quantize_int8(model.onnx_dir, out),
        lambda: prune_model(model.model_dir, out, amount=0.3),
    ):
        with pytest.raises(UsageError, match=r"cannot create the output directory .*file"):
            call()
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


@pytest.mark.parametrize("budget", ["rougeL=-" + "9" * 400, {"bleu": 1e400}])
def test_a_budget_beyond_any_number_is_refused(budget: object) -> None:
    # 400 digits parsed as -inf: every variant was within it, and `--json` printed -Infinity (not JSON)
    with pytest.raises(UsageError):
        parse_budget(budget)  # type: ignore[arg-type]


def test_no_evaluation_data_is_a_refusal_on_record(model: Tiny, platform: Platform) -> None:
    # A version registered from a directory names no held-out data: refused, but not audited (the check
    # ran after the others, outside the refusal's record).
    ctx = platform.context()
    spec = registry.register(platform, ctx, model.model_dir, "plain").spec
    with pytest.raises(UsageError, match="names no held-out dataset version"):
        optimize(platform, ctx, spec)
    assert _refused(platform) == [("model.register", f"model:{spec}")]


def test_a_failure_while_measuring_registers_no_variant(
    model: Tiny, platform: Platform, tmp_path: Path
) -> None:
    # Each variant was registered as soon as it was measured: stopping while the INT8 one was measured
    # (Ctrl-C, a runtime error) left the FP32 one registered with no report of the run, and running
    # `yard optimize` again registered it a second time.
    from modelyard.data import add_version
    from modelyard.evaluation import EvalData
    from modelyard.training import write_dataset

    ctx = platform.context()
    files = write_dataset(tmp_path / "data", 40, seed=2)
    add_version(platform, ctx, files[0].parent, "norm")
    spec = registry.register(platform, ctx, model.model_dir, "m").spec

    def interrupt(message: str) -> None:
        if message == "measuring onnx-int8":
            raise KeyboardInterrupt

    settings = dict(data=EvalData(dataset="norm@1"), max_samples=4, max_new_tokens=4, latency_samples=1)
    with pytest.raises(KeyboardInterrupt):
        optimize(platform, ctx, spec, progress=interrupt, **settings)  # type: ignore[arg-type]
    assert [v.spec for v in registry.list_versions(platform, ctx, "m")] == [spec]
    said: list[str] = []
    report = optimize(platform, ctx, spec, progress=said.append, **settings)  # type: ignore[arg-type]
    assert [v.spec for v in report.variants] == ["m@2", "m@3"]
    measured = [i for i, m in enumerate(said) if m.startswith("measuring onnx")]
    assert max(measured) < min(i for i, m in enumerate(said) if m.startswith("registering"))
