"""A real `yard serve` process over registered ONNX versions of the session's trained model (see
tests/serving/_served.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _served import Served, Server, break_tokenizer, start_server, stop  # tests/serving/_served.py

from modelyard import registry
from modelyard.config import load_settings
from modelyard.core import Platform, Role, create_project, create_token
from modelyard.testing import TrainedModel, actor


@pytest.fixture(scope="session")
def served(trained: TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> Served:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("fastapi")
    import shutil

    from modelyard.optimize import export_onnx, quantize_int8

    root = tmp_path_factory.mktemp("onnx")
    fp32 = export_onnx(trained.model_dir, root / "fp32")
    int8 = quantize_int8(fp32, root / "int8")
    broken = Path(shutil.copytree(fp32, root / "broken"))
    break_tokenizer(broken, "normalise")
    with Platform(load_settings(home=trained.home)) as p:
        admin = p.context()
        for d in (fp32, int8, broken):
            registry.register(p, admin, d, "srv")
        registry.set_alias(p, admin, "srv@1", "live")
        viewer = actor(p, admin, "srv-client", Role.VIEWER)
        engineer = actor(p, admin, "srv-ops", Role.ENGINEER)
        _, viewer_token = create_token(p, admin, viewer.user)
        _, engineer_token = create_token(p, admin, engineer.user)
        approver = actor(p, admin, "srv-approver", Role.APPROVER)
        for v in (2, 3):  # candidates of the tests: gated (not by their author), as most of the traffic needs
            registry.attest(p, approver, f"srv@{v}", "gates", {"checks": []}, passed=True)
        _, approver_token = create_token(p, admin, approver.user)
        create_project(p, admin, "elsewhere")
        other = p.context(project="elsewhere")
        _, other_token = create_token(p, other, admin.user)
    return Served(trained.home, viewer_token, other_token, engineer_token, approver_token)


@pytest.fixture
def server_factory(served: Served, tmp_path: Path) -> Iterator[object]:
    started: list[Server] = []

    def start(*, env: dict[str, str] | None = None, **config: object) -> Server:
        s = start_server(served, tmp_path, env=env, **config)
        started.append(s)
        return s

    yield start
    for s in started:
        stop(s)
