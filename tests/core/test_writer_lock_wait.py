"""The SQLite writer queue (an flock on ``<db>.write.lock``) gives up like SQLite's busy timeout does: a
holder that hangs (stopped, in a debugger, deadlocked) must not make every other writer wait for ever."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import func, select

from modelyard.core import MetadataStore
from modelyard.core._audit import append
from modelyard.core._models import AuditRecord
from modelyard.errors import BackendError

# Holds the flock from another process until its stdin closes or says so.
_HOLDER = (
    "import fcntl, os, sys\n"
    "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)\n"
    "fcntl.flock(fd, fcntl.LOCK_EX)\n"
    "print('held', flush=True)\n"
    "sys.stdin.readline()\n"
)


@contextmanager
def held_by_another_process(lock: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "held\n"
        yield proc
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)


def _write(store: MetadataStore, resource: str) -> None:
    with store.write() as s:
        append(s, actor="t", project="p", action="a", resource=resource, outcome="ok")


def _count(store: MetadataStore) -> int:
    with store.read() as s:
        return int(s.scalar(select(func.count()).select_from(AuditRecord)) or 0)


def _in_thread(fn: object) -> list[BaseException | None]:
    """Runs ``fn`` in another thread; the list holds its exception (or None), empty if it never ended."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            fn()  # type: ignore[operator]
        except BaseException as exc:  # reported to the test
            outcome.append(exc)
        else:
            outcome.append(None)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(30)
    return outcome


def _unlocked(lock: Path) -> bool:
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[tuple[MetadataStore, Path]]:
    db = tmp_path / "yard.db"
    store = MetadataStore(f"sqlite:///{db}", write_lock_timeout_s=1.0)
    yield store, Path(f"{db}.write.lock")
    store.dispose()


@pytest.mark.timeout(120)
def test_a_write_gives_up_on_a_lock_another_process_holds_and_writes_nothing(
    db: tuple[MetadataStore, Path],
) -> None:
    store, lock = db
    with held_by_another_process(lock):
        start = time.monotonic()
        with pytest.raises(BackendError, match="another process") as info:
            _write(store, "x")
        waited = time.monotonic() - start
        assert str(lock) in str(info.value)
        assert 0.9 < waited < 30  # the store's 1 s (give or take the clock), not 60 s nor for ever
        assert _count(store) == 0


@pytest.mark.timeout(120)
def test_after_giving_up_writes_succeed_once_the_holder_lets_go(db: tuple[MetadataStore, Path]) -> None:
    store, lock = db
    with held_by_another_process(lock), pytest.raises(BackendError):
        _write(store, "x")
    # Neither the thread lock nor the depth is left behind: another thread gets in, then this one, and
    # the flock is free again after each.
    assert _in_thread(lambda: _write(store, "from a thread")) == [None]
    assert _unlocked(lock)
    _write(store, "from this thread")
    assert _unlocked(lock)
    assert _count(store) == 2


@pytest.mark.timeout(120)
def test_a_write_gives_up_on_a_thread_of_this_process_that_hangs_in_a_write(
    db: tuple[MetadataStore, Path],
) -> None:
    store, _ = db
    inside, release = threading.Event(), threading.Event()

    def hang() -> None:
        with store.write():
            inside.set()
            release.wait(60)

    hanging = threading.Thread(target=hang, daemon=True)
    hanging.start()
    assert inside.wait(30)
    try:
        with pytest.raises(BackendError, match="another thread"):
            _write(store, "x")
    finally:
        release.set()
        hanging.join(30)
    _write(store, "y")
    assert _count(store) == 1


@pytest.mark.timeout(120)
def test_a_lock_file_that_cannot_be_opened_is_a_clear_error_that_blocks_no_other_thread(
    db: tuple[MetadataStore, Path],
) -> None:
    store, lock = db
    lock.mkdir()  # not a file: opening it fails
    with pytest.raises(BackendError, match="write lock"):
        _write(store, "x")
    lock.rmdir()
    assert _in_thread(lambda: _write(store, "y")) == [None]
    assert _count(store) == 1


def test_a_write_inside_another_write_of_the_same_store_fails_at_once(tmp_path: Path) -> None:
    """SQLite lets one writer in at a time: a write started inside another on the same thread waited for
    itself, for the whole busy timeout (60 s), then failed with "database is locked". It fails at once,
    saying why, and the outer write is unharmed."""
    store = MetadataStore(f"sqlite:///{tmp_path / 'yard.db'}", write_lock_timeout_s=30)
    try:
        started = time.monotonic()
        with store.write() as outer:
            append(outer, actor="a", project="p", action="x.outer", resource="r", outcome="ok")
            with pytest.raises(BackendError, match="inside another write"), store.write() as inner:
                append(inner, actor="a", project="p", action="x.inner", resource="r", outcome="ok")
        assert time.monotonic() - started < 5
        with store.read() as s:
            assert s.scalar(select(func.count()).select_from(AuditRecord)) == 1
        with store.write() as again:  # the lock is not left held
            append(again, actor="a", project="p", action="x.after", resource="r", outcome="ok")
    finally:
        store.dispose()
