"""An ONNX export (what export_onnx or quantize_int8 wrote, or such a registered version) given where the
PyTorch model it came from is needed: export_onnx, prune_model and distill said "no manifest.json", an
IntegrityError that reads as a damaged save. Each now refuses it as a usage error naming what to give instead,
before anything is written or recorded; `optimize` of such a version (SDK and `yard optimize`) names the
PyTorch parent and is on record as refused."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import _onnx_tiny  # tests/optimize/_onnx_tiny.py
import pytest
from _onnx_tiny import Tiny
from sqlalchemy import select

from modelyard import registry
from modelyard.core import Platform
from modelyard.core._models import AuditRecord
from modelyard.errors import UsageError
from modelyard.testing import TINY_RECIPE, Yard
from modelyard.tracking import Client

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from modelyard.optimize import distill, export_onnx, optimize, prune_model
from modelyard.training import parse_recipe

model, onnx_dir = _onnx_tiny.model, _onnx_tiny.onnx_dir  # the shared fixtures

ONNX = r"is an ONNX model .*exported from"


def _student(**model: Any) -> Any:
    spec = copy.deepcopy(TINY_RECIPE)
    spec["experiment"] = "distill"
    sizes = {"d_model": 32, "d_ff": 64, "num_layers": 2, "num_heads": 2, "d_kv": 16}
    spec["model"] = model or {"init": "scratch", "config": sizes}
    spec["hyperparameters"].update(max_steps=2)
    if model:
        spec["tokenizer"] = {"from": "model"}
    return parse_recipe(spec)


def _listing(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def test_export_of_an_onnx_export_is_a_usage_error(onnx_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=ONNX) as info:
        export_onnx(onnx_dir, tmp_path / "again")
    assert "save_model" in str(info.value) and "manifest.json" not in str(info.value)
    assert _listing(tmp_path) == []  # no output, no staging directory


def test_pruning_an_onnx_export_is_a_usage_error(onnx_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=ONNX):
        prune_model(onnx_dir, tmp_path / "pruned", amount=0.3)
    assert _listing(tmp_path) == []


def test_an_onnx_teacher_or_student_is_a_usage_error(
    onnx_dir: Path, model: Tiny, platform: Platform, tmp_path: Path
) -> None:
    with Client(platform) as client:
        before = len(client.search_runs("distill"))
        with pytest.raises(UsageError, match="teacher .*" + ONNX):
            distill(onnx_dir, _student(), client=client)
        # a student that would start from the export: trained from it, the loop said "no safetensors"
        with pytest.raises(UsageError, match="student .*" + ONNX):
            distill(model.model_dir, _student(pretrained=str(onnx_dir)), client=client)
        assert len(client.search_runs("distill")) == before


def test_optimising_a_registered_onnx_version_names_its_parent(
    model: Tiny, platform: Platform, yard: Yard, tmp_path: Path
) -> None:
    ctx = platform.context()
    parent = registry.register(platform, ctx, model.model_dir, "tiny").spec
    onnx = registry.register(platform, ctx, model.onnx_dir, "tiny", parent=parent).spec
    int8 = registry.register(platform, ctx, model.int8_dir(), "tiny", parent=onnx).spec
    lone = registry.register(platform, ctx, model.onnx_dir, "lone").spec  # its parent not recorded
    for spec, source in ((onnx, parent), (int8, parent), (lone, None)):
        with pytest.raises(UsageError, match=f"{spec} is an ONNX model") as info:
            optimize(platform, ctx, spec)
        assert "PyTorch" in str(info.value) and (source is None or source in str(info.value))
    result = yard("optimize", int8, env={"YARD_HOME": str(platform.settings.home)})
    assert result.code == 2 and "is an ONNX model" in result.err, result.err
    with platform.db.read() as s:
        rows = s.scalars(select(AuditRecord).where(AuditRecord.outcome == "refused")).all()
    assert [(r.action, r.resource) for r in rows] == [
        ("model.register", f"model:{spec}") for spec in (onnx, int8, lone, int8)
    ]
    assert sorted(v.spec for v in registry.list_versions(platform, ctx, "tiny")) == [parent, onnx, int8]
