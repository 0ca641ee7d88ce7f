"""Nothing of a run's training left behind in plain files: deleting a run deletes its checkpoints in this home
(weights, optimizer state, the tokenizer trained on the user's data), and `yard gc` sweeps the checkpoint
folders of runs that are FINISHED or gone, never those a resume needs (RUNNING, FAILED, KILLED).

The folders are made by hand (what matters is the run's state, not what training writes); the lock is the
one training takes (tests/training/test_train.py holds the real thing)."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest
from sqlalchemy import select

from modelyard.core import Platform, collect_garbage
from modelyard.core._models import AuditRecord
from modelyard.errors import NotFoundError, UsageError
from modelyard.testing import Yard
from modelyard.tracking import Client, _store


def checkpoints(platform: Platform, run_id: str) -> Path:
    """A run's checkpoint folder as training leaves it: a complete step, the tokenizer, the lock file."""
    root = platform.settings.home / "checkpoints" / run_id
    step = root / "step-00000002"
    step.mkdir(parents=True)
    (step / "model.safetensors").write_bytes(b"weights of the user's data")
    (step / "manifest.json").write_text("{}")
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "spiece.model").write_bytes(b"vocabulary of the user's data")
    (root / ".training.lock").touch()
    return root


def run_with_checkpoints(c: Client, status: str) -> tuple[str, Path]:
    if status == "RUNNING":  # trained by another process (this client would end it when closed)
        run_id = _store.create_run(c.platform, c.ctx, "t", pid=os.getpid())
    else:
        run = c.start_run("t")
        run.end(status)
        run_id = run.id
    return run_id, checkpoints(c.platform, run_id)


def audit_details(platform: Platform, action: str) -> list[dict[str, object]]:
    with platform.db.read() as s:
        rows = s.scalars(select(AuditRecord.detail).where(AuditRecord.action == action)).all()
    return [json.loads(d) for d in rows]


# -- deleting a run --------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["FAILED", "KILLED"])
def test_deleting_a_run_deletes_its_checkpoints_and_audits_it(any_platform: Platform, status: str) -> None:
    with Client(any_platform) as c:
        run_id, root = run_with_checkpoints(c, status)
        other_id, other = run_with_checkpoints(c, status)
        c.delete_run(run_id)
        with pytest.raises(NotFoundError):
            c.get_run(run_id)
        assert c.get_run(other_id).status == status
    assert not root.exists()
    assert (other / "step-00000002" / "manifest.json").is_file()  # another run's are not touched
    assert [d.get("checkpoints") for d in audit_details(any_platform, "run.delete")] == ["deleted"]


def test_deleting_a_run_without_checkpoints_says_nothing_of_them(platform: Platform) -> None:
    with Client(platform) as c:
        run = c.start_run("t")
        run.end("FINISHED")
        c.delete_run(run.id)
    assert ["checkpoints" in d for d in audit_details(platform, "run.delete")] == [False]
    assert not (platform.settings.home / "checkpoints" / run.id).exists()


def test_checkpoints_that_cannot_be_deleted_are_a_warning_and_audited(
    platform: Platform, tmp_path: Path
) -> None:
    with Client(platform) as c:
        run_id, root = run_with_checkpoints(c, "FAILED")
        elsewhere = root.rename(tmp_path / "elsewhere")
        root.symlink_to(elsewhere)  # not followed: a link is no checkpoint folder training makes
        with pytest.warns(UserWarning, match=rf"run {run_id[:8]} deleted, but its checkpoints .*{run_id}"):
            c.delete_run(run_id)
        with pytest.raises(NotFoundError):  # the deletion stands
            c.get_run(run_id)
    [detail] = audit_details(platform, "run.delete")
    assert str(detail["checkpoints"]).startswith("not deleted: ")
    assert root.is_symlink() and (elsewhere / "step-00000002").is_dir()
    # a collection says so again (the run is gone), and does not follow the link either
    assert collect_garbage(platform, platform.context()).failed_checkpoints == 1
    assert (elsewhere / "step-00000002").is_dir()


def test_a_run_being_trained_on_this_machine_is_not_deleted(platform: Platform) -> None:
    with Client(platform) as c:
        run_id, root = run_with_checkpoints(c, "KILLED")  # and resumed by another process: it holds the lock
        fd = os.open(root / ".training.lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what rank 0 holds while it trains
            with pytest.raises(UsageError, match=rf"run {run_id[:8]} is being trained .* right now"):
                c.delete_run(run_id)
            assert c.get_run(run_id).status == "KILLED"  # nothing changed
            assert (root / "step-00000002" / "manifest.json").is_file()
        finally:
            os.close(fd)
        c.delete_run(run_id)  # once it has stopped
    assert not root.exists()


# -- yard gc -------------------------------------------------------------------------------------------


def test_gc_sweeps_the_checkpoints_of_finished_and_deleted_runs_only(any_platform: Platform) -> None:
    ctx = any_platform.context()
    base = any_platform.settings.home / "checkpoints"
    with Client(any_platform) as c:
        kept = {status: run_with_checkpoints(c, status)[1] for status in ("RUNNING", "FAILED", "KILLED")}
        _, finished = run_with_checkpoints(c, "FINISHED")  # a crash between storing the model and deleting
        gone = checkpoints(any_platform, "ab" * 16)  # a run deleted by a version that left them
    (base / "notes").mkdir()  # not a run's: left alone, and said
    (base / "README").write_text("mine")

    dry = collect_garbage(any_platform, ctx, dry_run=True)
    assert (dry.checkpoints, dry.failed_checkpoints) == (2, 0)
    assert finished.exists() and gone.exists()

    report = collect_garbage(any_platform, ctx)
    assert (report.checkpoints, report.failed_checkpoints) == (2, 0)
    assert report.unknown_checkpoints == ("README", "notes")
    assert not finished.exists() and not gone.exists()
    for root in kept.values():  # resume needs them
        assert (root / "step-00000002" / "manifest.json").is_file()
    assert (base / "notes").is_dir() and (base / "README").read_text() == "mine"
    [swept] = [d for d in audit_details(any_platform, "artifact.gc") if "checkpoints" in d]
    assert sorted(swept["checkpoints"]) == sorted([finished.name, gone.name])  # type: ignore[arg-type]

    assert collect_garbage(any_platform, ctx).checkpoints == 0  # nothing more to do


def test_gc_leaves_a_folder_being_trained_even_when_its_run_is_gone(platform: Platform) -> None:
    root = checkpoints(platform, "cd" * 16)
    fd = os.open(root / ".training.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        report = collect_garbage(platform, platform.context())
    finally:
        os.close(fd)
    assert report.checkpoints == 0 and (root / "step-00000002").is_dir()


def test_gc_without_a_checkpoints_folder(platform: Platform) -> None:
    report = collect_garbage(platform, platform.context())
    assert (report.checkpoints, report.failed_checkpoints, report.unknown_checkpoints) == (0, 0, ())


def test_yard_gc_says_what_it_swept_and_what_it_left(yard: Yard, home: Path) -> None:
    assert yard("init").code == 0
    base = home / "checkpoints"
    (base / ("ef" * 16) / "step-00000001").mkdir(parents=True)
    (base / "scratch").mkdir()
    out = yard("gc", "--dry-run").out
    assert "would delete the checkpoints of 1 finished or deleted run(s)" in out, out
    assert "left alone in" in out and "scratch" in out, out
    assert (base / ("ef" * 16)).is_dir()
    out = yard("gc").out
    assert "deleted the checkpoints of 1 finished or deleted run(s)" in out, out
    assert not (base / ("ef" * 16)).exists()
    assert yard("gc", "--json").json()["unknown_checkpoints"] == ["scratch"]
