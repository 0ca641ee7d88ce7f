"""Blob packs: a dataset add stores its small files in a few pack objects, each blob a byte range with its
own key, read through ranged readers (file:// and s3://, a real local S3-compatible server process)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from modelyard import data
from modelyard.core import Platform
from modelyard.core._artifacts import PACK_MAX_BLOB, StagedBlob
from modelyard.core._blobs import BlobBackend
from modelyard.core._models import Blob
from modelyard.data._versions import members
from modelyard.errors import IntegrityError
from modelyard.testing import make_platform


def _tree(root: Path, count: int, size: int = 3000) -> dict[str, bytes]:
    files = {f"d{i % 7}/f{i:04d}.bin": secrets.token_bytes(size + i) for i in range(count)}
    for name, payload in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(payload)
    return files


def _read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.s3)])
def any_platform(request: pytest.FixtureRequest, home: Path) -> Iterator[Platform]:
    if request.param == "file":
        p = make_platform(home)
    else:
        import boto3

        endpoint: str = request.getfixturevalue("s3_endpoint")
        bucket = f"yard-{secrets.token_hex(4)}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        p = make_platform(home, artifact_uri=f"s3://{bucket}/store", s3_endpoint_url=endpoint)
    yield p
    p.close()


def _row(platform: Platform, digest: str) -> Blob:
    with platform.db.read() as s:
        row = s.execute(select(Blob).where(Blob.digest == digest)).scalar_one()
        s.expunge(row)
        return row


def test_many_small_files_make_few_objects_and_round_trip(any_platform: Platform, tmp_path: Path) -> None:
    platform, ctx = any_platform, any_platform.context()
    files = _tree(tmp_path / "src", 300)
    big = secrets.token_bytes(PACK_MAX_BLOB + 10)  # above the threshold: an object of its own
    (tmp_path / "src" / "big.bin").write_bytes(big)
    files["big.bin"] = big
    data.add_version(platform, ctx, tmp_path / "src", "ds")
    objects = list(platform.backend.list("objects/"))
    packs = [o for o in objects if o.startswith("objects/pk/")]
    assert 1 <= len(packs) <= 5 and len(objects) <= 10  # 301 files, a manifest: a handful of objects
    with platform.db.read() as s:
        packed = s.scalar(select(Blob.digest).where(Blob.pack_offset.is_not(None)).limit(1))
        assert packed is not None
    data.checkout(platform, ctx, "ds@1", tmp_path / "out")
    assert _read_tree(tmp_path / "out") == files
    # Every packed blob is also readable alone (a ranged read) and verified.
    digest = data.show(platform, ctx, "ds@1").manifest_digest
    first = next(m for m in members(platform.artifacts, digest) if m.path.endswith(".bin"))
    assert b"".join(platform.artifacts.iter_bytes(first.sha256)) == files[first.path]
    # Re-adding after a change reads the unchanged blobs from the packs and packs the changed ones.
    (tmp_path / "src" / "d0" / "f0000.bin").write_bytes(b"changed")
    files["d0/f0000.bin"] = b"changed"
    assert data.add_version(platform, ctx, tmp_path / "src", "ds").version == 2
    data.checkout(platform, ctx, "ds@2", tmp_path / "out2")
    assert _read_tree(tmp_path / "out2") == files


def test_a_flipped_byte_fails_only_its_blob(platform: Platform, tmp_path: Path) -> None:
    ctx = platform.context()
    files = _tree(tmp_path / "src", 40)
    data.add_version(platform, ctx, tmp_path / "src", "ds")
    store = platform.artifacts
    manifest = data.show(platform, ctx, "ds@1").manifest_digest
    digests = {m.path: m.sha256 for m in members(store, manifest)}
    target = digests["d3/f0010.bin"]
    row = _row(platform, target)
    assert row.pack_offset is not None and row.pack_length is not None
    pack = platform.settings.home / "artifacts" / row.object_name
    raw = bytearray(pack.read_bytes())
    raw[row.pack_offset + row.pack_length // 2] ^= 0x01
    pack.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match=target):
        data.checkout(platform, ctx, "ds@1", tmp_path / "out")
    with pytest.raises(IntegrityError, match=target):
        store.get_to_file(target, tmp_path / "one")
    siblings = [
        (d, n) for n, d in digests.items() if d != target and _row(platform, d).object_name == row.object_name
    ]
    assert siblings  # others in the same pack still read fine
    for d, name in siblings:
        assert b"".join(store.iter_bytes(d)) == files[name]


def test_no_plaintext_at_rest_in_packs(platform: Platform, tmp_path: Path) -> None:
    files = _tree(tmp_path / "src", 50, size=4096)
    data.add_version(platform, platform.context(), tmp_path / "src", "ds")
    stored = [p.read_bytes() for p in (platform.settings.home).rglob("*") if p.is_file()]
    assert any(len(s) > 50 * 4096 for s in stored)  # the pack
    for payload in files.values():
        for offset in range(0, len(payload) - 16, 1024):
            assert not any(payload[offset : offset + 16] in s for s in stored)


def _publish(platform: Platform, tmp_path: Path, count: int, tag: str) -> list[StagedBlob]:
    paths = []
    for i in range(count):
        p = tmp_path / f"{tag}-{i}"
        p.write_bytes(os.urandom(100 + i))
        paths.append(p)
    staged = platform.artifacts.publish_files(paths, region=platform.artifacts.region)
    assert len({b.object_name for b in staged}) == 1 and staged[0].object_name.startswith("objects/pk/")
    platform.backend.sync()
    return staged


def test_discard_deletes_unclaimed_packs_and_keeps_any_claimed(
    platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = platform.artifacts
    unclaimed = _publish(platform, tmp_path, 3, "a")
    store.discard(unclaimed, committed=True, claimed=set())
    assert not platform.backend.exists(unclaimed[0].object_name)

    partly = _publish(platform, tmp_path, 3, "b")
    with store.db.write() as s:
        claimed = store.claim(s, partly[:1])
    # Only the losers are passed (as a dataset add does): the store says the pack is referenced.
    store.discard(partly[1:], committed=True, claimed=set())
    assert platform.backend.exists(partly[0].object_name)
    store.discard(partly, committed=True, claimed=claimed)
    assert platform.backend.exists(partly[0].object_name)
    assert b"".join(store.iter_bytes(partly[0].digest)) == (tmp_path / "b-0").read_bytes()

    # Commit outcome unknown and the store cannot answer: everything is kept.
    lost = _publish(platform, tmp_path, 3, "c")

    def broken(names: object) -> set[str]:
        raise OSError("connection lost")

    with monkeypatch.context() as m:
        m.setattr(store, "_referenced", broken)
        store.discard(lost, committed=False, claimed=set())
    assert platform.backend.exists(lost[0].object_name)
    store.discard(lost, committed=False, claimed=set())  # it can answer now: nothing refers to the pack
    assert not platform.backend.exists(lost[0].object_name)


def test_duplicates_inside_a_pack_share_one_range(platform: Platform, tmp_path: Path) -> None:
    payload = os.urandom(5000)
    paths = []
    for i in range(3):
        p = tmp_path / f"same-{i}"
        p.write_bytes(payload)
        paths.append(p)
    staged = platform.artifacts.publish_files(paths, region=platform.artifacts.region)
    assert len({(b.pack_offset, b.pack_length, b.wrapped_key) for b in staged}) == 1
    size = (platform.settings.home / "artifacts" / staged[0].object_name).stat().st_size
    assert size == staged[0].pack_length  # the copies were cut off again


def test_range_reads(blob_backend: BlobBackend, tmp_path: Path) -> None:
    staging = blob_backend.staging_dir()
    path = staging / "range.tmp"
    path.write_bytes(bytes(range(256)) * 8)
    blob_backend.put_file("objects/pk/" + "a" * 32, path)
    with blob_backend.open_range("objects/pk/" + "a" * 32, 300, 10) as f:
        assert f.read() == bytes(range(44, 54))
    with blob_backend.open_range("objects/pk/" + "a" * 32, 2040, 100) as f:
        assert f.read() == bytes(range(248, 256))  # ends where the object does
