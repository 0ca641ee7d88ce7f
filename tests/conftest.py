"""Shared fixtures. Every test gets a clean environment: no YARD_* from the developer's shell."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelyard.core import Platform
from modelyard.testing import (
    FakeCluster,
    TrainedModel,
    Yard,
    cli_runner,
    fake_kubernetes,
    fresh_postgres_database,
    make_platform,
    trained_model,
)

PG_ENV = "YARD_TEST_DATABASE_URL"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("YARD_") and key != PG_ENV:
            monkeypatch.delenv(key)
    monkeypatch.setenv("YARD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("YARD_AGENT_DIR", str(tmp_path / "agent"))  # never a developer's running agent
    # No developer's cluster either: a kubeconfig that does not exist, and not in a pod.
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)


@pytest.fixture
def k8s(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeCluster]:
    """A fake Kubernetes API server that the real kubernetes client reaches through KUBECONFIG."""
    pytest.importorskip("kubernetes")
    with fake_kubernetes() as cluster:
        monkeypatch.setenv("KUBECONFIG", str(cluster.write_kubeconfig(tmp_path / "kubeconfig")))
        yield cluster


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def platform(home: Path) -> Iterator[Platform]:
    """An initialised home on SQLite and a local folder, as `yard init` makes it."""
    p = make_platform(home)
    yield p
    p.close()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A brand-new, empty PostgreSQL database (dropped afterwards); skipped without a server."""
    server = os.environ.get(PG_ENV)
    if not server:
        pytest.skip(f"{PG_ENV} is not set")
    with fresh_postgres_database(server) as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_platform(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Platform]:
    """An initialised home on SQLite, then on a brand-new PostgreSQL database (skipped without a server)."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    p = make_platform(tmp_path / "home", database_url=url)
    yield p
    p.close()


@pytest.fixture
def yard(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Yard:
    """Run ``yard ARGS`` in this process; ``env`` sets (or with None, unsets) variables for that call."""
    return cli_runner(capsys, monkeypatch, tmp_path)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    """A small T5 trained once per session by the real loop, in its own home (which holds norm@1)."""
    pytest.importorskip("torch")
    return trained_model(tmp_path_factory.mktemp("trained"))


@pytest.fixture
def model_dir(trained: TrainedModel, tmp_path: Path) -> Path:
    """A private copy of the trained model's directory (tests may damage it)."""
    return Path(shutil.copytree(trained.model_dir, tmp_path / "model"))
