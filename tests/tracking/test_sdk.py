"""The SDK end to end on a real store: runs, params, tags, metrics, nesting, artifacts, lineage, capture."""

from __future__ import annotations

import math
import shutil
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, select

import modelyard
from modelyard.core import Platform, put_artifact
from modelyard.core._models import (
    AuditRecord,
    Dataset,
    DatasetVersion,
    LineageEdge,
    MetricBatch,
    RunMetric,
)
from modelyard.core._platform import utcnow
from modelyard.errors import BackendError, NotFoundError, UsageError, ValidationError
from modelyard.tracking import Client, MetricPoint, lineage
from modelyard.tracking._store import write_metric_batch


def test_run_lifecycle_params_tags_metrics(any_platform: Platform) -> None:
    with Client(platform=any_platform) as client:
        with client.start_run("exp", name="first", params={"lr": "1e-4", "layers": 2}) as run:
            run.log_param("batch", 8)
            run.set_tags({"team": "nlp"})
            run.set_tag("team", "nlp2")  # tags may change
            for i in range(10):
                run.log_metric("loss", 1 / (i + 1), step=i)
            run.log_metrics({"rougeL": 0.4, "bleu": 20.0}, step=9)
            run.log_metric("loss", 5.0, step=3)  # an older step does not become the latest value
            run.log_metric("nan", math.nan)
        info = client.get_run(run.id)
    assert info.status == "FINISHED" and info.end_time is not None
    assert info.name == "first" and info.experiment == "exp"
    assert info.params == {"lr": "1e-4", "layers": "2", "batch": "8"}
    assert info.tags["team"] == "nlp2"
    assert info.metrics["loss"] == pytest.approx(0.1)
    assert info.metrics["rougeL"] == 0.4
    assert info.metrics["nan"] is None  # NaN is kept, as a missing value


def test_params_cannot_change(client: Client) -> None:
    with client.start_run("exp", params={"lr": "1"}) as run:
        run.log_param("lr", "1")  # the same value again is fine
        with pytest.raises(UsageError, match="params cannot change"):
            run.log_param("lr", "2")
    assert client.get_run(run.id).params == {"lr": "1"}


def test_exception_fails_and_keyboard_interrupt_kills(client: Client) -> None:
    with pytest.raises(ValueError), client.start_run("exp") as failed:
        failed.log_metric("x", 1.0)
        raise ValueError("boom")
    with pytest.raises(KeyboardInterrupt), client.start_run("exp") as killed:
        raise KeyboardInterrupt
    a, b = client.get_run(failed.id), client.get_run(killed.id)
    assert (a.status, b.status) == ("FAILED", "KILLED")
    assert a.reason == "ValueError: boom"
    assert a.metrics == {"x": 1.0}  # flushed on the way out


def test_nested_runs_record_their_parent(client: Client) -> None:
    with client.start_run("hpo") as parent:
        with pytest.raises(UsageError, match="nested=True"):
            client.start_run("hpo")
        for trial in range(3):
            with client.start_run(nested=True, params={"trial": trial}) as child:
                child.log_metric("score", trial / 10)
                assert client.active_run() is child
        assert client.active_run() is parent
    children = client.search_runs("hpo", filter="tags.x = 'none' or params.trial in ('0', '1', '2')")
    assert len(children) == 3
    assert {c.parent_id for c in children} == {parent.id}
    assert {c.experiment for c in children} == {"hpo"}


def test_module_helpers_delegate_to_the_active_run(platform: Platform) -> None:
    with pytest.raises(UsageError, match="no active run"):
        modelyard.log_metric("x", 1.0)
    with Client(platform=platform) as client:
        with modelyard.Client(platform=platform).start_run("fluent") as other:
            other.end()
        with client.start_run("fluent") as run:
            modelyard.log_param("p", 1)
            modelyard.log_params({"q": 2})
            modelyard.log_metric("m", 1.0, step=1)
            modelyard.log_metrics({"n": 2.0})
            modelyard.set_tag("t", "1")
            modelyard.set_tags({"u": "2"})
            with modelyard.start_run(nested=True) as child:  # the active run's client
                assert child.client is client
        info = client.get_run(run.id)
    assert info.params == {"p": "1", "q": "2"}
    assert info.metrics == {"m": 1.0, "n": 2.0}
    assert {"t": "1", "u": "2"}.items() <= info.tags.items()
    with pytest.raises(UsageError, match="no active run"):
        modelyard.end_run()


def test_flush_makes_the_parent_of_a_nested_run_durable_too(platform: Platform) -> None:
    # modelyard.flush() flushed the innermost run only: inside a nested run (HPO trials), the parent's
    # points were still buffered when it returned, though "flush() waits for every point logged before it".
    slow = Platform(platform.settings.model_copy(update={"metric_flush_s": 600.0, "system_metrics_s": 0.0}))
    try:
        with Client(platform=slow) as client, client.start_run("flush", capture=False) as parent:
            parent.log_metric("best", 0.5)
            with client.start_run(nested=True) as child:
                child.log_metric("loss", 1.0)
                modelyard.tracking.flush()
                assert (parent.buffered, child.buffered) == (0, 0)
                assert client.get_run(parent.id).metrics == {"best": 0.5}
                parent.log_metric("best", 0.25)
                client.flush()
                assert client.get_run(parent.id).metrics == {"best": 0.25}
    finally:
        slow.close()


def test_module_start_run_opens_a_client_from_settings(platform: Platform) -> None:
    with modelyard.start_run("fluent", params={"a": 1}) as run:
        modelyard.log_metric("loss", 0.5)
    with Client(platform=platform) as client:
        info = client.get_run(run.id)
    assert info.status == "FINISHED" and info.metrics == {"loss": 0.5}
    assert run.client.platform.db.engine.pool.checkedout() == 0


def test_auto_capture(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(Path(__file__).parent)  # inside the repository: git is there
    with client.start_run("capture") as run:
        pass
    tags = client.get_run(run.id).tags
    assert {"cmd", "python", "host", "pkg.modelyard"} <= set(tags)
    assert "pkg.torch" not in tags or "torch" in __import__("sys").modules
    if shutil.which("git") and (Path(__file__).parents[2] / ".git").exists():
        assert len(tags["git.commit"]) == 40 and tags["git.dirty"] in ("true", "false")


def test_system_metrics_are_sampled(platform: Platform) -> None:
    fast = Platform(platform.settings.model_copy(update={"system_metrics_s": 0.05, "metric_flush_s": 0.05}))
    try:
        with Client(platform=fast) as client:
            with client.start_run("sys", capture=False) as run:
                import time

                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    run.flush()
                    if "system/rss_mb" in client.get_run(run.id).metrics:
                        break
                    time.sleep(0.05)
            metrics = client.get_run(run.id).metrics
    finally:
        fast.close()
    assert metrics["system/rss_mb"] > 1 and "system/cpu_percent" in metrics


def test_an_idle_run_does_not_spin(platform: Platform) -> None:
    """Between flushes with nothing to write, the writer thread sleeps (it once waited 0 s in a loop: a
    core's worth of CPU for as long as a run logged nothing, e.g. between a training's log steps)."""
    import time

    quiet = Platform(platform.settings.model_copy(update={"system_metrics_s": 0.0, "metric_flush_s": 0.05}))
    try:
        with Client(platform=quiet) as client, client.start_run("idle", capture=False) as run:
            run.log_metric("loss", 1.0, step=0)
            run.flush()
            time.sleep(0.2)  # past the flush time, nothing buffered
            cpu = time.process_time()
            time.sleep(2.0)
            busy = time.process_time() - cpu
            run.log_metric("loss", 0.5, step=1)  # and it still writes what comes later, in time
            deadline = time.monotonic() + 10
            while client.get_run(run.id).metrics.get("loss") != 0.5:
                assert time.monotonic() < deadline, "a point logged after the idle spell was not written"
                time.sleep(0.05)
    finally:
        quiet.close()
    assert busy < 0.5, f"the process used {busy:.2f} s of CPU in 2 s of sleep: the writer spins"


def test_a_retried_batch_is_written_once(client: Client) -> None:
    with client.start_run("idem", capture=False) as run:
        batch = uuid.uuid4().hex
        points = [MetricPoint("x", float(i), i, 1000 + i) for i in range(100)]
        assert write_metric_batch(client.platform, client.ctx, run.id, batch, points) is True
        assert write_metric_batch(client.platform, client.ctx, run.id, batch, points) is False
    with client.platform.db.read() as s:
        assert s.scalar(select(func.count()).select_from(RunMetric)) == 100
        assert s.scalar(select(func.count()).select_from(MetricBatch)) == 1


def test_metric_batches_are_not_audited_but_run_changes_are(client: Client) -> None:
    with client.start_run("audit", capture=False) as run:
        for i in range(5000):
            run.log_metric("x", float(i), step=i)
        run.flush()
        run.log_param("p", 1)
    with client.platform.db.read() as s:
        actions = s.execute(
            select(AuditRecord.action, AuditRecord.outcome).where(AuditRecord.resource == f"run:{run.id}")
        ).all()
    assert [tuple(a) for a in actions] == [("run.write", "ok")] * 3  # create, param, end


def test_artifacts_are_encrypted_recorded_and_in_lineage(client: Client, tmp_path: Path) -> None:
    src = tmp_path / "model.bin"
    src.write_bytes(b"weights" * 1000)
    folder = tmp_path / "eval"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("a")
    (folder / "sub" / "b.txt").write_text("b")
    with client.start_run("art", capture=False) as run:
        (digest,) = run.log_artifact(src)
        run.log_artifact(folder, artifact_path="reports")
        run.log_dict({"lr": 1e-4}, "config.json")
        run.log_dict({"lr": 1e-4}, "config.yaml")
        with pytest.raises(UsageError, match="not a file"):
            run.log_artifact(tmp_path / "missing")
    paths = {p: d for p, d, _ in client.list_artifacts(run.id)}
    assert set(paths) == {"model.bin", "reports/a.txt", "reports/sub/b.txt", "config.json", "config.yaml"}
    assert paths["model.bin"] == digest
    stored = b"".join(
        p.read_bytes() for p in (client.platform.settings.home / "artifacts").rglob("*") if p.is_file()
    )
    assert b"weights" * 10 not in stored  # encrypted at rest
    _, down = lineage(client.platform, client.ctx, f"run:{run.id}")
    assert {(c.ref, c.relation) for c in down.children} >= {(f"artifact:{digest}", "output")}


def test_log_dict_takes_any_mapping(client: Client, tmp_path: Path) -> None:
    # An OrderedDict (or one nested in a dict) was "not YAML-serialisable" and a MappingProxyType refused
    # as YAML and as JSON, though log_dict takes any Mapping; a mapping that holds itself stays an error.
    import collections
    import json
    import types

    import yaml

    config = collections.OrderedDict(lr=1e-4, opt=collections.OrderedDict(name="adam", betas=(0.9, 0.99)))
    with client.start_run("dicts", capture=False) as run:
        run.log_dict(config, "config.yaml")
        run.log_dict(types.MappingProxyType({"n": 1, "inner": {"k": [1, 2]}}), "frozen.json")
        looped: dict[str, object] = {}
        looped["self"] = looped
        with pytest.raises(ValidationError, match="not JSON-serialisable"):
            run.log_dict(looped, "loop.json")
    out = client.download_artifacts(run.id, "", tmp_path / "out")
    assert yaml.safe_load((out / "config.yaml").read_text()) == {
        "lr": 1e-4,
        "opt": {"name": "adam", "betas": [0.9, 0.99]},
    }
    assert json.loads((out / "frozen.json").read_text()) == {"n": 1, "inner": {"k": [1, 2]}}


def test_log_figure(client: Client) -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([1, 2, 3])
    with client.start_run("fig", capture=False) as run:
        run.log_figure(fig, "curve.png")
        run.log_figure(ax, "axes.png")  # an Axes stores its figure
        for bad in ("not a figure", plt):  # pyplot has savefig but is no figure
            with pytest.raises(UsageError, match="matplotlib Figure"):
                run.log_figure(bad, "x.png")
    plt.close(fig)
    stored = {p: d for p, d, _ in client.list_artifacts(run.id)}
    assert set(stored) == {"axes.png", "curve.png"} and stored["axes.png"] == stored["curve.png"]


def _dataset(platform: Platform, project_id: int, name: str, versions: int, tmp_path: Path) -> None:
    src = tmp_path / "manifest.jsonl"
    src.write_text("{}\n")
    ctx = platform.context()
    digest = put_artifact(platform, ctx, src).digest
    with platform.db.write() as s:
        ds = Dataset(
            project_id=project_id,
            name=name,
            region="local",
            last_version=versions,
            created_at=utcnow(),
            created_by="t",
        )
        s.add(ds)
        s.flush()
        for v in range(1, versions + 1):
            s.add(
                DatasetVersion(
                    dataset_id=ds.id,
                    version=v,
                    manifest_digest=digest,
                    files=1,
                    bytes=3,
                    message="",
                    region="local",
                    profile="{}",
                    created_at=utcnow(),
                    created_by="t",
                )
            )


def test_use_dataset_records_input_lineage(client: Client, tmp_path: Path) -> None:
    _dataset(client.platform, client.ctx.project_id, "squad", 3, tmp_path)
    with client.start_run("data", capture=False) as run:
        assert run.use_dataset("squad@2") == "dataset:squad@2"
        assert run.use_dataset("squad") == "dataset:squad@3"  # the latest version
        with pytest.raises(NotFoundError, match="version 9"):
            run.use_dataset("squad@9")
        with pytest.raises(NotFoundError, match="nope"):
            run.use_dataset("nope")
        with pytest.raises(UsageError, match="not a dataset version"):
            run.use_dataset("../etc@1")
    with client.platform.db.read() as s:
        edges = s.execute(select(LineageEdge.src, LineageEdge.dst, LineageEdge.relation)).all()
    assert sorted(tuple(e) for e in edges) == [
        ("dataset:squad@2", f"run:{run.id}", "input"),
        ("dataset:squad@3", f"run:{run.id}", "input"),
    ]


def test_compare_history_delete(client: Client) -> None:
    ids = []
    for lr in ("1e-4", "1e-3"):
        with client.start_run("cmp", params={"lr": lr, "bs": "8"}, capture=False) as run:
            for i in range(3):
                run.log_metric("loss", 1.0 - i / 10 - float(lr), step=i)
        ids.append(run.id)
    cmp = client.compare_runs(ids)
    assert cmp.param_keys == ["bs", "lr"] and cmp.differing_params == ["lr"] and cmp.metric_keys == ["loss"]
    assert [p.step for p in client.metric_history(ids[0])["loss"]] == [0, 1, 2]
    # One key as a string, as MLflow's get_metric_history takes it: it was read as the keys 'l', 'o', 's'.
    assert [p.step for p in client.metric_history(ids[0], "loss")["loss"]] == [0, 1, 2]
    client.delete_run(ids[0])
    with pytest.raises(NotFoundError):
        client.get_run(ids[0])
    assert [e for e, _ in client.list_experiments()] == ["cmp"]


def test_resume_continues_a_run(client: Client) -> None:
    with client.start_run("resume", capture=False) as run:
        run.log_metric("x", 1.0, step=0)
    with client.start_run(run_id=run.id) as again:
        assert client.get_run(run.id).status == "RUNNING"
        again.log_metric("x", 2.0, step=1)
    info = client.get_run(run.id)
    assert info.status == "FINISHED" and info.metrics == {"x": 2.0}


def test_a_resumed_run_relogging_steps_keeps_every_point_and_the_latest_is_the_newest(
    any_platform: Platform,
) -> None:
    # A job restarted from its step-2 checkpoint logs steps 3..5 again. As in MLflow every point is kept;
    # "latest" (get_run, search) is the point with the highest step, then the newest timestamp.
    client = Client(platform=any_platform)
    try:
        with client.start_run("resume", capture=False) as run:
            for step in range(6):
                run.log_metric("loss", 10.0 + step, step=step, timestamp=1000 + step)
        with client.start_run(run_id=run.id) as again:
            for step in range(3, 5):
                again.log_metric("loss", 20.0 + step, step=step, timestamp=2000 + step)
            again.flush()
            # Re-logged up to step 4 only: step 5's first point is still the highest step.
            assert client.get_run(run.id).metrics == {"loss": 15.0}
            again.log_metric("loss", 25.0, step=5, timestamp=2005)
        history = client.metric_history(run.id, "loss")["loss"]
        assert [(p.step, p.value) for p in history] == [
            (0, 10.0), (1, 11.0), (2, 12.0), (3, 13.0), (3, 23.0), (4, 14.0), (4, 24.0), (5, 15.0), (5, 25.0)
        ]  # fmt: skip
        assert client.get_run(run.id).metrics == {"loss": 25.0}
        assert [r.id for r in client.search_runs("resume", "metrics.loss = 25")] == [run.id]
        assert client.search_runs("resume", "metrics.loss = 15") == []
    finally:
        client.close()


def test_resuming_a_run_applies_its_name_params_and_tags(client: Client) -> None:
    # start_run(run_id=..., name=, params=, tags=) dropped all three without a word, and an experiment
    # other than the run's own was ignored as well.
    with client.start_run("resume", capture=False, params={"lr": 0.1}) as run:
        pass
    with client.start_run(
        "resume", run_id=run.id, name="stage-2", params={"lr": 0.1, "epochs": 3}, tags={"stage": "2"}
    ):
        pass
    info = client.get_run(run.id)
    assert (info.name, info.params, info.tags) == ("stage-2", {"lr": "0.1", "epochs": "3"}, {"stage": "2"})
    # Refused before anything changes: another experiment, a changed param, a bad name.
    for kwargs, match in [
        ({"experiment": "other"}, "belongs to experiment 'resume'"),
        ({"params": {"lr": 0.2}}, "param 'lr' .* already has a different value"),
        ({"name": "bad\nname"}, "run name must be"),
    ]:
        with pytest.raises(UsageError, match=match):
            client.start_run(run_id=run.id, **kwargs)  # type: ignore[arg-type]
        after = client.get_run(run.id)
        assert (after.status, after.name, after.params) == ("FINISHED", "stage-2", info.params)
    assert client.active_run() is None


def test_a_closed_client_starts_no_runs(platform: Platform) -> None:
    # close() unregisters the exit hook: a run started afterwards was never flushed or ended at exit (it
    # stayed RUNNING with its last points lost) though start_run raised nothing.
    client = Client(platform=platform)
    with client.start_run("closed", capture=False) as run:
        pass
    client.close()
    with pytest.raises(UsageError, match="client is closed"):
        client.start_run("closed", capture=False)
    with pytest.raises(UsageError, match="client is closed"):
        client.start_run(run_id=run.id)
    assert client.get_run(run.id).status == "FINISHED"  # reading stays possible


def test_a_run_active_in_this_client_cannot_be_resumed_into_a_second_handle(client: Client) -> None:
    # A thread resuming the run by id got a second handle that replaced the first among the client's
    # open runs; ending the first then dropped the second, which close() and the exit never flushed.
    import threading

    run = client.start_run("twice", capture=False)
    errors: list[BaseException] = []

    def resume() -> None:
        try:
            client.start_run(run_id=run.id)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=resume)
    t.start()
    t.join()
    assert len(errors) == 1 and isinstance(errors[0], UsageError)
    assert "already active in this client" in str(errors[0])
    with pytest.raises(UsageError, match="already active in this client"):
        client.start_run(run_id=run.id, nested=True)
    assert client.active_run() is run
    run.end()
    assert client.active_run() is None and client.get_run(run.id).status == "FINISHED"


def test_a_deleted_run_stops_its_writer_with_a_clear_error(client: Client) -> None:
    run = client.start_run("gone", capture=False)
    run.log_metric("x", 1.0)
    run.flush()
    client.delete_run(run.id)
    run.log_metric("x", 2.0)
    with pytest.raises(BackendError, match=r"metric writing stopped .*could not be stored"):
        run.flush(timeout=10)
    # It said "has ended; start or resume a run", which is neither what happened nor possible here.
    with pytest.raises(BackendError, match=r"metric writing stopped \(run .* no longer exists"):
        run.log_metric("x", 3.0)
    with pytest.raises((BackendError, NotFoundError)):
        run.end()
    assert client.active_run() is None


def test_close_ends_every_run_even_when_warnings_are_errors(client: Client) -> None:
    # close() warns about a run it cannot end and goes on with the others; under -W error that warning
    # was raised out of the loop, and the parent behind the unendable child stayed RUNNING (likewise at
    # the exit and in the SIGTERM handler).
    import warnings

    parent = client.start_run("strict", capture=False)
    child = client.start_run(nested=True)
    client.delete_run(child.id)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        client.close()
    assert client.get_run(parent.id).status == "FINISHED"


def test_a_second_end_waits_for_the_end_in_progress(client: Client) -> None:
    # end() from a second thread while the first was flushing returned at once, the run still RUNNING and
    # its points not yet stored: a main thread returning so could exit and lose both with the daemon
    # writer, though "end() returned" means the run is ended.
    import threading

    run = client.start_run("twice", capture=False)
    run.log_metric("loss", 1.0)
    seen: list[str] = []
    first = threading.Thread(target=run.end)
    second = threading.Thread(target=lambda: (run.end(), seen.append(run.status)))
    with client.platform.db.write():  # the store is busy: the first end waits in its flush
        first.start()
        for _ in range(2000):
            if run._ending:
                break
            threading.Event().wait(0.005)
        assert run._ending
        second.start()
        second.join(timeout=1.0)
    first.join()
    second.join()
    assert seen == ["FINISHED"]
    assert client.get_run(run.id).metrics == {"loss": 1.0}


def test_concurrent_reapers_reap_and_audit_each_run_once(any_platform: Platform) -> None:
    import threading
    from datetime import timedelta

    from sqlalchemy import update

    from modelyard.core._models import Run as RunRow
    from modelyard.tracking import reap_stale_runs
    from modelyard.tracking._store import create_run

    ctx = any_platform.context()
    ids = [create_run(any_platform, ctx, "reap") for _ in range(5)]
    with any_platform.db.write() as s:
        ago = utcnow() - timedelta(hours=1)
        s.execute(update(RunRow).values(heartbeat_at=ago, stale_at=ago))
    results: list[list[str]] = []
    threads = [
        threading.Thread(target=lambda: results.append(reap_stale_runs(any_platform))) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reaped = [r for batch in results for r in batch]
    assert sorted(reaped) == sorted(ids)  # each run once, by exactly one reaper
    with any_platform.db.read() as s:
        records = s.scalars(select(AuditRecord).where(AuditRecord.actor == "system:reaper")).all()
        statuses = set(s.scalars(select(RunRow.status)).all())
    assert len(records) == 5 and statuses == {"FAILED"}
