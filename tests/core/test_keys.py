"""Key rotation never loses a key: concurrent rotations, a crash mid-rotation, a process holding a stale
keyring. And only installation admins rotate."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import pytest

from modelyard.core import (
    Platform,
    Role,
    _keys,
    create_project,
    get_artifact,
    put_artifact,
    rotate_master_key,
)
from modelyard.errors import PermissionDeniedError
from modelyard.testing import actor


def _file(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_bytes(os.urandom(3000))
    return path


def _readable(platform: Platform, tmp_path: Path, files: dict[str, Path]) -> None:
    """Every artifact opens with a freshly loaded keyring."""
    with Platform(platform.settings) as fresh:
        ctx = fresh.context()
        for digest, src in files.items():
            out = tmp_path / f"check-{digest[:8]}"
            get_artifact(fresh, ctx, digest, out)
            assert out.read_bytes() == src.read_bytes()


def _rotate_in_process(home: str) -> str:
    try:
        with Platform.open(home=home) as p:
            rotate_master_key(p, p.context())
        return ""
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def test_concurrent_rotations_keep_every_key(platform: Platform, tmp_path: Path) -> None:
    ctx = platform.context()
    files = {put_artifact(platform, ctx, f).digest: f for f in (_file(tmp_path, "a"), _file(tmp_path, "b"))}
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        errors = pool.map(_rotate_in_process, [str(platform.settings.home)] * 3)
    assert errors == ["", "", ""]  # serialised by the rotation lock: three rotations in a row
    _readable(platform, tmp_path, files)
    key_dir = platform.settings.resolved_key_file.parent
    assert sorted(p.name for p in key_dir.iterdir()) == ["master.key", "master.key.lock"]


def test_crash_between_commit_and_key_swap_is_settled(
    platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = platform.context()
    first = _file(tmp_path, "a")
    files = {put_artifact(platform, ctx, first).digest: first}
    real_replace = os.replace

    def crash(src: object, dst: object) -> None:
        raise KeyboardInterrupt("power cut")  # the commit happened; the key file was not swapped

    monkeypatch.setattr(_keys.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        rotate_master_key(platform, ctx)
    monkeypatch.setattr(_keys.os, "replace", real_replace)
    key_file = platform.settings.resolved_key_file
    assert (key_file.parent / "master.key.next").exists()
    # The next process settles it: the recorded key id says the new key is live.
    with Platform(platform.settings) as later:
        later_ctx = later.context()
        second = _file(tmp_path, "b")
        files[put_artifact(later, later_ctx, second).digest] = second
        rotate_master_key(later, later_ctx)
    assert not (key_file.parent / "master.key.next").exists()
    _readable(platform, tmp_path, files)


def test_a_stale_keyring_rewraps_to_the_live_key(platform: Platform, tmp_path: Path) -> None:
    ctx = platform.context()
    platform.keyring  # noqa: B018  (load the keyring now, before another process rotates)
    with Platform(platform.settings) as other:
        rotate_master_key(other, other.context())
    info = put_artifact(platform, ctx, _file(tmp_path, "late"))  # wrapped with the retired key in memory
    _readable(platform, tmp_path, {info.digest: tmp_path / "late"})
    with Platform(platform.settings) as other:
        rotate_master_key(other, other.context())  # and rotation still finds every key it needs
    _readable(platform, tmp_path, {info.digest: tmp_path / "late"})


def test_tenant_admins_cannot_act_on_the_installation(platform: Platform) -> None:
    root = platform.context()
    create_project(platform, root, "tenant")
    tenant_admin = actor(platform, platform.context(project="tenant"), "tina", Role.ADMIN)
    key_before = platform.settings.resolved_key_file.read_bytes()
    with pytest.raises(PermissionDeniedError, match="whole installation"):
        rotate_master_key(platform, tenant_admin)
    with pytest.raises(PermissionDeniedError, match="whole installation"):
        create_project(platform, tenant_admin, "another")
    from modelyard.core import list_records

    with pytest.raises(PermissionDeniedError, match="whole installation"):
        list_records(platform, tenant_admin, all_projects=True)
    assert platform.settings.resolved_key_file.read_bytes() == key_before
    assert any(r["outcome"] == "denied" for r in list_records(platform, tenant_admin))


def test_a_process_keeps_reading_after_another_rotates_the_key(platform: Platform, tmp_path: Path) -> None:
    """A server or worker opened before `yard keys rotate` reads artifacts and trusts its signing key
    after it (helper-25: it failed every read, and a signature check called the key row altered)."""
    from modelyard.core._signing import Signer, verify_signature

    ctx = platform.context()
    src = _file(tmp_path, "early")
    info = put_artifact(platform, ctx, src)
    signer = Signer(platform)
    body = b'{"manifest": 1}'
    signature = signer.sign(body)
    get_artifact(platform, ctx, info.digest, tmp_path / "before")
    with Platform(platform.settings) as other:
        rotate_master_key(other, other.context())
    get_artifact(platform, ctx, info.digest, tmp_path / "after")
    assert (tmp_path / "after").read_bytes() == src.read_bytes()
    with platform.db.read() as s:
        verify_signature(platform, s, signer.key_id, body, signature, what="after the rotation")


def test_a_rotation_commits_with_its_audit_record(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key.rotate record is written in the rotation's transaction: a failure writing it leaves the old
    key live, and a process killed after the commit cannot leave a rotation off the record."""
    from modelyard.core import list_records

    ctx = platform.context()
    before = platform.settings.resolved_key_file.read_bytes()
    real_audit = platform.audit

    def failing(*args: object, **kwargs: object) -> None:
        if args[1] == "key.rotate" and args[3] == "ok":
            raise OSError("disk full")
        real_audit(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(platform, "audit", failing)
    with pytest.raises(OSError, match="disk full"):
        rotate_master_key(platform, ctx)
    monkeypatch.undo()
    assert platform.settings.resolved_key_file.read_bytes() == before  # rolled back with it
    assert [r["outcome"] for r in list_records(platform, ctx) if r["action"] == "key.rotate"] == ["error"]
    old, new, _ = rotate_master_key(platform, ctx)
    [ok] = [r for r in list_records(platform, ctx) if r["action"] == "key.rotate" and r["outcome"] == "ok"]
    assert (ok["detail"]["old"], ok["detail"]["new"]) == (old, new)


def test_a_write_staged_before_a_rotation_claims_after_the_keyring_refreshed(
    platform: Platform, tmp_path: Path
) -> None:
    """A worker stages a blob (its data key wrapped with the master key it holds), another process
    rotates, and a read in the worker meets the new key and re-reads the key file before the claim. The
    claim re-wraps the staged key to the live master: the retired key must still unwrap it (it was
    forgotten at the refresh, and the write failed naming a key mismatch)."""
    import io

    ctx = platform.context()
    first = _file(tmp_path, "first")
    old = put_artifact(platform, ctx, first)
    store = platform.artifacts
    staged = store.stage(io.BytesIO(b"staged before the rotation"), region=store.region)
    with Platform(platform.settings) as other:
        rotate_master_key(other, other.context())
    get_artifact(platform, ctx, old.digest, tmp_path / "read")  # a key id it does not know: refresh
    with platform.db.write() as s:
        assert store.claim(s, [staged]) == {staged.digest}
    with Platform(platform.settings) as fresh:
        assert b"".join(fresh.artifacts.iter_bytes(staged.digest)) == b"staged before the rotation"
