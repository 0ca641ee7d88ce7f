"""Metadata store: engine per URL scheme, SQLite tuned for many writer processes, migrations on open."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, func, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from modelyard.core._paths import create_private, private_dirs
from modelyard.core._redact import redact_url
from modelyard.errors import BackendError, ConfigError, UsageError

# Backends are chosen by URL scheme; the error lists these.
SCHEMES = {
    "sqlite": "sqlite",
    "postgres": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
}
_BUSY_TIMEOUT_MS = 60_000
# Arbitrary constant key for pg_advisory_lock: one migration runner per database at a time.
_PG_MIGRATION_LOCK = 0x59415244  # "YARD"


def _normalise_url(url: str) -> str:
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise UsageError(
            f"database URL {redact_url(url)!r} is not a URL; expected sqlite:///PATH or "
            "postgresql+psycopg://USER@HOST/DB"
        ) from exc
    driver = SCHEMES.get(parsed.drivername)
    if driver is None:
        raise UsageError(
            f"database URL scheme {parsed.drivername!r} is not supported; "
            f"use one of sqlite://, postgresql:// (postgresql+psycopg://)"
        )
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


def missing_sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL when it does not exist yet (opening it would create it), else None."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None  # MetadataStore explains a malformed URL
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    path = Path(parsed.database)
    return None if path.exists() else path


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # Python's sqlite3 opens implicit transactions itself; turn that off so we control BEGIN below.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")  # durable across app crashes in WAL; fsync at checkpoint
    cur.close()


class _WriterLock:
    """Queues SQLite writers (threads and processes) on an flock before BEGIN IMMEDIATE.

    SQLite's busy handler polls with sleeps of up to 100 ms, so under contention writers mostly sleep; a
    blocking flock hands the lock to the next waiter as soon as it is released. The SQLite lock still
    guards correctness; this only makes waiting efficient. A no-op for PostgreSQL and in-memory SQLite.

    The wait is bounded like SQLite's busy timeout: a holder that hangs (stopped, in a debugger,
    deadlocked) would otherwise stall every writer, and the end of runs at exit, for ever."""

    def __init__(self, db_path: str | None) -> None:
        self._path = f"{db_path}.write.lock" if db_path else None
        self._fd: int | None = None  # kept open: the uncontended path is one non-blocking flock
        self._held: int | None = None  # the descriptor that holds the flock while _depth > 0
        self._thread_lock = threading.RLock()
        self._depth = 0

    @contextlib.contextmanager
    def held(self, timeout_s: float) -> Iterator[None]:
        if self._path is None:
            yield
            return
        deadline = time.monotonic() + timeout_s
        if not self._thread_lock.acquire(timeout=timeout_s):
            raise BackendError(
                f"gave up after {timeout_s:g} s waiting for the metadata store's write lock {self._path}: "
                "another thread of this process has held it all that time (a write that hangs or is "
                "deadlocked); retry once it is done"
            )
        try:
            if self._depth == 0:
                self._held = self._flock(self._path, deadline, timeout_s)
            self._depth += 1
        except BaseException:
            self._thread_lock.release()  # or every later write of this store waits on it for ever
            raise
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0 and self._held is not None:
                held, self._held = self._held, None
                fcntl.flock(held, fcntl.LOCK_UN)
                if held != self._fd:
                    os.close(held)
            self._thread_lock.release()

    def _flock(self, path: str, deadline: float, timeout_s: float) -> int:
        try:
            if self._fd is None:
                self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return self._fd
        except BlockingIOError:
            pass
        except OSError as exc:
            raise _unusable(path, exc) from exc
        # Contended. A blocking flock, which the kernel grants as soon as the holder lets go (polling
        # would let a writer that takes it again at once starve the others past the timeout), waited
        # for in a helper thread so that the wait can be given up. On a descriptor of its own: a lock
        # it gets after we gave up is dropped there, never one a later write holds on self._fd.
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise _unusable(path, exc) from exc
        mutex, done, gave_up, failed = threading.Lock(), threading.Event(), [False], list[OSError]()

        def release() -> None:
            # Unlocked explicitly, not just closed: a child forked meanwhile holds a copy of the descriptor.
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

        def wait() -> None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as exc:
                failed.append(exc)
            with mutex:
                if not gave_up[0]:
                    done.set()
                    return
            release()

        def give_up_unless_done() -> bool:
            with mutex:
                gave_up[0] = not done.is_set()
            return gave_up[0]

        try:
            threading.Thread(target=wait, name="yard-write-lock-wait", daemon=True).start()
        except BaseException:
            os.close(fd)
            raise
        try:
            done.wait(max(0.0, deadline - time.monotonic()))
        except BaseException:  # interrupted: the lock, if it came, is no one's
            if not give_up_unless_done():
                release()
            raise
        if give_up_unless_done():
            raise BackendError(
                f"gave up after {timeout_s:g} s waiting for the metadata store's write lock {path}: another "
                "process has held it all that time (one stopped, paused in a debugger or hung mid-write). "
                "`lslocks` names it; resume or end that process, then retry"
            )
        if failed:
            release()
            raise _unusable(path, failed[0])
        return fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _unusable(path: str, exc: OSError) -> BackendError:
    return BackendError(f"cannot take the metadata store's write lock {path}: {exc}")


_STORES: weakref.WeakSet[MetadataStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_STORES):
        store._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)


# Connection settings a PostgreSQL URL gets unless it names them: give up connecting after 10 s, and notice a
# peer that vanished mid-connection within about a minute (keepalive probes, unacknowledged data).
PG_CONNECT_DEFAULTS: dict[str, Any] = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 60_000,  # milliseconds
}


def pg_connect_args(url: str) -> dict[str, Any]:
    """PG_CONNECT_DEFAULTS less what ``url`` names itself. libpq waits for ever by default: a server gone
    behind a partition hung end_run and the exit for minutes (the flush wait is bounded, the connection
    was not)."""
    query = make_url(url).query
    return {k: v for k, v in PG_CONNECT_DEFAULTS.items() if k not in query}


class MetadataStore:
    """Transactions over the metadata database. Use :meth:`write` for anything that changes state."""

    def __init__(
        self, url: str, *, migrate: bool = True, write_lock_timeout_s: float = _BUSY_TIMEOUT_MS / 1000
    ) -> None:
        self.url = _normalise_url(url)
        # How long a SQLite write waits for the writer queue (other threads and processes) before it gives
        # up with BackendError: SQLite's own busy timeout unless a test wants it short.
        if not write_lock_timeout_s > 0:
            raise UsageError(
                f"write_lock_timeout_s must be a positive number of seconds, not {write_lock_timeout_s!r}"
            )
        self.write_lock_timeout_s = write_lock_timeout_s
        self.dialect = make_url(self.url).get_backend_name()
        kwargs: dict[str, Any] = {"future": True}
        if self.dialect == "sqlite":
            path = make_url(self.url).database
            if path and path != ":memory:":
                private_dirs(Path(path).parent)  # 0700, not the umask's mode: others could swap the store
                # It holds wrapped data keys and token hashes: private whatever the umask. An existing file
                # is not opened: that would drop this process's SQLite locks on it (see create_private).
                create_private(path, links=True)  # a yard.db linked elsewhere on purpose is followed
            kwargs["connect_args"] = {"timeout": _BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
        else:
            kwargs["pool_pre_ping"] = True
            kwargs["connect_args"] = pg_connect_args(self.url)
        try:
            self.engine: Engine = create_engine(self.url, **kwargs)
        except Exception as exc:  # missing driver, bad options
            raise BackendError(f"cannot create database engine for {self.safe_url}: {exc}") from exc
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "begin", self._sqlite_begin)
        self._write_engine = self.engine.execution_options(yard_write=True)
        self._writer = _WriterLock(self._sqlite_file())
        self._writing = threading.local()  # .began: this thread's write transaction has begun
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(self._write_engine, expire_on_commit=False)
        _STORES.add(self)
        if migrate:
            try:
                self.migrate()
            except BaseException:
                self.dispose()
                raise

    @property
    def safe_url(self) -> str:
        """The URL for messages: without its password, nor a secret query parameter (libpq takes
        ``?password=`` and ``?sslpassword=`` too, which hide_password leaves)."""
        return redact_url(make_url(self.url).render_as_string(hide_password=True))

    def now(self) -> Any:
        """The clock that rows compared across processes share (heartbeats and their reaper, canary outcomes
        and their window). On PostgreSQL, processes on several hosts write and compare, so both sides use
        the database server's clock (their own may be skewed); a SQLite store is local, and its own
        CURRENT_TIMESTAMP is naive text that compares wrongly with the stored format, so there the local
        UTC clock is the one clock."""
        if self.dialect == "postgresql":
            return func.now()
        return datetime.now(UTC)

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        with self._wrap_errors(), self._read() as session, session.begin():
            yield session

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        """A short write transaction: commits on success, rolls back on any exception."""
        inner = getattr(self._writing, "began", False)
        try:
            with (
                self._writer.held(self.write_lock_timeout_s),
                self._wrap_errors(),
                self._write() as session,
                session.begin(),
            ):
                yield session
        finally:
            if not inner:
                self._writing.began = False

    def _sqlite_begin(self, conn: Any) -> None:
        # Writers take the write lock up front (BEGIN IMMEDIATE): a deferred transaction that later tries to
        # upgrade fails with SQLITE_BUSY without waiting, which is where "database is locked" comes from.
        if not conn.get_execution_options().get("yard_write"):
            conn.exec_driver_sql("BEGIN")
            return
        if getattr(self._writing, "began", False):
            # SQLite lets one writer in at a time: this one would wait for the busy timeout on the write
            # this very thread has open, then fail with "database is locked".
            raise BackendError(
                f"a write to the metadata store {self.safe_url} was started inside another write of this "
                "thread, which SQLite cannot run at once: it would wait for itself. Finish the first write "
                "before the second (a bug in the caller)"
            )
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        self._writing.began = True

    def _sqlite_file(self) -> str | None:
        path = make_url(self.url).database if self.dialect == "sqlite" else None
        return path if path and path != ":memory:" else None

    @contextlib.contextmanager
    def _wrap_errors(self) -> Iterator[None]:
        try:
            yield
        except OperationalError as exc:
            raise BackendError(f"metadata store {self.safe_url} failed: {exc.orig}") from exc

    def dispose(self) -> None:
        self.engine.dispose()
        self._writer.close()

    def _forked(self) -> None:
        """In a forked child: leave the parent's pooled connections to the parent (two processes on one
        connection corrupt it) and open a writer lock of its own; both are made again on first use."""
        self.engine.dispose(close=False)
        self._writing = threading.local()  # a write the forking thread had open is the parent's
        old, self._writer = self._writer, _WriterLock(self._sqlite_file())
        for fd in {old._fd, old._held}:
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)  # the parent's flock stays: it holds its own descriptor

    # -- migrations -----------------------------------------------------------------------------------
    def migrate(self) -> None:
        """Bring the schema to head. Safe when many processes open a brand-new store at once: the
        upgrade runs under a cross-process lock and every waiter re-checks the revision after it."""
        current = self.current_revision()
        # The common case (a store already at head) must not import Alembic: that is most of a CLI
        # command's start-up. The constant is trusted only while it names the newest migration file.
        if current is not None and current == _known_head():
            return
        if current == head_revision():
            return
        if current is not None and not _knows(current):
            # A newer modelyard migrated it: this one would misread what it wrote (moved blobs, new
            # columns) and Alembic could only say that it "can't locate revision".
            raise ConfigError(
                f"metadata store {self.safe_url} has schema revision {current!r}, which this modelyard "
                "does not know: a newer modelyard has upgraded it. Upgrade modelyard on this machine (its "
                "package, or the job image) to use this store"
            )
        with self._migration_lock() as conn:
            _run_alembic_upgrade(conn)

    def current_revision(self) -> str | None:
        try:
            with self.engine.connect() as conn:
                if not inspect(conn).has_table("alembic_version"):
                    return None
                row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
                return row[0] if row else None
        except (OperationalError, DBAPIError) as exc:
            raise BackendError(f"cannot open metadata store {self.safe_url}: {exc.orig}") from exc

    @contextlib.contextmanager
    def _migration_lock(self) -> Iterator[Any]:
        if self.dialect == "sqlite":
            path = make_url(self.url).database
            lock_path = f"{path}.migrate.lock" if path and path != ":memory:" else None
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600) if lock_path else None
            try:
                if fd is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                with self.engine.connect() as conn:
                    yield conn
            finally:
                if fd is not None:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    os.close(fd)
        else:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
                conn.commit()
                try:
                    yield conn
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_MIGRATION_LOCK})
                    conn.commit()


T = TypeVar("T")
# Rows per multi-row statement or IN list: well under SQLite's bound-variable limit for 7 columns.
ROWS = 500


def chunks(items: Sequence[T], size: int = ROWS) -> Iterator[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def insert_for(s: Any) -> Any:
    """The ``insert`` construct of the session's database (PostgreSQL's or SQLite's, both with
    ``on_conflict_do_nothing``/``on_conflict_do_update``), its dialect module imported only when used."""
    if s.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert


# The newest migration (revision ids are the migration files' stems). tests/core/test_db.py asserts it
# equals Alembic's computed head; and _known_head trusts it only while the migration files are exactly
# _MIGRATIONS, so a migration file added under any name costs an Alembic import, never a skipped migration.
HEAD_REVISION = "0013_job_stale_at"
_MIGRATIONS = (
    "0001_core",
    "0002_tracking_data_lineage",
    "0003_blob_packs",
    "0004_jobs",
    "0005_registry",
    "0006_serving",
    "0007_canary_window",
    "0008_job_cluster",
    "0009_condemned_objects",
    "0010_job_cluster_uid",
    "0011_run_stale_at",
    "0012_signed_aliases",
    HEAD_REVISION,
)
_VERSIONS = Path(__file__).with_name("migrations") / "versions"


def _known_head() -> str | None:
    try:
        names = sorted(n for n in os.listdir(_VERSIONS) if n.endswith(".py") and n != "__init__.py")
    except OSError:
        return None
    # Any migration file the constant does not know (whatever its name) means: ask Alembic.
    known = {f"{rev}.py" for rev in _MIGRATIONS}
    return HEAD_REVISION if names and set(names) == known else None


def _alembic_config() -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    return cfg


def _scripts() -> Any:
    """Alembic's view of this installation's migration files."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config())


def head_revision() -> str | None:
    head: str | None = _scripts().get_current_head()
    return head


def _knows(revision: str) -> bool:
    """Whether this installation's migrations include ``revision``."""
    if revision in _MIGRATIONS:
        return True
    try:
        return _scripts().get_revision(revision) is not None
    except Exception:  # alembic's ResolutionError/CommandError for a revision it cannot locate
        return False


def _run_alembic_upgrade(conn: Any) -> None:
    from alembic import command

    cfg = _alembic_config()
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")
    conn.commit()
