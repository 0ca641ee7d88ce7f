"""A small seq2seq model trained once per session by the real loop (`train()`), for the registry tests.

Tests register its downloaded model directory into their own fresh home (``model_dir``), or register from
the run in the session's home (``trained.home``)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelyard.config import load_settings
from modelyard.core import Platform
from modelyard.testing import TrainedModel, trained_model


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    pytest.importorskip("torch")
    return trained_model(tmp_path_factory.mktemp("trained"))


@pytest.fixture
def model_dir(trained: TrainedModel, tmp_path: Path) -> Path:
    """A private copy of the trained model's directory (tests may damage it)."""
    return Path(shutil.copytree(trained.model_dir, tmp_path / "model"))


@pytest.fixture
def trained_platform(trained: TrainedModel) -> Iterator[Platform]:
    p = Platform(load_settings(home=trained.home))
    yield p
    p.close()
