"""Monitoring of a registered model from its prediction log: drift against its training data, quality from
feedback, and alert rules whose retrain action trains, gates and deploys a canary through the job queue."""

from __future__ import annotations

import copy
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select

from modelyard import registry
from modelyard.config import load_settings
from modelyard.core import Platform
from modelyard.core._models import AuditRecord
from modelyard.core._platform import utcnow
from modelyard.errors import NotFoundError, UsageError, ValidationError
from modelyard.monitoring._alerts import load_alerts, newest_data, run_once
from modelyard.monitoring._monitor import model_drift, parse_window, quality
from modelyard.serving._deploy import current
from modelyard.serving._predlog import PredictionLog
from modelyard.testing import TINY_RECIPE, TrainedModel
from modelyard.training import make_examples

pytestmark = pytest.mark.slow
HOUR = parse_window("1h")


@pytest.fixture(scope="module")
def home(trained: TrainedModel) -> Iterator[Platform]:
    p = Platform(load_settings(home=trained.home))
    ctx = p.context()
    for name in ("mon-same", "mon-shifted", "mon-alert", "mon-mixed", "mon-mixed", "mon-race"):
        registry.register(p, ctx, trained.run_id, name)
    yield p
    p.close()


def log_traffic(
    p: Platform, model: str, rows: list[dict[str, str]], outputs: list[str] | None = None
) -> list[str]:
    plog = PredictionLog(p, p.context(), flush_s=60)
    ids = []
    for i, r in enumerate(rows):
        rid = hashlib.sha256(f"{model}:{len(rows)}:{i}:{outputs is None}".encode()).hexdigest()[:26]
        plog.add(
            rid, model, 1, "stable", [r["source"]], [outputs[i] if outputs else r["target"]], 10.0 + i % 7
        )
        ids.append(rid)
    plog.close()
    return ids


def test_no_drift_on_the_same_distribution_and_drift_on_shifted_inputs(home: Platform) -> None:
    log_traffic(home, "mon-same", list(make_examples(300, seed=11)))
    ref, report, n = model_drift(home, home.context(), "mon-same@1", window=HOUR)
    assert n == 300 and ref.spec == "mon-same@1" and "norm@1" in ref.data
    assert not report.dataset_drifted, report.rows()
    log_traffic(home, "mon-shifted", list(make_examples(300, seed=12, shift=1.0)))
    _, shifted, _ = model_drift(home, home.context(), "mon-shifted@1", window=HOUR)
    assert shifted.column("input").drifted and shifted.dataset_drifted
    with pytest.raises(NotFoundError, match="no predictions"):
        model_drift(home, home.context(), "mon-alert@1", window=parse_window("1s"))


def test_a_version_is_judged_on_its_own_answers_and_requests_count_what_clients_got(home: Platform) -> None:
    from modelyard.monitoring._monitor import serving_stats
    from modelyard.serving._predlog import predictions

    plog = PredictionLog(home, home.context(), flush_s=60)
    same, shifted = list(make_examples(200, seed=21)), list(make_examples(300, seed=22, shift=1.0))
    for i, r in enumerate(same):  # v1 answers
        plog.add(f"{i:026d}", "mon-mixed", 1, "stable", [r["source"]], [r["target"]], 10.0)
    for i, r in enumerate(shifted):  # v2 on other traffic, as a shadow: it answered nobody
        plog.add(f"s{i:025d}", "mon-mixed", 2, "shadow", [r["source"]], [r["target"]], 5000.0)
    plog.close()
    _, report, n = model_drift(home, home.context(), "mon-mixed@1", window=HOUR)
    assert n == 200 and not report.dataset_drifted, report.rows()
    _, report2, n2 = model_drift(home, home.context(), "mon-mixed@2", window=HOUR)
    assert n2 == 300 and report2.dataset_drifted
    stats = serving_stats(home, home.context(), "mon-mixed", window=HOUR)
    assert stats["requests"] == 200 and stats["p95_ms"] == 10.0  # shadows are not requests
    newest = predictions(home, home.context(), "mon-mixed", since=utcnow() - HOUR, version=1, limit=5)
    assert [p.id[:26] for p in newest] == [f"{i:026d}" for i in range(195, 200)]  # past the limit: newest


def test_a_capped_reference_is_a_sample_of_the_whole_training_split(home: Platform) -> None:
    from modelyard.monitoring._monitor import reference

    whole = reference(home, home.context(), "mon-same@1")
    n = len(whole.sources)
    capped = reference(home, home.context(), "mon-same@1", max_rows=n // 4)
    assert len(capped.sources) == n // 4 and set(capped.sources) <= set(whole.sources)
    # not the split's first rows (a file sorted by date would make those its oldest): drawn from all of it
    assert max(whole.sources.index(s) for s in capped.sources) >= n // 2
    assert capped.sources == reference(home, home.context(), "mon-same@1", max_rows=n // 4).sources


def test_redaction_in_the_log_is_not_read_as_drift() -> None:
    # Logged texts have their PII replaced; the training texts the reference holds do not.
    import random

    from modelyard.monitoring._monitor import Reference, drift_of_logged
    from modelyard.serving._predlog import redact

    def tickets(n: int, seed: int) -> list[str]:
        rng = random.Random(seed)
        verbs = ["reset my password", "cancel my order", "update my address", "refund the charge"]
        return [
            f"please {rng.choice(verbs)} for {rng.choice('abcdefgh')}.{rng.randint(1, 999)}@example.com"
            for _ in range(n)
        ]

    train = tickets(600, 1)
    ref = Reference("m@1", "tickets@1", train, train, {})
    live = [redact(t) for t in tickets(300, 2)]  # what the prediction log stores
    assert "<EMAIL>" in live[0]
    assert not drift_of_logged(ref, live, live).dataset_drifted


def test_p95_is_the_nearest_rank() -> None:
    from modelyard.evaluation._speed import nearest_rank

    assert nearest_rank([10.0] * 11 + [300.0], 95) == 300.0  # 12 samples: the 12th is the 95th percentile
    assert nearest_rank([float(i) for i in range(1, 101)], 95) == 95.0
    assert nearest_rank([7.0], 95) == 7.0


def test_quality_from_feedback_against_the_evaluation(home: Platform) -> None:
    from modelyard.serving._predlog import record_feedback

    rows = list(make_examples(40, seed=13))
    ids = log_traffic(home, "mon-same", rows, outputs=["wrong"] * 20 + [r["target"] for r in rows[20:]])
    for rid, r in zip(ids, rows, strict=True):
        record_feedback(home, home.context(), "mon-same", rid, r["target"])
    q = quality(home, home.context(), "mon-same@1", window=HOUR)
    assert q.examples == 40 and q.metrics["exact_match"] == pytest.approx(0.5)
    assert q.drop["exact_match"] == pytest.approx(q.reference["exact_match"] - 0.5)
    # A metric the evaluation did not record (gen_len...) has no reference: shown as -, not as nan with a
    # drop of +0.0000.
    with pytest.raises(NotFoundError):
        record_feedback(home, home.context(), "mon-same", "f" * 26, "x")


class _Hook(BaseHTTPRequestHandler):
    received: list[dict[str, object]] = []

    def do_POST(self) -> None:
        _Hook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_an_alert_retrains_gates_and_deploys_a_canary(
    home: Platform, trained: TrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelyard.data import add_version
    from modelyard.training import Worker, write_dataset

    monkeypatch.setenv("YARD_HOME", str(trained.home))  # the worker's `yard train` child
    ctx = home.context()
    files = write_dataset(tmp_path / "norm2", 600, seed=21, shift=0.5)
    newer = add_version(home, ctx, files[0].parent, "norm")  # newer data the retrain must use
    log_traffic(home, "mon-alert", list(make_examples(300, seed=14, shift=1.0)))
    recipe = copy.deepcopy(TINY_RECIPE)
    recipe["experiment"] = "retrain"
    recipe["hyperparameters"]["max_steps"] = 40
    recipe["tokenizer"]["max_source_length"] = 128  # shifted inputs are longer
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    (tmp_path / "gates.yaml").write_text(
        yaml.safe_dump(
            {
                "data": {"dataset": "norm@1", "file": "test.jsonl", "max_samples": 20},
                "size": {"max_mb": 100},
            }
        )
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Hook.received = []
    rules = {
        "model": "mon-alert@1",
        "window": "6h",
        "cooldown": "1h",
        "rules": [
            {"name": "input drift", "when": "drift.input > 0", "actions": ["log", "webhook", "retrain"]},
            {"name": "slow", "when": "latency.p95_ms > 100000", "actions": ["log"]},
        ],
        "webhook": {
            "url": f"http://127.0.0.1:{server.server_address[1]}/alerts",
            "allow_networks": ["127.0.0.1/32"],
        },
        "retrain": {"recipe": "recipe.yaml", "policy": "gates.yaml", "canary_weight": 20},
    }
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    policy = load_alerts(tmp_path / "rules.yaml")
    try:
        first = run_once(home, ctx, policy)
    finally:
        server.shutdown()
    [alert] = first.fired
    assert alert.rule == "input drift" and first.signals["drift.input"] == 1.0
    assert alert.actions[0] == "logged" and alert.actions[1] == "webhook answered 200"
    assert (
        alert.actions[2].startswith("retrain job") and f"norm@1 -> norm@{newer.version}" in alert.actions[2]
    )
    assert _Hook.received and _Hook.received[0]["rule"] == "input drift"

    assert run_once(home, ctx, policy).quiet == ["input drift"]  # cooling down: no second retrain
    Worker(home, ctx, cpus=2, exit_when_idle=True).run()
    (tmp_path / "gates.yaml").rename(tmp_path / "gates.off")  # gating fails after the model is registered
    for _ in range(2):
        stuck = run_once(home, ctx, policy)
        assert any("could not be gated" in line for line in stuck.retrains), stuck.retrains
    assert [v.version for v in registry.list_versions(home, ctx, "mon-alert")] == [1, 2]  # registered once
    (tmp_path / "gates.off").rename(tmp_path / "gates.yaml")
    done = run_once(home, ctx, policy)
    assert any("passed its gates and is a 20% canary" in line for line in done.retrains), done.retrains
    dep = current(home, ctx, "mon-alert")
    assert dep is not None and dep.mode == "canary" and dep.candidate == 2 and dep.weight == 20
    _, manifest = registry.read_manifest(home, ctx, "mon-alert@2")
    assert manifest["lineage"]["datasets"] == [f"norm@{newer.version}"]  # trained on the newest data
    assert registry.attestations(home, ctx, "mon-alert@2", kind="gates")[-1]["passed"]
    with home.db.read() as s:
        actions = [
            a
            for (a,) in s.execute(
                select(AuditRecord.action).where(AuditRecord.resource == "model:mon-alert@1")
            )
        ]
    assert actions.count("monitor.alert") == 1 and actions.count("monitor.action") == 3
    assert actions.count("monitor.retrain") == 3  # two failures to gate, then the deployment

    # The drift is still there past the cooldown (cut to a second here), but the data is what the retrain
    # already used.
    policy = policy.model_copy(update={"cooldown": "1s"})
    time.sleep(1.1)
    later = run_once(home, ctx, policy)
    [again] = later.fired
    assert again.actions[2].startswith("not retrained: job") and "add a newer version" in again.actions[2]
    assert [v.version for v in registry.list_versions(home, ctx, "mon-alert")] == [1, 2]
    # a changed gate policy (or recipe) is a different retrain, even on the same data
    with (tmp_path / "gates.yaml").open("a") as f:
        f.write("# stricter now\n")
    time.sleep(1.1)
    fixed = run_once(home, ctx, policy)
    assert fixed.fired[0].actions[2].startswith("retrain job"), fixed.fired[0].actions
    from modelyard.training._jobs import cancel_job

    cancel_job(home, ctx, fixed.fired[0].actions[2].split()[2])  # not for other tests' workers


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"model": "m@1", "rules": [{"name": "x", "when": "drift.share >> 1"}]}, "not a condition"),
        ({"model": "m@1", "rules": [{"name": "x", "when": "cpu.load > 1"}]}, "unknown signal"),
        ({"model": "m@1", "rules": [{"name": "x", "when": "requests > 1", "actions": ["email"]}]}, "actions"),
        ({"model": "m@1", "rules": []}, "rules"),
        ({"model": "m@1", "rules": [{"name": "x", "when": "requests > 1"}], "extra": 1}, "unknown key"),
    ],
)
def test_bad_rules_are_one_clear_error(tmp_path: Path, rules: object, message: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    with pytest.raises(ValidationError, match=message):
        load_alerts(path)


def test_rules_that_need_a_missing_section_or_an_unsafe_webhook_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        yaml.safe_dump(
            {"model": "m@1", "rules": [{"name": "x", "when": "requests > 1", "actions": ["retrain"]}]}
        )
    )
    with pytest.raises(UsageError, match="no retrain section"):
        load_alerts(path)
    path.write_text(
        yaml.safe_dump(
            {
                "model": "m@1",
                "rules": [{"name": "x", "when": "requests > 1"}],
                "webhook": {"url": "http://169.254.169.254/latest", "allow_hosts": []},
            }
        )
    )
    with pytest.raises(UsageError, match="loopback, link-local, private or reserved"):
        load_alerts(path)
    for rules, message in [
        (
            [{"name": "x", "when": "requests > 1"}, {"name": "x", "when": "requests > 2"}],
            "two rules are named",
        ),
        ([{"name": "x", "when": "quality_drop.rouge_l > 0.1"}], "not a metric monitoring scores"),
    ]:
        path.write_text(yaml.safe_dump({"model": "m@1", "rules": rules}))
        with pytest.raises(UsageError, match=message):
            load_alerts(path)
    path.write_text(
        yaml.safe_dump({"model": "m@1", "rules": [{"name": "x", "when": "quality_drop.rougeL>0.05"}]})
    )
    assert load_alerts(path).rules[0].when == "quality_drop.rougeL>0.05"  # no spaces: still one signal
    path.write_text(
        yaml.safe_dump(
            {
                "model": "m@1",
                "rules": [{"name": "x", "when": "quality_drop.rouge2 > 0.1", "actions": ["retrain"]}],
                "retrain": {"recipe": "missing.yaml", "policy": "gates.yaml"},
            }
        )
    )
    with pytest.raises(UsageError, match=r"retrain.recipe: .*missing.yaml is not a file"):
        load_alerts(path)


def test_a_viewer_cannot_run_rules_that_record_alert_state(home: Platform, tmp_path: Path) -> None:
    # A run writes the cooldowns everyone's rules of the model share: a viewer's "always true" rule
    # would otherwise keep the team's real rule of the same name quiet.
    from modelyard.core import Role
    from modelyard.errors import PermissionDeniedError
    from modelyard.testing import actor

    viewer = actor(home, home.context(), "mon-viewer", Role.VIEWER)
    path = tmp_path / "rules.yaml"
    path.write_text(
        yaml.safe_dump({"model": "mon-same@1", "rules": [{"name": "x", "when": "requests >= 0"}]})
    )
    with pytest.raises(PermissionDeniedError):
        run_once(home, viewer, load_alerts(path))
    assert run_once(home, home.context(), load_alerts(path)).fired[0].rule == "x"


def test_a_drift_signal_that_cannot_be_computed_is_said_not_silent(
    home: Platform, trained: TrainedModel, tmp_path: Path
) -> None:
    # Registered from a directory, the version records no training recipe: no reference to compare with.
    registry.register(home, home.context(), trained.model_dir, "mon-norecipe")
    log_traffic(home, "mon-norecipe", list(make_examples(50, seed=41, shift=1.0)))
    path = tmp_path / "rules.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": "mon-norecipe@1",
                "rules": [
                    {"name": "drift", "when": "drift.input > 0"},
                    {"name": "traffic", "when": "requests > 0"},
                ],
            }
        )
    )
    result = run_once(home, home.context(), load_alerts(path))
    assert "drift.input" not in result.signals and [f.rule for f in result.fired] == ["traffic"]
    [problem] = result.problems
    assert problem.startswith("drift signals unavailable") and "records no training recipe" in problem


def test_a_failed_evaluation_does_not_end_the_interval_loop(
    home: Platform, trained: TrainedModel, tmp_path: Path, yard: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    import modelyard.cli.monitor as cli_monitor
    from modelyard.registry import delete_alias, set_alias

    ctx = home.context()
    set_alias(home, ctx, "mon-same@1", "watched")
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        yaml.safe_dump(
            {"model": "mon-same@watched", "rules": [{"name": "x", "when": "requests > 1000000000"}]}
        )
    )
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:  # between evaluations: the alias goes, comes back, then Ctrl-C
        sleeps.append(seconds)
        if len(sleeps) == 1:
            delete_alias(home, ctx, "mon-same", "watched")
        elif len(sleeps) == 2:
            set_alias(home, ctx, "mon-same@1", "watched")
        else:
            raise KeyboardInterrupt

    monkeypatch.setattr(cli_monitor, "time", SimpleNamespace(sleep=sleep))
    r = yard("monitor", "run", rules, "--interval", "60", "--json", env={"YARD_HOME": str(trained.home)})
    assert r.code == 130 and sleeps == [60.0, 60.0, 60.0], (r.code, r.error)
    assert "has no alias 'watched'" in r.error and "(evaluating again in 60 s)" in r.error
    assert r.out.count('"model": "mon-same@watched"') == 2  # the first and the third evaluation
    delete_alias(home, ctx, "mon-same", "watched")
    r = yard("monitor", "run", rules, "--interval", "60", env={"YARD_HOME": str(trained.home)})
    # the first evaluation's failure is the command's
    assert r.code == 1 and "has no alias" in r.error and len(sleeps) == 3


class _Flaky(BaseHTTPRequestHandler):
    status = 503
    received: list[dict[str, object]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if _Flaky.status == 200:
            _Flaky.received.append(body)
        self.send_response(_Flaky.status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_an_alert_whose_action_failed_is_retried_not_silenced_by_its_cooldown(
    home: Platform, tmp_path: Path
) -> None:
    log_traffic(home, "mon-same", list(make_examples(20, seed=51)))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Flaky.status, _Flaky.received = 503, []
    path = tmp_path / "rules.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": "mon-same@1",
                "cooldown": "1h",
                "rules": [{"name": "busy", "when": "requests > 0", "actions": ["log", "webhook"]}],
                "webhook": {
                    "url": f"http://127.0.0.1:{server.server_address[1]}/alerts",
                    "allow_networks": ["127.0.0.1/32"],
                },
            }
        )
    )
    policy, ctx = load_alerts(path), home.context()
    try:
        first = run_once(home, ctx, policy)
        assert first.fired[0].actions[0] == "logged" and "answered HTTP 503" in first.fired[0].actions[1]
        again = run_once(home, ctx, policy)  # in the cooldown: the webhook only, not the log
        assert again.fired[0].retry and again.fired[0].actions == [first.fired[0].actions[1]]
        _Flaky.status = 200
        delivered = run_once(home, ctx, policy)
        assert delivered.fired[0].retry and delivered.fired[0].actions == ["webhook answered 200"]
        assert [r["rule"] for r in _Flaky.received] == ["busy"]
        done = run_once(home, ctx, policy)  # delivered: the cooldown holds
        assert done.fired == [] and done.quiet == ["busy"] and len(_Flaky.received) == 1
    finally:
        server.shutdown()


class _Slow(BaseHTTPRequestHandler):
    """Answers 200 once the test lets it: monitor A is inside its webhook action until then."""

    entered = threading.Event()
    release = threading.Event()
    received: list[dict[str, object]] = []

    def do_POST(self) -> None:
        _Slow.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        _Slow.entered.set()
        _Slow.release.wait(30)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_second_monitor_leaves_a_rule_alone_while_the_first_acts_on_it(
    home: Platform, tmp_path: Path
) -> None:
    """Monitor B evaluates while monitor A is still inside the rule's webhook: B is quiet (it read A's
    claim as pending work, retried every action and posted twice before); after A is done the cooldown
    holds for both."""
    log_traffic(home, "mon-race", list(make_examples(20, seed=52)))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Slow.entered.clear(), _Slow.release.clear()
    _Slow.received = []
    path = tmp_path / "rules.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": "mon-race@1",
                "cooldown": "1h",
                "rules": [{"name": "busy", "when": "requests > 0", "actions": ["webhook"]}],
                "webhook": {
                    "url": f"http://127.0.0.1:{server.server_address[1]}/alerts",
                    "allow_networks": ["127.0.0.1/32"],
                },
            }
        )
    )
    policy, ctx = load_alerts(path), home.context()
    results: list[Any] = []
    a = threading.Thread(target=lambda: results.append(run_once(home, ctx, policy)))
    try:
        a.start()
        assert _Slow.entered.wait(30)
        b = run_once(home, ctx, policy)
        assert b.fired == [] and b.quiet == ["busy"]
        _Slow.release.set()
        a.join(30)
        assert results[0].fired[0].actions == ["webhook answered 200"]
        after = run_once(home, ctx, policy)
        assert after.fired == [] and after.quiet == ["busy"]
        assert len(_Slow.received) == 1
    finally:
        _Slow.release.set()
        server.shutdown()


def test_newest_data_rewrites_every_split(home: Platform) -> None:
    from modelyard.data import list_versions

    text = yaml.safe_dump(copy.deepcopy(TINY_RECIPE))
    rewritten, changes = newest_data(home, home.context(), text, "recipe")
    latest = max(v.version for v in list_versions(home, home.context(), "norm"))
    data = yaml.safe_load(rewritten)["data"]
    assert {data["train"], data["validation"], data["test"]} == {f"norm@{latest}"}
    assert changes == ({} if latest == 1 else {"norm@1": f"norm@{latest}"})


def test_yard_monitor_drift_cli(home: Platform, trained: TrainedModel, tmp_path: Path, yard: Any) -> None:
    log_traffic(home, "mon-shifted", list(make_examples(200, seed=31, shift=1.0)))
    env = {"YARD_HOME": str(trained.home)}
    r = yard(
        "monitor", "drift", "mon-shifted@1", "--window", "1h", "--html", tmp_path / "drift.html", env=env
    )
    assert r.code == 1 and "DRIFT" in r.out and "input" in r.out  # exit 1: the data drifted
    html = (tmp_path / "drift.html").read_text()
    assert html.startswith("<!") and "<img" in html
    r = yard("monitor", "drift", "mon-shifted@1", "--window", "1h", "--json", env=env)
    assert r.code == 1 and '"dataset_drifted": true' in r.out
    r = yard("monitor", "drift", "mon-shifted@1", "--window", "soon", env=env)
    assert r.code == 2 and "window" in r.error
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        yaml.safe_dump(
            {
                "model": "mon-shifted@1",
                "rules": [{"name": "drift", "when": "drift.share >= 0.5", "actions": ["log"]}],
            }
        )
    )
    for bad in ("nan", "inf", "-1"):  # refused before the first evaluation, which records a cooldown
        r = yard("monitor", "run", rules, "--interval", bad, env=env)
        assert r.code == 2 and "--interval" in r.error, r.error
    r = yard("monitor", "run", rules, "--json", env=env)
    assert r.code == 0 and json.loads(r.out)["fired"][0]["rule"] == "drift"
    # The quality table (feedback from test_quality_from_feedback_against_the_evaluation): a metric the
    # evaluation did not record (gen_len...) has no reference, shown as -, not as nan with a drop of +0.0000.
    r = yard("monitor", "drift", "mon-same@1", env=env)
    quality_rows = r.out[r.out.index("quality on 40 predictions") :]
    assert "nan" not in quality_rows and "gen_len" in quality_rows


def test_a_run_at_a_given_time_judges_the_window_before_that_time(
    home: Platform, trained: TrainedModel, tmp_path: Path
) -> None:
    # run_once(now=...) replays an evaluation (or is driven by a scheduler's clock): every signal must come
    # from the window ending then, not from the wall clock's.
    from modelyard.serving._predlog import record_feedback

    registry.register(home, home.context(), trained.run_id, "mon-when")
    rows = list(make_examples(20, seed=61))
    for rid, r in zip(log_traffic(home, "mon-when", rows), rows, strict=True):
        record_feedback(home, home.context(), "mon-when", rid, r["target"])
    path = tmp_path / "rules.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model": "mon-when@1",
                "rules": [
                    {"name": "traffic", "when": "requests > 0"},
                    {"name": "scored", "when": "quality.exact_match >= 0"},
                ],
            }
        )
    )
    policy = load_alerts(path)
    earlier = run_once(home, home.context(), policy, now=utcnow() - parse_window("3h"))
    assert earlier.signals == {"requests": 0.0} and earlier.fired == []
    now = run_once(home, home.context(), policy, now=utcnow())
    assert now.signals["requests"] == 20 and now.signals["quality.exact_match"] == 1.0
    assert [f.rule for f in now.fired] == ["traffic", "scored"]


def test_a_run_ahead_of_the_clock_is_refused_and_records_nothing(
    home: Platform, trained: TrainedModel, tmp_path: Path
) -> None:
    # A run records when its rules fired and when it claimed them: stamped an hour ahead, a cooldown and a
    # claim's lease would hold an hour longer than they say, against every other monitor.
    from datetime import datetime

    from modelyard.monitoring._alerts import _key

    registry.register(home, home.context(), trained.run_id, "mon-future")
    log_traffic(home, "mon-future", list(make_examples(5, seed=62)))
    path = tmp_path / "rules.yaml"
    path.write_text(
        yaml.safe_dump({"model": "mon-future@1", "rules": [{"name": "traffic", "when": "requests > 0"}]})
    )
    policy, key = load_alerts(path), _key("rule", home.context().project_id, "mon-future", "traffic")

    def audited() -> int:
        with home.db.read() as s:
            return len(s.execute(select(AuditRecord.seq).where(AuditRecord.action.like("monitor.%"))).all())

    before = audited()
    for ahead in ("1h", "6m"):
        with pytest.raises(ValidationError, match="ahead of this host's clock"):
            run_once(home, home.context(), policy, now=utcnow() + parse_window(ahead))
    with pytest.raises(ValidationError, match="time zone"):
        run_once(home, home.context(), policy, now=datetime.now())  # naive: local or UTC, nobody knows
    assert home.meta(key) is None and audited() == before  # nothing recorded
    # A scheduler whose clock runs a little ahead of this host's still runs.
    first = run_once(home, home.context(), policy, now=utcnow() + parse_window("1m"))
    assert [f.rule for f in first.fired] == ["traffic"]
    assert run_once(home, home.context(), policy).quiet == ["traffic"]


def test_a_retrain_is_recorded_at_the_runs_time_like_its_alert(
    home: Platform, trained: TrainedModel, tmp_path: Path
) -> None:
    # run_once(now=...) judges and records everything at that time: the retrain an alert starts included.
    from datetime import datetime

    from modelyard.monitoring._alerts import _key
    from modelyard.training._jobs import cancel_job

    registry.register(home, home.context(), trained.run_id, "mon-retro")
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(copy.deepcopy(TINY_RECIPE)))
    gates = {"data": {"dataset": "norm@1", "file": "test.jsonl"}, "size": {"max_mb": 100}}
    (tmp_path / "gates.yaml").write_text(yaml.safe_dump(gates))  # valid: checked when the rules load
    rules = {
        "model": "mon-retro@1",
        "rules": [{"name": "always", "when": "requests >= 0", "actions": ["retrain"]}],
        "retrain": {"recipe": str(tmp_path / "recipe.yaml"), "policy": str(tmp_path / "gates.yaml")},
    }
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    when = utcnow() - parse_window("2h")
    result = run_once(home, home.context(), load_alerts(tmp_path / "rules.yaml"), now=when)
    outcome = result.fired[0].actions[0]
    assert outcome.startswith("retrain job"), outcome
    cancel_job(home, home.context(), outcome.split()[2])  # not for other tests' workers
    alert = json.loads(home.meta(_key("rule", home.context().project_id, "mon-retro", "always")) or "{}")
    retrain = json.loads(home.meta(_key("retrain", home.context().project_id, "mon-retro")) or "{}")
    assert (
        alert["fired_at"] == when.isoformat()
        and retrain["state"] == "queued"
        and retrain["at"] == when.isoformat()
    )
    # The claim is a lease on the clock: a monitor at the present stays off the rule while the replay acts.
    assert utcnow() - datetime.fromisoformat(alert["claimed_at"]) < parse_window("1m")
