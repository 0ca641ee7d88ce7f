"""The app in this process (Starlette's TestClient runs its lifespan): a PyTorch version, timeouts."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

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


def test_a_version_without_onnx_is_served_with_pytorch(
    platform: Platform, capfd: pytest.CaptureFixture[str]
) -> None:
    import transformers

    transformers.utils.logging.enable_progress_bar()  # as a process that never turned it off has it
    config = parse_config({"models": ["torch-served@1"], "auth": False})
    with TestClient(create_app(config, platform), base_url="http://localhost") as client:
        models = client.get("/v1/models").json()["models"]
        assert models[0]["variant"] == "fp32"
        r = client.post(
            "/v1/models/torch-served:predict", json={"inputs": ["normalise date (de-DE): 02.03.2013"]}
        )
        assert r.status_code == 200 and isinstance(r.json()["outputs"][0], str)
    assert "Loading weights" not in capfd.readouterr().err  # no progress bar in the server's log
    assert transformers.utils.logging.is_progress_bar_enabled()  # and the caller's setting is kept


def test_a_request_past_its_timeout_is_504_and_the_server_goes_on(platform: Platform) -> None:
    config = parse_config(
        {
            "models": ["torch-served@1"],
            "auth": False,
            "limits": {"timeout_s": 0.001},
            "batching": {"max_wait_ms": 50},
        }
    )
    with TestClient(create_app(config, platform), base_url="http://localhost") as client:
        r = client.post("/v1/models/torch-served:predict", json={"inputs": ["normalise amount (en-US): $12"]})
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        assert client.get("/healthz").status_code == 200


def test_metrics_need_a_token_only_when_metrics_auth_is_on(platform: Platform) -> None:
    from modelyard.core import create_token

    _, token = create_token(platform, platform.context(), platform.context().user)
    with TestClient(
        create_app(parse_config({"models": ["torch-served@1"]}), platform), base_url="http://localhost"
    ) as client:
        assert "yard_requests_total" in client.get("/metrics").text  # the default: scraped by annotation
    config = parse_config({"models": ["torch-served@1"], "metrics_auth": True})
    with TestClient(create_app(config, platform), base_url="http://localhost") as client:
        r = client.get("/metrics")
        assert r.status_code == 401 and "yard_requests_total" not in r.text
        assert client.get("/metrics", headers={"Authorization": "Bearer yard_x_y"}).status_code == 401
        r = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and "yard_requests_total" in r.text


def test_config_refuses_what_is_unsafe_or_inconsistent() -> None:
    from modelyard.errors import ValidationError

    with pytest.raises(ValidationError, match="loopback"):
        parse_config({"models": ["m@production"], "auth": False, "host": "0.0.0.0"})
    with pytest.raises(ValidationError, match="metrics_auth needs auth"):
        parse_config({"models": ["m@1"], "auth": False, "metrics_auth": True})
    with pytest.raises(ValidationError, match="once"):
        parse_config({"models": ["m@production", "m@staging"]})
    with pytest.raises(ValidationError, match="max_queue"):
        parse_config({"models": ["m@1"], "batching": {"max_batch_size": 64, "max_queue": 8}})
    with pytest.raises(ValidationError, match=r"limits\.max_inputs"):  # a request that large: 429 for ever
        parse_config({"models": ["m@1"], "batching": {"max_batch_size": 8, "max_queue": 16}})
    with pytest.raises(ValidationError, match="unknown key"):
        parse_config({"models": ["m@1"], "batchin": {}})
    # Servers share a row every share_s and read the others' rows of the last window_s: with a shorter
    # window each one's rows were mostly out of it, and the canary was judged on a fraction of its outcomes.
    with pytest.raises(ValidationError, match="share_s"):
        parse_config({"models": ["m@1"], "canary": {"window_s": 0.5, "share_s": 1}})


def _unloadable(platform: Platform, model_dir: Path, tmp: Path) -> int:
    """A version of torch-served whose config does not fit its weights: it registers, and fails to load."""
    import json
    import shutil

    broken = Path(shutil.copytree(model_dir, tmp / "broken"))
    config = json.loads((broken / "config.json").read_text())
    config["d_model"] *= 2
    (broken / "config.json").write_text(json.dumps(config))
    return registry.register(platform, platform.context(), broken, "torch-served").version


def _candidate(client: TestClient) -> object:
    return client.get("/v1/models").json()["models"][0].get("candidate")


def test_a_candidate_or_alias_that_cannot_load_keeps_the_server_up_and_following(
    platform: Platform, trained: TrainedModel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from modelyard.core import Role
    from modelyard.serving import deploy
    from modelyard.testing import actor

    owner = platform.context()
    admin = actor(platform, owner, "inprocess-approver", Role.APPROVER)  # all traffic: not the author's
    bad = _unloadable(platform, trained.model_dir, tmp_path)
    for v in (1, bad):
        registry.attest(platform, admin, f"torch-served@{v}", "gates", {"checks": []}, passed=True)
    registry.set_alias(platform, admin, "torch-served@1", "live")
    deploy(platform, admin, "torch-served", version=bad, mode="canary", weight=100)
    config = parse_config({"models": ["torch-served@live"], "auth": False, "alias_poll_s": 0.1})
    body = {"inputs": ["normalise date (de-DE): 02.03.2013"]}
    try:
        # A canary that cannot load does not keep the server from starting: the stable version serves.
        app = create_app(config, platform)
        with (
            caplog.at_level(logging.WARNING, "modelyard.serving"),
            TestClient(app, base_url="http://localhost") as client,
        ):
            assert client.get("/readyz").json() == {"status": "ready"}
            assert _candidate(client) is None
            r = client.post("/v1/models/torch-served:predict", json=body)
            assert r.status_code == 200 and r.json()["version"] == 1
            time.sleep(1.0)  # ten polls: the failed version is not downloaded and loaded again on each
            assert sum("cannot" in m or "no candidate" in m for m in caplog.messages) <= 2, caplog.messages

            # An alias moved to a version that cannot load does not keep a deployment change from applying.
            deploy(platform, admin, "torch-served", version=1, mode="canary", weight=100)
            _wait(lambda: _candidate(client) is not None)
            registry.set_alias(platform, admin, f"torch-served@{bad}", "live")
            deploy(platform, admin, "torch-served", version=None, mode="off")
            _wait(lambda: _candidate(client) is None)
            r = client.post("/v1/models/torch-served:predict", json=body)
            assert r.status_code == 200 and r.json()["version"] == 1  # the loaded stable version goes on
    finally:
        registry.set_alias(platform, admin, "torch-served@1", "live")
        deploy(platform, admin, "torch-served", version=None, mode="off")


def _wait(condition: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the server did not follow the deployment"
        time.sleep(0.1)


def test_a_candidate_leaves_traffic_when_the_deployment_names_one_that_cannot_load(
    platform: Platform, trained: TrainedModel, tmp_path: Path
) -> None:
    """The old candidate kept half of the traffic, and later weight changes were never applied, when its
    successor failed to load (helper-29): the stable version answers everything now."""
    from modelyard.core import Role
    from modelyard.serving import deploy
    from modelyard.testing import actor

    owner = platform.context()
    engineer = actor(platform, owner, "inprocess-engineer", Role.ENGINEER)
    good = registry.register(platform, owner, trained.model_dir, "torch-served").version
    bad = _unloadable(platform, trained.model_dir, tmp_path)
    deploy(platform, engineer, "torch-served", version=good, mode="ab", weight=50)
    config = parse_config({"models": ["torch-served@1"], "auth": False, "alias_poll_s": 0.1})
    body = {"inputs": ["normalise date (de-DE): 02.03.2013"]}
    try:
        with TestClient(create_app(config, platform), base_url="http://localhost") as client:
            assert _candidate(client) is not None
            deploy(platform, engineer, "torch-served", version=bad, mode="ab", weight=50)
            _wait(lambda: _candidate(client) is None)
            answered = {
                client.post("/v1/models/torch-served:predict", json=body).json()["version"] for _ in range(8)
            }
            assert answered == {1}
    finally:
        deploy(platform, engineer, "torch-served", version=None, mode="off")


def test_a_nul_in_a_body_is_a_400(platform: Platform) -> None:
    """PostgreSQL cannot store a NUL: one in an input lost its whole batch of the prediction log, and one in
    a feedback target was a 500 (helper-29)."""
    config = parse_config({"models": ["torch-served@1"], "auth": False})
    json_type = {"content-type": "application/json"}
    with TestClient(create_app(config, platform), base_url="http://localhost") as client:
        r = client.post(
            "/v1/models/torch-served:predict", content=b'{"inputs": ["a\\u0000b"]}', headers=json_type
        )
        assert r.status_code == 400 and "NUL" in r.json()["error"]["message"]
        body = b'{"request_id": "' + b"0" * 26 + b'", "target": "x\\u0000"}'
        r = client.post("/v1/models/torch-served:feedback", content=body, headers=json_type)
        assert r.status_code == 400 and "NUL" in r.json()["error"]["message"]
        r = client.post(
            "/v1/models/torch-served:predict", content=b'{"inputs": ["a\\\\u0000b"]}', headers=json_type
        )
        assert r.status_code == 200  # the six characters \u0000 are text


def test_inputs_too_slow_for_every_version_do_not_roll_a_canary_back(
    platform: Platform, trained: TrainedModel
) -> None:
    """A candidate's timeout was charged at once: requests that every version times out on rolled a
    healthy canary back (helper-29). It is charged only if the stable version answers them in time."""
    from modelyard.core import Role
    from modelyard.serving import deploy
    from modelyard.serving._deploy import current
    from modelyard.testing import actor

    owner = platform.context()
    engineer = actor(platform, owner, "inprocess-canary", Role.ENGINEER)
    twin = registry.register(platform, owner, trained.model_dir, "torch-served").version
    deploy(platform, engineer, "torch-served", version=twin, mode="canary", weight=50)
    config = parse_config(
        {
            "models": ["torch-served@1"],
            "auth": False,
            "limits": {"timeout_s": 0.001},
            "canary": {"min_requests": 3, "max_error_rate": 0.2},
            "alias_poll_s": 0.1,
        }
    )
    body = {"inputs": ["normalise date (de-DE): 02.03.2013"]}
    try:
        with TestClient(create_app(config, platform), base_url="http://localhost") as client:
            assert _candidate(client) is not None
            codes = {
                client.post("/v1/models/torch-served:predict", json={**body, "key": f"k{i}"}).status_code
                for i in range(24)
            }
            assert codes == {504}
            time.sleep(1.0)  # the stable version's tries of the same inputs, in the background
            assert _candidate(client) is not None
            dep = current(platform, owner, "torch-served")
            assert dep is not None and (dep.mode, dep.candidate) == ("canary", twin)
    finally:
        deploy(platform, engineer, "torch-served", version=None, mode="off")


def test_a_revoked_token_or_a_removed_or_disabled_user_gets_no_more_answers(platform: Platform) -> None:
    # The server reused a resolved token for 30 s: revoked, or its user removed or disabled, it still got
    # predictions for that long. auth_cache_s bounds it (default 1 s); 0 asks the store on every request.
    from modelyard.core import add_user, create_token, remove_user, revoke_token, set_disabled

    admin = platform.context()
    tokens = {}
    for name in ("srv-revoked", "srv-removed", "srv-disabled"):
        add_user(platform, admin, name, "viewer")
        tokens[name] = create_token(platform, admin, name)
    assert parse_config({"models": ["torch-served@1"]}).auth_cache_s == 1.0
    config = parse_config({"models": ["torch-served@1"], "auth_cache_s": 0})
    body = {"inputs": ["normalise amount (en-US): $12"], "parameters": {"max_new_tokens": 2}}

    def status(name: str) -> int:
        headers = {"Authorization": f"Bearer {tokens[name][1]}"}
        return client.post("/v1/models/torch-served:predict", json=body, headers=headers).status_code

    with TestClient(create_app(config, platform), base_url="http://localhost") as client:
        assert [status(n) for n in tokens] == [200, 200, 200]
        revoke_token(platform, admin, tokens["srv-revoked"][0].id)
        remove_user(platform, admin, "srv-removed")
        set_disabled(platform, admin, "srv-disabled", True)
        assert [status(n) for n in tokens] == [401, 401, 401]
