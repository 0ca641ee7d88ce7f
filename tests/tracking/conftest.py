from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from modelyard.core import Platform
from modelyard.testing import make_platform
from modelyard.tracking import Client


@pytest.fixture
def client(platform: Platform) -> Iterator[Client]:
    c = Client(platform=platform)
    yield c
    c.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_platform(request: pytest.FixtureRequest, home: Path) -> Iterator[Platform]:
    """An initialised home on SQLite, or on a brand-new PostgreSQL database."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    p = make_platform(home, database_url=url)
    yield p
    p.close()
