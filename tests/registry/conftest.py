"""Registry tests share the session's trained model (tests/conftest.py: ``trained``, ``model_dir``); those
that need its evaluation data ``norm@1`` work in its home."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from modelyard.config import load_settings
from modelyard.core import Platform
from modelyard.testing import TrainedModel


@pytest.fixture
def trained_platform(trained: TrainedModel) -> Iterator[Platform]:
    p = Platform(load_settings(home=trained.home))
    yield p
    p.close()
