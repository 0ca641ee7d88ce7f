"""A model is not registered on a dataset version that was deleted: `data rm` refuses while a registered
model depends on the version, so a version deleted before its run's model is registered must refuse the
registration, or the model's lineage names data that no longer exists and nothing protected it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import delete, select

from modelyard import registry
from modelyard.core import Platform
from modelyard.core._models import AuditRecord, Dataset, DatasetVersion, LineageEdge, RegisteredModel
from modelyard.core._platform import utcnow
from modelyard.data import add_version, remove
from modelyard.errors import NotFoundError, UsageError
from modelyard.testing import make_platform
from modelyard.tracking import Client


def _refusals(platform: Platform) -> list[str]:
    with platform.db.read() as s:
        return list(
            s.scalars(
                select(AuditRecord.outcome).where(
                    AuditRecord.action == "model.register", AuditRecord.outcome == "refused"
                )
            )
        )


def test_a_run_whose_dataset_version_was_removed_is_not_registered(
    any_platform: Platform, model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p, ctx = any_platform, any_platform.context()
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text('{"source": "a", "target": "b"}\n')
    add_version(p, ctx, data, "gone")
    add_version(p, ctx, data, "kept")
    with Client(p) as client, client.start_run("train", capture=False) as run:
        run.use_dataset("gone@1")
        run.use_dataset("kept@1")
        run.log_artifact(model_dir, "model")
    remove(p, ctx, "gone@1")

    staged: list[object] = []  # refused before any file is staged (encrypted): it staged them all first
    stage_files = p.artifacts.stage_files
    monkeypatch.setattr(p.artifacts, "stage_files", lambda *a, **k: staged.append(a) or stage_files(*a, **k))
    with pytest.raises(NotFoundError, match=r"gone@1 .*no longer exists"):
        registry.register(p, ctx, run.id, "m")
    # a directory whose lineage names the removed version: the same
    with pytest.raises(NotFoundError, match=r"gone@1 .*no longer exists"):
        registry.register(p, ctx, model_dir, "m", lineage={"datasets": ["gone@1"]})
    assert _refusals(p) == ["refused", "refused"]
    assert staged == []
    with p.db.read() as s:
        assert s.scalars(select(RegisteredModel)).all() == []  # nothing written

    # a version that still exists is no obstacle
    info = registry.register(p, ctx, model_dir, "m", lineage={"datasets": ["kept@1"]})
    assert info.version == 1 and registry.read_manifest(p, ctx, "m@1")[1]["lineage"]["datasets"] == ["kept@1"]


def _version_id(platform: Platform, name: str) -> int:
    with platform.db.read() as s:
        return s.execute(
            select(DatasetVersion.id).join(Dataset).where(Dataset.name == name, DatasetVersion.version == 1)
        ).scalar_one()


def _in_thread(call: Callable[[], object]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors


@pytest.mark.postgres
def test_on_postgresql_rm_and_register_of_the_same_version_do_not_both_succeed(
    postgres_url: str, model_dir: Path, tmp_path: Path
) -> None:
    p = make_platform(tmp_path / "home", database_url=postgres_url)
    try:
        ctx = p.context()
        data = tmp_path / "data"
        data.mkdir()
        (data / "train.jsonl").write_text('{"source": "a", "target": "b"}\n')
        for name in ("first", "second"):
            add_version(p, ctx, data, name)
        with Client(p) as client, client.start_run("train", capture=False) as run:
            run.use_dataset("second@1")
            run.log_artifact(model_dir, "model")

        # a registration in flight (its lock and lineage edge, not committed yet): rm waits, then sees it
        with p.db.write() as s:
            row = _version_id(p, "first")
            s.execute(select(DatasetVersion.id).where(DatasetVersion.id == row).with_for_update(read=True))
            s.add(
                LineageEdge(
                    project_id=ctx.project_id,
                    src="dataset:first@1",
                    dst="model:m@1",
                    relation="trained-on",
                    created_at=utcnow(),
                    created_by=ctx.user,
                )
            )
            s.flush()
            thread, errors = _in_thread(lambda: remove(p, ctx, "first@1"))
            thread.join(1.5)
            assert thread.is_alive()  # waiting on the registration
        thread.join(30)
        assert [type(e) for e in errors] == [UsageError] and "used by registered model" in str(errors[0])

        # a removal in flight (locked and deleted, not committed yet): register waits, then finds it gone
        with p.db.write() as s:
            row = _version_id(p, "second")
            s.execute(select(DatasetVersion.id).where(DatasetVersion.id == row).with_for_update())
            s.execute(delete(DatasetVersion).where(DatasetVersion.id == row))
            thread, errors = _in_thread(lambda: registry.register(p, ctx, run.id, "m2"))
            thread.join(3)
            assert thread.is_alive()  # waiting on the removal
        thread.join(60)
        assert [type(e) for e in errors] == [NotFoundError] and "no longer exists" in str(errors[0])
    finally:
        p.close()
