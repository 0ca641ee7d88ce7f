"""Contract suites: the behaviour every metadata-store and artifact-store backend must show.

Use them by subclassing in a test module and providing the fixture each one names::

    class TestSQLite(MetadataStoreContract):
        @pytest.fixture
        def fresh_database_url(self, tmp_path): return f"sqlite:///{tmp_path}/yard.db"
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from modelyard.core import (
    MetadataStore,
    Platform,
    create_project,
    get_artifact,
    get_artifacts,
    list_artifacts,
    put_artifact,
    put_artifacts,
    rotate_master_key,
)
from modelyard.core._audit import append, verify
from modelyard.core._crypto import MasterKey
from modelyard.core._db import head_revision
from modelyard.core._models import Artifact, AuditRecord, Blob, Meta
from modelyard.errors import (
    IntegrityError,
    MasterKeyError,
    NotFoundError,
    ResidencyError,
    UnsafePathError,
)
from modelyard.testing import _workers


def _spawn_pool(n: int) -> Any:
    return multiprocessing.get_context("spawn").Pool(n)


class MetadataStoreContract:
    """Needs a ``fresh_database_url`` fixture: a URL whose database exists and is empty."""

    processes = 8
    writes_per_process = 2000

    def test_open_migrates_to_head(self, fresh_database_url: str) -> None:
        store = MetadataStore(fresh_database_url)
        try:
            assert store.current_revision() == head_revision()
            MetadataStore(fresh_database_url).dispose()  # a second open is a no-op
        finally:
            store.dispose()

    def test_many_processes_open_a_brand_new_store_at_once(self, fresh_database_url: str) -> None:
        with _spawn_pool(self.processes) as pool:
            errors = pool.map(_workers.open_fresh_store, [fresh_database_url] * self.processes)
        assert errors == [""] * self.processes
        store = MetadataStore(fresh_database_url, migrate=False)
        try:
            with store.engine.connect() as conn:
                versions = conn.execute(text("SELECT version_num FROM alembic_version")).all()
            assert [v[0] for v in versions] == [head_revision()]
        finally:
            store.dispose()

    def test_concurrent_writers_lose_nothing(self, fresh_database_url: str) -> None:
        MetadataStore(fresh_database_url).dispose()
        args = [(fresh_database_url, w, self.writes_per_process) for w in range(self.processes)]
        with _spawn_pool(self.processes) as pool:
            results = pool.starmap(_workers.append_audit_records, args)
        assert [errs for _, errs in results] == [[]] * self.processes
        assert [done for done, _ in results] == [self.writes_per_process] * self.processes
        store = MetadataStore(fresh_database_url)
        try:
            with store.read() as s:
                total = s.scalar(select(func.count()).select_from(AuditRecord))
                per_worker = dict(
                    s.execute(select(AuditRecord.actor, func.count()).group_by(AuditRecord.actor)).all()
                )
                result = verify(s)
            assert total == self.processes * self.writes_per_process
            assert per_worker == {f"worker-{w}": self.writes_per_process for w in range(self.processes)}
            assert result.ok, result.reason
        finally:
            store.dispose()

    def test_failed_transaction_leaves_nothing(self, fresh_database_url: str) -> None:
        store = MetadataStore(fresh_database_url)
        try:
            with pytest.raises(RuntimeError), store.write() as s:
                s.add(Meta(key="half-done", value="x"))
                append(s, actor="a", project="p", action="t", resource="r", outcome="ok")
                s.flush()
                raise RuntimeError("boom")
            with store.read() as s:
                assert s.get(Meta, "half-done") is None
                assert s.scalar(select(func.count()).select_from(AuditRecord)) == 0
                assert verify(s).ok
        finally:
            store.dispose()

    # -- tamper evidence: edit, delete, swap, truncate directly in the database --------------------------
    def _chain(self, url: str, n: int = 6) -> MetadataStore:
        store = MetadataStore(url)
        for i in range(n):
            with store.write() as s:
                append(
                    s,
                    actor="alice",
                    project="p",
                    action="artifact.write",
                    resource=f"artifact:{i}",
                    outcome="ok",
                    detail={"i": i},
                )
        return store

    def _verify(self, store: MetadataStore) -> Any:
        with store.read() as s:
            return verify(s)

    def test_edited_record_is_found(self, fresh_database_url: str) -> None:
        store = self._chain(fresh_database_url)
        with store.engine.begin() as conn:
            conn.execute(text("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3"))
        result = self._verify(store)
        assert not result.ok and result.broken_seq == 3 and "modified" in result.reason
        store.dispose()

    def test_deleted_record_is_found(self, fresh_database_url: str) -> None:
        store = self._chain(fresh_database_url)
        with store.engine.begin() as conn:
            conn.execute(text("DELETE FROM audit_log WHERE seq = 4"))
        result = self._verify(store)
        assert not result.ok and result.broken_seq == 4
        store.dispose()

    def test_deleted_last_record_is_found(self, fresh_database_url: str) -> None:
        store = self._chain(fresh_database_url)
        with store.engine.begin() as conn:
            conn.execute(text("DELETE FROM audit_log WHERE seq = 6"))
        result = self._verify(store)
        assert not result.ok and result.broken_seq == 6
        store.dispose()

    def test_swapped_records_are_found(self, fresh_database_url: str) -> None:
        store = self._chain(fresh_database_url)
        with store.engine.begin() as conn:  # renumber 2 <-> 5: the order of events changes
            conn.execute(text("UPDATE audit_log SET seq = -2 WHERE seq = 2"))
            conn.execute(text("UPDATE audit_log SET seq = 2 WHERE seq = 5"))
            conn.execute(text("UPDATE audit_log SET seq = 5 WHERE seq = -2"))
        result = self._verify(store)
        assert not result.ok and result.broken_seq == 2
        store.dispose()


class ArtifactStoreContract:
    """Needs a ``platform`` fixture: an initialised :class:`Platform` on the backend under test."""

    sizes = (0, 1, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, 3 * (1 << 20) + 5)

    def _file(self, tmp_path: Path, size: int, name: str = "data.bin") -> Path:
        path = tmp_path / name
        path.write_bytes(os.urandom(size))
        return path

    def _objects(self, platform: Platform) -> list[str]:
        return sorted(platform.backend.list("objects/"))

    def test_round_trip(self, platform: Platform, tmp_path: Path) -> None:
        ctx = platform.context()
        for size in self.sizes:
            src = self._file(tmp_path, size, f"in-{size}")
            info = put_artifact(platform, ctx, src)
            out = tmp_path / f"out-{size}"
            assert get_artifact(platform, ctx, info.digest, out) == size
            assert out.read_bytes() == src.read_bytes()
        assert len(list_artifacts(platform, ctx)) == len(self.sizes)

    def test_batch_put_and_get(self, platform: Platform, tmp_path: Path) -> None:
        ctx = platform.context()
        files = [self._file(tmp_path, size, f"f{i}") for i, size in enumerate([16, 100, 5000, 70_000] * 5)]
        dup = tmp_path / "dup"
        dup.write_bytes(files[2].read_bytes())  # same bytes under another name
        paths = [*files, dup, files[3]]  # and the same file twice, under two names
        names = [f"batch/{i}" for i in range(len(paths))]
        infos = put_artifacts(platform, ctx, paths, names=names)
        assert [i.name for i in infos] == names
        assert len(self._objects(platform)) == len({i.digest for i in infos}) == 20
        with platform.db.read() as s:
            per_item = s.scalars(
                select(AuditRecord).where(
                    AuditRecord.resource.like("artifact:%"), AuditRecord.outcome == "ok"
                )
            ).all()
        assert len(per_item) == len(paths)  # one audit record per artifact, plus the batch summary
        outs = [(i.digest, tmp_path / "out" / f"{n}") for n, i in enumerate(infos)]
        assert get_artifacts(platform, ctx, outs) == [p.stat().st_size for p in paths]
        assert all(out.read_bytes() == src.read_bytes() for (_, out), src in zip(outs, paths, strict=True))

    def test_a_bad_name_refuses_the_whole_batch(self, platform: Platform, tmp_path: Path) -> None:
        ctx = platform.context()
        paths = [self._file(tmp_path, 100, f"f{i}") for i in range(3)]
        with pytest.raises(UnsafePathError):
            put_artifacts(platform, ctx, paths, names=["ok-1", "../bad", "ok-2"])
        assert self._objects(platform) == []
        assert list_artifacts(platform, ctx) == []

    def test_same_bytes_are_stored_once(self, platform: Platform, tmp_path: Path) -> None:
        ctx = platform.context()
        src = self._file(tmp_path, 100_000)
        first = put_artifact(platform, ctx, src, name="a")
        second = put_artifact(platform, ctx, src, name="b")
        assert first.digest == second.digest
        assert len(self._objects(platform)) == 1
        put_artifacts(platform, ctx, [src] * 6, names=[f"c{i}" for i in range(6)])  # a batch of copies
        assert len(self._objects(platform)) == 1
        assert list(platform.backend.staging_dir().iterdir()) == []  # no temp file left behind

    def test_concurrent_puts_of_the_same_bytes_keep_one_object(
        self, platform: Platform, tmp_path: Path
    ) -> None:
        ctx = platform.context()
        src = self._file(tmp_path, 300_000)
        errors: list[BaseException] = []

        def put(i: int) -> None:
            try:
                put_artifact(platform, ctx, src, name=f"copy-{i}")
            except BaseException as exc:  # collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=put, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        with platform.db.read() as s:
            assert s.scalar(select(func.count()).select_from(Blob)) == 1
        assert len(self._objects(platform)) == 1

    def test_no_plaintext_in_stored_objects(self, platform: Platform, tmp_path: Path) -> None:
        ctx = platform.context()
        src = self._file(tmp_path, 2 * (1 << 20) + 123)
        put_artifact(platform, ctx, src)
        plain = src.read_bytes()
        stored = b"".join(platform.backend.read_bytes(n) for n in self._objects(platform))
        for offset in range(0, len(plain) - 16, len(plain) // 64):
            assert plain[offset : offset + 16] not in stored

    def test_flipped_byte_is_an_integrity_error(self, platform: Platform, tmp_path: Path) -> None:
        ctx = platform.context()
        info = put_artifact(platform, ctx, self._file(tmp_path, 200_000))
        (name,) = self._objects(platform)
        raw = bytearray(platform.backend.read_bytes(name))
        raw[len(raw) // 2] ^= 0x01
        platform.backend.write_bytes(name, bytes(raw))
        out = tmp_path / "out.bin"
        with pytest.raises(IntegrityError, match=info.digest):  # names the damaged artifact
            get_artifact(platform, ctx, info.digest, out)
        assert not out.exists()  # unverified bytes never reach the destination

    def test_wrong_master_key_fails_clearly(self, platform: Platform, tmp_path: Path) -> None:
        ctx = platform.context()
        info = put_artifact(platform, ctx, self._file(tmp_path, 1000))
        other = MasterKey.generate()
        wrong = Platform(platform.settings.model_copy(update={"master_key": _secret(other.to_b64())}))
        try:
            with pytest.raises(MasterKeyError, match=other.key_id):
                get_artifact(wrong, wrong.context(), info.digest, tmp_path / "out")
        finally:
            wrong.close()

    def test_rotation_rewraps_and_retires_the_old_key(self, platform: Platform, tmp_path: Path) -> None:
        ctx = platform.context()
        src = self._file(tmp_path, 5000)
        info = put_artifact(platform, ctx, src)
        objects_before = {n: platform.backend.read_bytes(n) for n in self._objects(platform)}
        old_b64 = platform.keyring.current.to_b64()
        _, new_id, count = rotate_master_key(platform, ctx)
        assert count == 1
        # payloads untouched: rotation only re-wraps data keys
        assert {n: platform.backend.read_bytes(n) for n in self._objects(platform)} == objects_before
        reopened = Platform(platform.settings)
        try:
            assert reopened.keyring.current.key_id == new_id
            get_artifact(reopened, reopened.context(), info.digest, tmp_path / "after")
            assert (tmp_path / "after").read_bytes() == src.read_bytes()
        finally:
            reopened.close()
        old = Platform(platform.settings.model_copy(update={"master_key": _secret(old_b64)}))
        try:
            with pytest.raises(MasterKeyError):
                get_artifact(old, old.context(), info.digest, tmp_path / "old")
        finally:
            old.close()

    def test_hostile_names_are_refused_and_change_nothing(self, platform: Platform, tmp_path: Path) -> None:
        ctx = platform.context()
        src = self._file(tmp_path, 10)
        for name in (
            "../escape",
            "..\\escape",
            "/etc/passwd",
            "%2e%2e%2fx",
            "%252e%252e%252f",
            "a\x00b",
            "a#frag",
            "a;param=1",
        ):
            with pytest.raises(UnsafePathError):
                put_artifact(platform, ctx, src, name=name)
        assert self._objects(platform) == []
        with platform.db.read() as s:
            assert s.scalar(select(func.count()).select_from(Artifact)) == 0
            refused = s.scalars(select(AuditRecord).where(AuditRecord.outcome == "refused")).all()
        assert len(refused) == 8

    def test_residency_refusal_writes_nothing_and_is_audited(
        self, platform: Platform, tmp_path: Path
    ) -> None:
        ctx = platform.context()
        other = "eu-west-1" if platform.store_region != "eu-west-1" else "us-east-1"
        with pytest.raises(ResidencyError, match=other):
            put_artifact(platform, ctx, self._file(tmp_path, 10), region=other)
        assert self._objects(platform) == []
        with platform.db.read() as s:
            rec = s.scalars(select(AuditRecord).order_by(AuditRecord.seq.desc()).limit(1)).one()
        assert (rec.action, rec.outcome) == ("artifact.write", "refused")
        assert "residency_violation" in rec.detail

    def test_other_projects_cannot_read(self, platform: Platform, tmp_path: Path) -> None:
        ctx = platform.context()
        info = put_artifact(platform, ctx, self._file(tmp_path, 10))
        create_project(platform, ctx, "other")
        other = platform.context(project="other")
        with pytest.raises(NotFoundError):
            get_artifact(platform, other, info.digest, tmp_path / "out")
        assert list_artifacts(platform, other) == []


def _secret(value: str) -> Any:
    from pydantic import SecretStr

    return SecretStr(value)
