"""Metadata-store details not covered by the contract suite."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select

from modelyard.core import MetadataStore, Platform
from modelyard.core._audit import append, verify
from modelyard.core._db import _normalise_url
from modelyard.core._models import AuditRecord


def test_postgres_scheme_alias() -> None:
    assert _normalise_url("postgres://u@h/db").startswith("postgresql+psycopg://")
    assert _normalise_url("postgresql://u@h/db").startswith("postgresql+psycopg://")


def test_sqlite_file_is_private(tmp_path: Path) -> None:
    store = MetadataStore(f"sqlite:///{tmp_path / 'yard.db'}")
    store.dispose()
    assert stat.S_IMODE((tmp_path / "yard.db").stat().st_mode) == 0o600


def test_threads_sharing_one_store_lose_nothing(tmp_path: Path) -> None:
    store = MetadataStore(f"sqlite:///{tmp_path / 'yard.db'}")

    def work(n: int) -> None:
        for i in range(200):
            with store.write() as s:
                append(s, actor=f"t{n}", project="p", action="a", resource=str(i), outcome="ok")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with store.read() as s:
        assert s.scalar(select(func.count()).select_from(AuditRecord)) == 800
        assert verify(s).ok
    store.dispose()


def test_head_revision_constant_matches_alembic(tmp_path: Path) -> None:
    """MetadataStore.migrate skips importing Alembic when the store is at HEAD_REVISION; it must be the
    head Alembic computes, or a new migration file has been added without updating it."""
    import sys

    from modelyard.core import _db

    assert _db.head_revision() == _db.HEAD_REVISION
    assert _db._known_head() == _db.HEAD_REVISION
    store = MetadataStore(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        assert store.current_revision() == _db.HEAD_REVISION
    finally:
        store.dispose()
    assert "alembic" in sys.modules  # imported by head_revision above; the fast path is checked below
    code = (
        "import sys; from modelyard.core._db import MetadataStore; "
        f"MetadataStore('sqlite:///{tmp_path / 'm.db'}').dispose(); "
        "assert 'alembic' not in sys.modules, 'opening a store at head imported alembic'"
    )
    import subprocess

    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_unknown_migration_file_disables_the_fast_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A migration named Alembic's default way (no leading digit) must not be skipped."""
    import shutil

    from modelyard.core import _db

    versions = tmp_path / "versions"
    shutil.copytree(_db._VERSIONS, versions)
    monkeypatch.setattr(_db, "_VERSIONS", versions)
    assert _db._known_head() == _db.HEAD_REVISION
    (versions / "a1b2c3_add_things.py").write_text("revision = 'a1b2c3'\n")
    assert _db._known_head() is None


def test_a_store_a_newer_modelyard_migrated_is_refused_clearly(tmp_path: Path) -> None:
    """Older code must not use a store migrated past its head (it would misread what newer code wrote, such
    as blobs moved by repacking); it says so instead of Alembic's "can't locate revision"."""
    from sqlalchemy import text

    from modelyard.errors import ConfigError

    url = f"sqlite:///{tmp_path / 'm.db'}"
    MetadataStore(url).dispose()
    store = MetadataStore(url, migrate=False)
    try:
        with store.engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '0099_from_the_future'"))
    finally:
        store.dispose()
    with pytest.raises(
        ConfigError, match="revision '0099_from_the_future', which this modelyard does not know"
    ):
        MetadataStore(url)
    store = MetadataStore(url, migrate=False)
    try:
        assert store.current_revision() == "0099_from_the_future"  # untouched
    finally:
        store.dispose()


def test_a_failed_syncfs_is_an_error_not_a_silent_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Write-back errors reported by syncfs(2) must fail the batch: os.sync() cannot report them."""
    import ctypes
    import errno

    from modelyard.core import _blobs

    class FailingLibc:
        def syncfs(self, fd: int) -> int:
            ctypes.set_errno(errno.EIO)
            return -1

    monkeypatch.setattr(_blobs, "_libc", lambda: FailingLibc())
    with pytest.raises(OSError, match="syncfs") as info:
        _blobs.sync_filesystem(tmp_path)
    assert info.value.errno == errno.EIO


def test_verifying_the_audit_chain_while_others_append_reports_no_tampering(
    any_platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records committed by another process during the scan are not "deleted from the end" (helper-25:
    on PostgreSQL the head was read in a later snapshot than the records)."""
    from modelyard.core import _audit, verify_chain

    p = any_platform
    ctx = p.context()
    for i in range(5):
        p.audit(ctx, "test.write", f"thing:{i}", "ok")
    other = Platform(p.settings)
    real_hash, appended = _audit.record_hash, []

    def hash_then_append(fields: dict[str, object]) -> str:
        if not appended:  # once, while the scan is under way: another connection appends and commits
            appended.append(True)
            other.audit(other.context(), "test.write", "thing:late", "ok")
        return real_hash(fields)

    monkeypatch.setattr(_audit, "record_hash", hash_then_append)
    try:
        result = verify_chain(p, ctx)
    finally:
        other.close()
    assert appended and result.ok, result.reason
    monkeypatch.undo()
    assert verify_chain(p, ctx).checked == result.checked + 1  # the late record, seen by the next check


@pytest.mark.parametrize("param", ["password", "sslpassword"])
def test_a_password_in_the_query_stays_out_of_messages(param: str) -> None:
    """libpq reads a password from the query too; the store's URL in errors, `yard init` and doctor showed it
    (only the user-info password was hidden)."""
    from modelyard.errors import BackendError

    url = f"postgresql://yard@127.0.0.1:1/yard?{param}=s3cret&connect_timeout=1"
    with pytest.raises(BackendError) as raised:
        MetadataStore(url)
    assert "s3cret" not in str(raised.value) and "127.0.0.1" in str(raised.value)
    store = MetadataStore(url, migrate=False)
    assert "s3cret" not in store.safe_url and "connect_timeout=1" in store.safe_url
    store.dispose()


def test_a_postgres_connection_gives_up_on_a_vanished_server(postgres_url: str) -> None:
    """libpq's defaults wait for ever: with the server gone behind a partition, end_run and the exit hung for
    minutes. Connections get a connect timeout and keepalives; what the URL names itself is kept."""
    from modelyard.core._db import PG_CONNECT_DEFAULTS

    def parameters(url: str) -> dict[str, str]:
        store = MetadataStore(url, migrate=False)
        try:
            with store.engine.connect() as conn:
                return dict(conn.connection.driver_connection.info.get_parameters())
        finally:
            store.dispose()

    got = parameters(postgres_url)
    assert {k: got.get(k) for k in PG_CONNECT_DEFAULTS} == {k: str(v) for k, v in PG_CONNECT_DEFAULTS.items()}
    sep = "&" if "?" in postgres_url else "?"
    assert parameters(f"{postgres_url}{sep}connect_timeout=3")["connect_timeout"] == "3"


def test_a_second_store_on_the_same_file_keeps_the_first_ones_sqlite_locks(tmp_path: Path) -> None:
    """SQLite's locks are POSIX locks, which the process loses on *any* close of the file. Opening a second
    store on the same file in one process (a CLI call inside an SDK process, the monitor loop) used to
    open and close yard.db to create it private: another process then took the file as unused, checkpointed
    and deleted the WAL under the first store's connections, whose next read was 'disk I/O error'."""
    import subprocess
    import sys

    path = tmp_path / "yard.db"
    first = MetadataStore(f"sqlite:///{path}")
    try:
        with first.write() as s:
            append(s, actor="t", project="p", action="a", resource="r", outcome="ok")
        with first.read() as s:  # the first store's pooled connection stays open on the file
            s.scalar(select(func.count()).select_from(AuditRecord))
        MetadataStore(f"sqlite:///{path}").dispose()
        # Another process opens, reads and closes: it may delete the WAL only if it thinks it was the last.
        read = "select count(*) from sqlite_master"  # one that reads nothing would not open the WAL
        code = f"import sqlite3; c = sqlite3.connect({str(path)!r}); c.execute({read!r}); c.close()"
        subprocess.run([sys.executable, "-c", code], check=True)
        assert Path(f"{path}-wal").exists()
        with first.read() as s:
            assert s.scalar(select(func.count()).select_from(AuditRecord)) == 1
    finally:
        first.dispose()
