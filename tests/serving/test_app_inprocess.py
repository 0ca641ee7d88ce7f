"""The app in this process (Starlette's TestClient runs its lifespan): a PyTorch version, timeouts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from modelyard import registry
from modelyard.config import load_settings
from modelyard.core import Platform
from modelyard.serving import create_app, parse_config
from modelyard.testing import TrainedModel

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def platform(trained: TrainedModel) -> Iterator[Platform]:
    p = Platform(load_settings(home=trained.home))
    registry.register(p, p.context(), trained.model_dir, "torch-served")
    yield p
    p.close()


def test_a_version_without_onnx_is_served_with_pytorch(platform: Platform) -> None:
    config = parse_config({"models": ["torch-served@1"], "auth": False})
    with TestClient(create_app(config, platform)) as client:
        models = client.get("/v1/models").json()["models"]
        assert models[0]["variant"] == "fp32"
        r = client.post(
            "/v1/models/torch-served:predict", json={"inputs": ["normalise date (de-DE): 02.03.2013"]}
        )
        assert r.status_code == 200 and isinstance(r.json()["outputs"][0], str)


def test_a_request_past_its_timeout_is_504_and_the_server_goes_on(platform: Platform) -> None:
    config = parse_config(
        {
            "models": ["torch-served@1"],
            "auth": False,
            "limits": {"timeout_s": 0.001},
            "batching": {"max_wait_ms": 50},
        }
    )
    with TestClient(create_app(config, platform)) as client:
        r = client.post("/v1/models/torch-served:predict", json={"inputs": ["normalise amount (en-US): $12"]})
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        assert client.get("/healthz").status_code == 200


def test_config_refuses_what_is_unsafe_or_inconsistent() -> None:
    from modelyard.errors import ValidationError

    with pytest.raises(ValidationError, match="loopback"):
        parse_config({"models": ["m@production"], "auth": False, "host": "0.0.0.0"})
    with pytest.raises(ValidationError, match="once"):
        parse_config({"models": ["m@production", "m@staging"]})
    with pytest.raises(ValidationError, match="max_queue"):
        parse_config({"models": ["m@1"], "batching": {"max_batch_size": 64, "max_queue": 8}})
    with pytest.raises(ValidationError, match="unknown key"):
        parse_config({"models": ["m@1"], "batchin": {}})
