"""Artifact-store details beyond the contract suite: grouping of large batches, CLI-independent."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from modelyard.core import Platform, _artifacts, get_artifacts, put_artifacts


def test_batches_publish_in_bounded_groups(
    platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_artifacts, "_GROUP_FILES", 3)
    staging = platform.backend.staging_dir()
    seen: list[int] = []
    real_seal = platform.artifacts._seal

    def seal(src):  # type: ignore[no-untyped-def]
        seen.append(len(list(staging.iterdir())))  # sealed files waiting to be published
        return real_seal(src)

    monkeypatch.setattr(platform.artifacts, "_seal", seal)
    files = []
    for i in range(10):
        path = tmp_path / f"f{i}"
        path.write_bytes(os.urandom(1000) if i != 7 else (tmp_path / "f1").read_bytes())  # f7 == f1
        files.append(path)
    infos = put_artifacts(platform, platform.context(), files)
    assert max(seen) <= 2  # never more than a group's worth in temp space
    assert len(list(platform.backend.list("objects/"))) == 9  # the duplicate across groups is stored once
    assert list(staging.iterdir()) == []
    outs = [(i.digest, tmp_path / "out" / i.name) for i in infos]
    get_artifacts(platform, platform.context(), outs)
    assert [o.read_bytes() for _, o in outs] == [f.read_bytes() for f in files]


def test_a_failed_upload_is_audited_and_leaves_nothing(
    platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelyard.core import list_records
    from modelyard.errors import BackendError

    def fail(*args: object, **kwargs: object) -> None:
        raise BackendError("disk unplugged")

    monkeypatch.setattr(platform.backend, "put_file", fail)
    src = tmp_path / "x.bin"
    src.write_bytes(b"x" * 100)
    with pytest.raises(BackendError):
        put_artifacts(platform, platform.context(), [src])
    last = list_records(platform, platform.context())[-1]
    assert (last["action"], last["outcome"], last["detail"]["code"]) == (
        "artifact.write",
        "refused",
        "backend_error",
    )
    assert list(platform.backend.list("objects/")) == []
    assert list(platform.backend.staging_dir().iterdir()) == []


def test_output_errors_are_usage_errors(platform: Platform, tmp_path: Path) -> None:
    from modelyard.core import get_artifact, put_artifact
    from modelyard.errors import UsageError

    src = tmp_path / "x.bin"
    src.write_bytes(b"x" * 100)
    info = put_artifact(platform, platform.context(), src)
    with pytest.raises(UsageError, match="is a directory"):
        get_artifact(platform, platform.context(), info.digest, tmp_path)
    with pytest.raises(UsageError, match="cannot write output"):
        get_artifact(platform, platform.context(), info.digest, src / "below-a-file")


def test_a_corrupt_store_marker_is_a_clear_error(platform: Platform) -> None:
    from modelyard.core import doctor
    from modelyard.errors import ConfigError

    platform.backend.write_bytes("store.json", b"[1]")
    with Platform(platform.settings) as fresh, pytest.raises(ConfigError, match="corrupt"):
        fresh.store_region  # noqa: B018
    rows = {check: status for check, _, status in doctor(platform.settings)}
    assert rows["artifact store"] == "fail"  # doctor reports it, never raises


def test_a_lost_commit_acknowledgement_keeps_the_objects(
    platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The transaction commits but the caller sees an error (connection dropped before the reply): the
    referenced objects must not be discarded."""
    import contextlib

    from modelyard.core import get_artifact
    from modelyard.errors import BackendError

    real_write = platform.db.write
    calls = {"n": 0}

    @contextlib.contextmanager
    def write():  # type: ignore[no-untyped-def]
        calls["n"] += 1
        with real_write() as s:
            yield s
        if calls["n"] == 1:  # the put's transaction: committed, then the acknowledgement is "lost"
            raise BackendError("connection lost after COMMIT")

    src = tmp_path / "x.bin"
    src.write_bytes(os.urandom(5000))
    monkeypatch.setattr(platform.db, "write", write)
    with pytest.raises(BackendError):
        put_artifacts(platform, platform.context(), [src])
    monkeypatch.setattr(platform.db, "write", real_write)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    get_artifact(platform, platform.context(), digest, tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == src.read_bytes()


def test_init_sweeps_stale_staging_files_only(platform: Platform) -> None:
    from modelyard.core import init_home

    staging = platform.backend.staging_dir()
    stale, fresh = staging / ".put-crashed", staging / ".put-in-progress"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"y")
    day_ago = time.time() - 2 * 86_400
    os.utime(stale, (day_ago, day_ago))
    report = init_home(platform.settings)
    assert not stale.exists() and fresh.exists()
    assert report.cleaned == ["1 stale temp file(s) left by interrupted writes"] and report.created == []


@pytest.mark.postgres
def test_an_unsettled_commit_keeps_its_objects(postgres_url: str, tmp_path: Path) -> None:
    """A commit whose acknowledgement was lost may still be in progress, invisible to other snapshots.
    discard() must wait for its outcome, and keep the objects while it is unknown: asking which objects
    rows refer to would answer "none" and delete what the commit is about to reference."""
    from sqlalchemy import text

    from modelyard.testing import make_platform

    platform = make_platform(tmp_path / "home", database_url=postgres_url)
    try:
        store = platform.artifacts
        src = tmp_path / "f.bin"
        src.write_bytes(os.urandom(4096))
        with open(src, "rb") as f:
            staged = store.stage(f, region=store.region)
        assert store.backend.exists(staged.object_name)
        with platform.db.engine.connect() as conn:  # a transaction that stays open: "in progress"
            conn.execute(text("CREATE TEMP TABLE t (x int)"))
            xid = str(conn.execute(text("SELECT pg_current_xact_id()::text")).scalar_one())
            assert not store._settled(xid, wait_s=0.3)
            store.discard([staged], committed=False, claimed=set(), xid=xid)
            assert store.backend.exists(staged.object_name)  # outcome unknown: kept
            conn.rollback()
        assert store._settled(xid, wait_s=0.3)  # aborted
        store.discard([staged], committed=False, claimed=set(), xid=xid)
        assert not store.backend.exists(staged.object_name)  # aborted and unreferenced: deleted
    finally:
        platform.close()


@pytest.mark.parametrize("marker", [b"{bad", b"[1]", b'{"format": 1}'])
def test_init_on_a_store_with_a_corrupt_marker_says_so(platform: Platform, marker: bytes) -> None:
    """`yard init` on an existing store read its marker by hand: one that was not JSON, or JSON of another
    shape, ended in an unexpected JSONDecodeError or AttributeError instead of the ConfigError opening the
    store gives."""
    from modelyard.core import init_home
    from modelyard.errors import ConfigError

    (platform.backend.root / "store.json").write_bytes(marker)  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=r"marker store\.json .*corrupt"):
        init_home(platform.settings)
