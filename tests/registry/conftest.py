"""Registry tests share the session's trained model (tests/conftest.py: ``trained``, ``model_dir``); those
that need its evaluation data ``norm@1`` work in its home. Those that need no trained model register
``tiny_model`` folders."""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from modelyard.config import load_settings
from modelyard.core import Platform
from modelyard.testing import TrainedModel


@pytest.fixture
def trained_platform(trained: TrainedModel) -> Iterator[Platform]:
    p = Platform(load_settings(home=trained.home))
    yield p
    p.close()


@pytest.fixture
def name() -> str:
    """A model name of this test's own, in a home the session's tests share."""
    return f"m-{secrets.token_hex(4)}"


@pytest.fixture
def tiny_model(tmp_path: Path) -> Callable[..., Path]:
    """Makes a new model folder to register: one 2-float safetensors tensor filled with ``value`` (versions
    made with different values differ) and an empty config.json."""
    count = itertools.count(1)

    def make(value: float = 0.0) -> Path:
        root = tmp_path / f"tiny-model-{next(count)}"
        root.mkdir()
        save_file({"w": np.full(2, value, dtype=np.float32)}, str(root / "model.safetensors"))
        (root / "config.json").write_text("{}", encoding="utf-8")
        return root

    return make
