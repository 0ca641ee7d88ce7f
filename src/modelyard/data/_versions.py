"""Dataset version services: add, list, show, diff, checkout, get, remove.

A version is a manifest (see _manifest) stored as a blob, plus a profile of its tables (see _profile).
File contents go into the encrypted artifact store, deduplicated by digest. An add walks the tree in
chunks: the stat cache answers for unchanged files, files whose digest the store already holds are not
sealed again, the rest are hashed and encrypted on a thread pool, small files packed into one object
per task (see core/_artifacts: creating one inode per file cost more than hashing and encrypting it).
Published objects are recorded in a spill file rather than in memory, so a 100k-file tree costs no more
memory than a 1k-file one. One flush makes everything durable, then one transaction claims the blobs,
bumps the version number and inserts the version, with one audit record.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import hashlib
import logging
import os
import re
import shutil
import sqlite3
import tempfile
import time
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from modelyard.config import check_name
from modelyard.core import _gc
from modelyard.core._artifacts import ArtifactStore, StagedBlob, check_outside_home
from modelyard.core._blobs import sync_filesystem
from modelyard.core._db import insert_for
from modelyard.core._models import Dataset, DatasetVersion
from modelyard.core._paths import private_dirs, safe_join, temp_prefix
from modelyard.core._platform import Context, Platform, as_utc, utcnow
from modelyard.data import _manifest, _profile
from modelyard.errors import (
    BackendError,
    ConfigError,
    NotFoundError,
    ResidencyError,
    UsageError,
    YardError,
)

log = logging.getLogger("modelyard.data")

Progress = Callable[[int, int], None]  # (files done, bytes done)
_SPEC_RE = re.compile(r"^(?P<name>[^@]+?)(?:@(?P<version>[^@]*))?\Z")
_GET_BATCH = 256
_CLAIM_CHUNK = 1000  # spilled blobs claimed per statement batch (bounds peak memory)


@dataclass(frozen=True)
class VersionInfo:
    name: str
    version: int
    files: int
    bytes: int
    manifest_digest: str
    message: str
    region: str
    created_at: datetime
    created_by: str
    source: str | None = None  # "name@v" this version was derived from (anonymisation)
    profile: dict[str, Any] = field(default_factory=dict, repr=False)
    created: bool = True  # False when add found nothing changed and returned the latest version
    warnings: tuple[str, ...] = ()

    def as_dict(self, *, profile: bool = False) -> dict[str, Any]:
        out = {
            "name": self.name,
            "version": self.version,
            "files": self.files,
            "bytes": self.bytes,
            "manifest_digest": self.manifest_digest,
            "message": self.message,
            "region": self.region,
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
            "source": self.source,
        }
        if profile:
            out["profile"] = self.profile
        return out


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    region: str
    latest: int | None
    versions: int
    created_at: datetime
    created_by: str


@dataclass
class DiffResult:
    a: str
    b: str
    added: list[_manifest.Member] = field(default_factory=list)
    removed: list[_manifest.Member] = field(default_factory=list)
    changed: list[tuple[_manifest.Member, _manifest.Member]] = field(default_factory=list)
    tables: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "added": [vars_(m) for m in self.added],
            "removed": [vars_(m) for m in self.removed],
            "changed": [
                {"path": x.path, "size": [x.size, y.size], "sha256": [x.sha256, y.sha256]}
                for x, y in self.changed
            ],
            "tables": self.tables,
        }


def vars_(m: _manifest.Member) -> dict[str, Any]:
    return {"path": m.path, "size": m.size, "sha256": m.sha256}


# -- names ------------------------------------------------------------------------------------------------


def check_dataset_name(name: str) -> str:
    try:
        check_name(name, "dataset")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if name.endswith("\n"):  # check_name's `$` matches before a final newline: "ds\n" would list as "ds"
        raise UsageError(f"dataset name {name!r} is not valid: it ends with a newline")
    return name


def parse_spec(text: str, *, version_required: bool = True) -> tuple[str, int | None]:
    """``NAME@VERSION`` (or ``NAME`` for the latest, where allowed) -> (name, version or None)."""
    expected = "expected NAME@VERSION such as reviews@3" + ("" if version_required else " or NAME")
    m = _SPEC_RE.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise UsageError(f"{text!r} is not a dataset version; {expected}")
    name = check_dataset_name(m["name"])
    raw = m["version"]
    if raw is None:
        if version_required:
            raise UsageError(f"{text!r} names no version; {expected}")
        return name, None
    if not raw.isascii() or not raw.isdigit() or int(raw) < 1 or len(raw) > 9:
        raise UsageError(f"{text!r} has an invalid version {raw!r}; versions are 1, 2, 3, ...; {expected}")
    return name, int(raw)


def _workers(platform: Platform, workers: int | None) -> int:
    if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool)):
        raise UsageError(f"workers must be a whole number of threads, not {type(workers).__name__}")
    n = workers if workers is not None else platform.settings.data_workers
    return n or os.cpu_count() or 1


def _cache_path(platform: Platform) -> Path:
    return platform.settings.home / "cache" / "stat.db"


# -- lookups ----------------------------------------------------------------------------------------------


def _dataset(s: Session, ctx: Context, name: str) -> Dataset:
    ds = s.execute(
        select(Dataset).where(Dataset.project_id == ctx.project_id, Dataset.name == name)
    ).scalar_one_or_none()
    if ds is None:
        # Another project's dataset reads the same: existence is not leaked across tenants.
        raise NotFoundError(
            f"dataset {name!r} not found in project {ctx.project!r}; list them with `yard data ls`"
        )
    return ds


def _version_row(s: Session, ctx: Context, name: str, version: int | None) -> tuple[Dataset, DatasetVersion]:
    ds = _dataset(s, ctx, name)
    stmt = select(DatasetVersion).where(DatasetVersion.dataset_id == ds.id)
    if version is None:
        stmt = stmt.order_by(DatasetVersion.version.desc()).limit(1)
    else:
        stmt = stmt.where(DatasetVersion.version == version)
    row = s.execute(stmt).scalar_one_or_none()
    if row is None:
        what = f"version {version}" if version is not None else "any version"
        raise NotFoundError(f"dataset {name!r} has no {what}; list its versions with `yard data ls {name}`")
    return ds, row


def _info(s: Session, name: str, row: DatasetVersion, **extra: Any) -> VersionInfo:
    source = None
    if row.source_version_id is not None:
        src = s.execute(
            select(Dataset.name, DatasetVersion.version)
            .join(DatasetVersion, DatasetVersion.dataset_id == Dataset.id)
            .where(DatasetVersion.id == row.source_version_id)
        ).first()
        source = f"{src[0]}@{src[1]}" if src else None
    return VersionInfo(
        name,
        row.version,
        row.files,
        row.bytes,
        row.manifest_digest,
        row.message,
        row.region,
        as_utc(row.created_at),
        row.created_by,
        source,
        _profile.loads(row.profile),
        **extra,
    )


def resolve(platform: Platform, ctx: Context, spec: str, *, version_required: bool = False) -> VersionInfo:
    name, version = parse_spec(spec, version_required=version_required)
    with platform.db.read() as s:
        _, row = _version_row(s, ctx, name, version)
        return _info(s, name, row)


def members(store: ArtifactStore, manifest_digest: str) -> Iterator[_manifest.Member]:
    """A version's members, streamed from its verified manifest."""
    return _manifest.parse_lines(store.iter_bytes(manifest_digest))


# -- add --------------------------------------------------------------------------------------------------


class _Spill:
    """Staged blobs kept in a temp file instead of memory until the transaction claims them.

    One tab-separated line per blob (digest, size, object, key id, wrapped key hex, region, pack offset
    and length or empty): every field is hex, a number or a name this process generated, so none holds
    a tab or newline, and a line costs a third of a JSON one to write and read back."""

    def __init__(self, directory: Path) -> None:
        fd, name = tempfile.mkstemp(prefix=".spill-", dir=directory)
        self.path = Path(name)
        self._f: BinaryIO = os.fdopen(fd, "w+b")
        self.count = 0

    def write(self, b: StagedBlob) -> None:
        po = "" if b.pack_offset is None else b.pack_offset
        pl = "" if b.pack_length is None else b.pack_length
        fields = (b.digest, b.size, b.object_name, b.key_id, b.wrapped_key.hex(), b.region, po, pl)
        self._f.write(("\t".join(map(str, fields)) + "\n").encode())
        self.count += 1

    def chunks(self, size: int = 500) -> Iterator[list[StagedBlob]]:
        self._f.flush()
        self._f.seek(0)
        batch: list[StagedBlob] = []
        for raw in self._f:
            d, n, o, k, w, r, po, pl = raw.decode().rstrip("\n").split("\t")
            batch.append(
                StagedBlob(
                    d, int(n), o, k, bytes.fromhex(w), r, int(po) if po else None, int(pl) if pl else None
                )
            )
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch

    def close(self) -> None:
        self._f.close()
        self.path.unlink(missing_ok=True)


class _NoCache(_manifest.StatCache):
    """For trees modelyard made itself in temp space: nothing to remember, nothing to trust."""

    def __init__(self) -> None:
        self.hits = 0
        self.hashed = 0

    def fill(self, entries: Sequence[_manifest.Entry]) -> list[_manifest.Entry]:
        return list(entries)

    def store(self, entries: Sequence[_manifest.Entry], read_from: int) -> None:
        return None

    def close(self) -> None:
        return None


@dataclass
class _Staging:
    manifest: Path
    manifest_digest: str
    files: int
    bytes: int
    profile: dict[str, Any]
    warnings: list[str]


# Files per sealing task, and so per pack object (publish_files packs a task's small files): enough to
# make objects few and amortise a pool hand-off, few enough to keep both workers busy to the end of a
# walk chunk (_manifest.CHUNK entries) and to bound the temp space of the packs in flight.
_TASK_FILES = 512
_TASK_BYTES = 32 << 20


def _tasks(entries: Sequence[_manifest.Entry]) -> Iterator[list[_manifest.Entry]]:
    task: list[_manifest.Entry] = []
    size = 0
    for e in entries:
        task.append(e)
        size += e.size
        if len(task) >= _TASK_FILES or size >= _TASK_BYTES:
            yield task
            task, size = [], 0
    if task:
        yield task


@dataclass
class _Chunk:
    """One chunk of the walk whose files to seal are in flight on the pool."""

    entries: list[_manifest.Entry]
    misses: list[_manifest.Entry]
    tasks: list[tuple[list[_manifest.Entry], Future[list[StagedBlob]]]]
    read_from: int  # time.time_ns() before any of its files was read


def _profile_sealed(e: _manifest.Entry, fmt: str) -> dict[str, Any]:
    """The profile of the bytes that were sealed: the descriptor must show the inode and stat the walk
    saw (and publish_files checked after reading), before and after it is read. The path alone could
    name a file swapped in since, or a symlink to one outside the tree."""
    changed = UsageError(f"{e.path} changed while it was being versioned; add it again")
    try:
        fd = os.open(e.path, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        raise changed from None
    with os.fdopen(fd, "rb") as f:
        if _manifest.stat_key(os.fstat(fd)) != e.key():
            raise changed
        profile = _profile.profile_file(f, fmt, e.sha256, e.size)
        if _manifest.stat_key(os.fstat(fd)) != e.key():
            raise changed
    return profile


def _stage_tree(
    store: ArtifactStore,
    cache: _manifest.StatCache,
    root: Path,
    region: str,
    spill: _Spill,
    manifest_path: Path,
    *,
    workers: int,
    previous_profile: dict[str, Any],
    progress: Progress | None,
) -> _Staging:
    digest = hashlib.sha256()
    files = total = 0
    profile = _profile.empty()
    warnings: list[str] = []
    seen: set[str] = set()  # digests published by this add (a bounded 32 bytes of hex per new file)
    published_any = False
    old_tables = previous_profile.get("tables", {})
    pending: collections.deque[_Chunk] = collections.deque()

    def finish(chunk: _Chunk) -> None:
        """Record one chunk whose sealing was submitted: its new objects go to the spill file (or are
        deleted when the store or this add already holds their bytes), then its manifest lines."""
        nonlocal files, total, published_any
        results: list[tuple[_manifest.Entry, StagedBlob]] = []
        failure: BaseException | None = None
        for entries, future in chunk.tasks:
            try:
                results += zip(entries, future.result(), strict=True)
            except BaseException as exc:  # the others' objects are still ours to delete
                failure = failure or exc
        handed = 0
        packs: dict[str, bool] = {}  # pack object -> whether any of its blobs was spilled
        try:
            if failure is not None:
                raise failure
            known = store.known_digests([b.digest for _, b in results]) if results else set()
            for e, b in results:
                # publish_files compared each file's descriptor with e.key() after reading it.
                e.sha256 = b.digest
                published_any = True
                keep = b.digest not in known and b.digest not in seen  # else stored, or earlier in this add
                if keep:
                    seen.add(b.digest)
                    spill.write(b)
                if b.pack_offset is not None:
                    # A duplicate inside a pack stays there as dead space; a pack of duplicates only goes.
                    packs[b.object_name] = packs.get(b.object_name, False) or keep
                elif not keep:
                    store.backend.delete(b.object_name)
                handed += 1
            for pack, used in packs.items():
                if not used:
                    store.backend.delete(pack)
        except BaseException:
            doomed = {b.object_name for _, b in results[handed:]}
            doomed.update(pack for pack, used in packs.items() if not used)
            for name in doomed:
                store.backend.delete(name)
            raise
        if chunk.tasks:
            cache.hashed += len(results)
            cache.store(chunk.misses, chunk.read_from)
        lines = b"".join([_manifest.line(e) for e in chunk.entries])
        manifest.write(lines)
        digest.update(lines)
        files += len(chunk.entries)
        total += sum(e.size for e in chunk.entries)
        for e in chunk.entries:
            fmt = _profile.table_format(e.name)
            if fmt is not None:
                old = old_tables.get(e.name)
                if old is not None and old.get("sha256") == e.sha256:
                    profile["tables"][e.name] = old
                    continue
                try:
                    profile["tables"][e.name] = _profile_sealed(e, fmt)
                except ValueError as exc:
                    profile["skipped"][e.name] = str(exc)
                    warnings.append(f"{e.name}: no statistics recorded: {exc}")
        if progress is not None:
            progress(files, total)

    with open(manifest_path, "wb") as manifest, ThreadPoolExecutor(max(1, workers)) as pool:
        try:
            # The pool seals one chunk while this thread walks, looks up and records its neighbours;
            # at most two chunks are in flight, so memory stays flat whatever the tree size.
            for entries in _manifest.chunked(_manifest.walk(root)):
                misses = cache.fill(entries)
                hits = [e for e in entries if e.sha256]
                known = store.known_digests([e.sha256 for e in hits]) if hits else set()
                to_seal = misses + [e for e in hits if e.sha256 not in known and e.sha256 not in seen]
                read_from = time.time_ns()
                tasks = [
                    (
                        task,
                        pool.submit(
                            store.publish_files,
                            [e.path for e in task],
                            region=region,
                            expect=[(e.size, e.mtime_ns, e.ctime_ns, e.ino) for e in task],
                        ),
                    )
                    for task in _tasks(to_seal)
                ]
                pending.append(_Chunk(entries, misses, tasks, read_from))
                while len(pending) > 1:
                    finish(pending.popleft())
            while pending:
                finish(pending.popleft())
        except BaseException:
            # Objects of chunks not recorded yet belong to nobody: delete them (the caller deletes the
            # spilled ones).
            while pending:
                for _, future in pending.popleft().tasks:
                    future.cancel()
                    with contextlib.suppress(BaseException):
                        for object_name in {b.object_name for b in future.result()}:
                            store.backend.delete(object_name)
            raise
    if files == 0:
        raise UsageError(f"{root} holds no files; a dataset version needs at least one file")
    # Not flushed here: the caller flushes once, after the manifest is published too, and before it
    # records anything.
    return _Staging(manifest_path, digest.hexdigest(), files, total, profile, warnings)


def add_version(
    platform: Platform,
    ctx: Context,
    path: str | os.PathLike[str],
    name: str,
    *,
    message: str = "",
    region: str | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
) -> VersionInfo:
    """Version the file or directory ``path`` as the next version of dataset ``name``. If the tree equals
    the latest version, nothing is written and that version is returned (``created`` False)."""
    if not isinstance(path, str | os.PathLike):
        platform.authorize(ctx, "dataset.write", f"dataset:{name}")
        wrong = UsageError(f"the path to version must be a str or os.PathLike, not {type(path).__name__}")
        raise platform.refuse(ctx, "dataset.write", f"dataset:{name}", wrong)
    return _add(
        platform, ctx, Path(path), name, message=message, region=region, progress=progress, workers=workers
    )


def _add(
    platform: Platform,
    ctx: Context,
    root: Path,
    name: str,
    *,
    message: str,
    region: str | None,
    progress: Progress | None = None,
    workers: int | None = None,
    source: tuple[int, str] | None = None,
    use_cache: bool = True,
) -> VersionInfo:
    resource = f"dataset:{name}"
    platform.authorize(ctx, "dataset.write", resource)
    try:
        check_dataset_name(name)
        if not isinstance(message, str) or len(message) > 10_000:
            raise UsageError("the message must be text of at most 10,000 characters")
        # Shown raw by `yard data show` to other users' terminals (escape sequences), stored in text
        # columns (PostgreSQL refuses NUL, neither stores a lone surrogate: a non-UTF-8 argument byte).
        bad = next((c for c in message if unicodedata.category(c) in ("Cc", "Cs") and c not in "\n\t"), None)
        if bad is not None:
            raise UsageError(
                f"the message holds the control or non-text character U+{ord(bad):04X}; "
                "write it as text (new lines and tabs are fine)"
            )
        store = platform.artifacts
        data_region = region or ctx.region
        if data_region != ctx.region or data_region != store.region:
            raise ResidencyError(
                f"dataset {name!r} of project {ctx.project!r} (region {ctx.region}) cannot hold data of "
                f"region {data_region!r} in the artifact store of region {store.region!r}; use a store "
                "and project in that region, or keep the data in-region"
            )
        if not os.path.lexists(root):
            raise UsageError(f"{root} does not exist; give a file or directory to version")
        n_workers = _workers(platform, workers)
        if source is None:  # anonymise adds its own checkout, made in the store's staging folder
            check_outside_home(platform, root, remedy="version the data from a folder outside it")
        with platform.db.read() as s:
            latest = None
            with contextlib.suppress(NotFoundError):
                latest = _info(s, name, _version_row(s, ctx, name, None)[1])
    except (UsageError, ResidencyError) as exc:
        raise platform.refuse(ctx, "dataset.write", resource, exc) from None

    since = _gc.generation(platform)  # before the add deduplicates against the stored digests
    try:
        cache: _manifest.StatCache = _manifest.StatCache(_cache_path(platform)) if use_cache else _NoCache()
    except (OSError, sqlite3.Error) as exc:  # a file where its folder belongs, no write access, not SQLite
        raise platform.refuse(ctx, "dataset.write", resource, _unusable_cache(platform, exc)) from None
    staging_dir: Path | None = None
    work: Path | None = None
    try:  # the cleanup below is not armed yet: a failure here must remove the temp folder itself
        staging_dir = store.backend.staging_dir()
        work = Path(tempfile.mkdtemp(prefix="data-add-", dir=staging_dir))
        spill = _Spill(work)
    except BaseException as exc:
        cache.close()
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
        if isinstance(exc, YardError):
            raise platform.refuse(ctx, "dataset.write", resource, exc) from None
        if isinstance(exc, OSError):
            where = work or staging_dir or "the artifact store's staging folder"
            failure = BackendError(
                f"versioning {root} failed: cannot make its temp files in {where}: {exc.strerror or exc}; "
                "free space in (or fix the permissions of) the artifact store's staging folder"
            )
            raise platform.refuse(ctx, "dataset.write", resource, failure) from exc
        raise
    manifest_staged: StagedBlob | None = None
    try:
        try:
            staging = _stage_tree(
                store,
                cache,
                root,
                data_region,
                spill,
                work / "manifest.jsonl",
                workers=n_workers,
                previous_profile=latest.profile if latest else {},
                progress=progress,
            )
        except BaseException as exc:
            # Nothing claimed them, so nothing else can refer to these uniquely named objects.
            for chunk in spill.chunks():
                for object_name in {b.object_name for b in chunk}:
                    store.backend.delete(object_name)
            if isinstance(exc, YardError):
                raise platform.refuse(ctx, "dataset.write", resource, exc) from None
            if isinstance(exc, sqlite3.Error):  # the stat cache's (SQLAlchemy wraps the catalog's)
                unusable = _unusable_cache(platform, exc)
                raise platform.refuse(ctx, "dataset.write", resource, unusable) from None
            if isinstance(exc, OSError):
                failure = BackendError(f"versioning {root} failed: {exc}")
                raise platform.refuse(ctx, "dataset.write", resource, failure) from exc
            raise
        if latest is not None and latest.manifest_digest == staging.manifest_digest and source is None:
            _discard(store, spill)
            return dataclasses.replace(latest, created=False, warnings=tuple(staging.warnings))
        try:
            with open(staging.manifest, "rb") as f:
                manifest_staged = store.stage(f, region=data_region, durable=False)
            # One flush for the whole add (its objects and the manifest): nothing is recorded before
            # every object it refers to is durable.
            store.backend.sync()
        except BaseException as exc:
            if manifest_staged is not None:
                store.discard([manifest_staged], committed=False, claimed=set())
            _discard(store, spill)
            if isinstance(exc, YardError):  # audited like a failure while staging the files
                raise platform.refuse(ctx, "dataset.write", resource, exc) from None
            raise
        return _record(
            platform, ctx, name, data_region, message, staging, spill, manifest_staged, source, since
        )
    finally:
        cache.close()
        spill.close()
        shutil.rmtree(work, ignore_errors=True)


def _discard(store: ArtifactStore, spill: _Spill, *, xid: str | None = None) -> None:
    """Delete this add's objects that no row refers to, chunk by chunk from the spill file (memory stays
    flat however many blobs lost a race). Asking the store is right whatever the commit's outcome: the
    object names are this add's own, so only its committed claims can refer to them."""
    for chunk in spill.chunks():
        store.discard(chunk, committed=False, claimed=set(), xid=xid)


def _ensure_dataset(s: Session, ctx: Context, name: str, region: str) -> int:
    s.execute(
        insert_for(s)(Dataset)
        .values(
            project_id=ctx.project_id,
            name=name,
            region=region,
            last_version=0,
            created_at=utcnow(),
            created_by=ctx.user,
        )
        .on_conflict_do_nothing(index_elements=["project_id", "name"])
    )
    ds = _dataset(s, ctx, name)
    if ds.region != region:
        raise ResidencyError(f"dataset {name!r} belongs to region {ds.region!r}, not {region!r}")
    return ds.id


def _record(
    platform: Platform,
    ctx: Context,
    name: str,
    region: str,
    message: str,
    staging: _Staging,
    spill: _Spill,
    manifest_staged: StagedBlob,
    source: tuple[int, str] | None,
    since: int,
) -> VersionInfo:
    store = platform.artifacts
    detail: dict[str, Any] = {
        "files": staging.files,
        "bytes": staging.bytes,
        "manifest": staging.manifest_digest,
        "new_objects": spill.count,
    }
    if source is not None:
        detail["source"] = source[1]
    committed = False
    xid: str | None = None
    lost = 0  # blobs another writer stored first: their objects here are unreferenced
    manifest_claimed: set[str] = set()
    now = utcnow()
    try:
        with platform.mutate(ctx, "dataset.write", f"dataset:{name}", detail) as s:
            collected = _gc.fence(s, since)
            manifest_claimed = store.claim(s, [manifest_staged], collected=collected)
            for chunk in spill.chunks(_CLAIM_CHUNK):
                lost += len(chunk) - len(store.claim(s, chunk, collected=collected))
            if collected:  # the files it found stored may be gone: the manifest names every one
                with open(staging.manifest, "rb") as f:
                    named = {m.sha256 for m in _manifest.parse_lines(iter(lambda: f.read(1 << 20), b""))}
                _gc.require_stored(s, named | {staging.manifest_digest}, f"dataset {name}")
            xid = store.transaction_id(s)
            dataset_id = _ensure_dataset(s, ctx, name, region)
            # The row lock of this UPDATE serialises concurrent adds: numbers have no gaps or duplicates.
            version = s.execute(
                update(Dataset)
                .where(Dataset.id == dataset_id)
                .values(last_version=Dataset.last_version + 1)
                .returning(Dataset.last_version)
            ).scalar_one()
            row = DatasetVersion(
                dataset_id=dataset_id,
                version=version,
                manifest_digest=staging.manifest_digest,
                files=staging.files,
                bytes=staging.bytes,
                message=message,
                region=region,
                profile=_profile.dumps(staging.profile),
                source_version_id=source[0] if source else None,
                created_at=now,
                created_by=ctx.user,
            )
            s.add(row)
            s.flush()
            detail["version"] = version  # the audit record, written at the end of the block, names it
            if source is not None:
                from modelyard.tracking._lineage import add_edges, dataset_ref

                add_edges(s, ctx, [(source[1], dataset_ref(name, version), "anonymized")])
            info = _info(s, name, row, warnings=tuple(staging.warnings))
        committed = True
    finally:
        try:
            store.discard([manifest_staged], committed=committed, claimed=manifest_claimed, xid=xid)
            if lost or not committed:
                _discard(store, spill, xid=xid)
        except Exception as exc:
            if not committed:
                raise
            # The version is recorded: a failed clean-up leaves unreferenced objects (harmless), not a
            # failed add. Say so instead of reporting an error for data that was stored.
            log.warning("dataset %s: version stored, but removing unreferenced objects failed: %s", name, exc)
    return info


# -- read -------------------------------------------------------------------------------------------------


def list_datasets(platform: Platform, ctx: Context) -> list[DatasetInfo]:
    from sqlalchemy import func

    platform.authorize(ctx, "dataset.read", f"project:{ctx.project}")
    with platform.db.read() as s:
        rows = s.execute(
            select(Dataset, func.max(DatasetVersion.version), func.count(DatasetVersion.id))
            .outerjoin(DatasetVersion, DatasetVersion.dataset_id == Dataset.id)
            .where(Dataset.project_id == ctx.project_id)
            .group_by(Dataset.id)
            .order_by(Dataset.name)
        ).all()
    return [
        DatasetInfo(d.name, d.region, latest, n, as_utc(d.created_at), d.created_by) for d, latest, n in rows
    ]


def list_versions(platform: Platform, ctx: Context, name: str) -> list[VersionInfo]:
    check_dataset_name(name)
    platform.authorize(ctx, "dataset.read", f"dataset:{name}")
    with platform.db.read() as s:
        ds = _dataset(s, ctx, name)
        rows = s.execute(
            select(DatasetVersion).where(DatasetVersion.dataset_id == ds.id).order_by(DatasetVersion.version)
        ).scalars()
        return [_info(s, name, r) for r in rows]


def show(platform: Platform, ctx: Context, spec: str) -> VersionInfo:
    """One version (``NAME@V``, or ``NAME`` for the latest) with its profile."""
    parse_spec(spec, version_required=False)
    platform.authorize(ctx, "dataset.read", f"dataset:{spec}")
    return resolve(platform, ctx, spec)


def files(platform: Platform, ctx: Context, spec: str) -> Iterator[_manifest.Member]:
    """The members of a version (path, size, SHA-256) in path order, streamed from its verified manifest."""
    info = show(platform, ctx, spec)
    return members(platform.artifacts, info.manifest_digest)


def load_profile(platform: Platform, ctx: Context, spec: str) -> dict[str, Any]:
    """The profile of a version (format in modelyard.data._profile): the drift reference."""
    return show(platform, ctx, spec).profile


def diff(platform: Platform, ctx: Context, a: str, b: str) -> DiffResult:
    """Files added, removed and changed from version ``a`` to ``b``, and schema/statistics changes of
    their tables; the manifests are merged as streams, so memory does not grow with the tree."""
    for spec in (a, b):
        parse_spec(spec)
    platform.authorize(ctx, "dataset.read", f"dataset:{a}")
    va, vb = (
        resolve(platform, ctx, a, version_required=True),
        resolve(platform, ctx, b, version_required=True),
    )
    store = platform.artifacts
    result = DiffResult(f"{va.name}@{va.version}", f"{vb.name}@{vb.version}")
    for kind, x, y in merge(members(store, va.manifest_digest), members(store, vb.manifest_digest)):
        if kind == "added":
            assert y is not None
            result.added.append(y)
        elif kind == "removed":
            assert x is not None
            result.removed.append(x)
        elif kind == "changed":
            assert x is not None and y is not None
            result.changed.append((x, y))
    result.tables = _profile.compare(va.profile, vb.profile)
    return result


def merge(
    xs: Iterator[_manifest.Member], ys: Iterator[_manifest.Member]
) -> Iterator[tuple[str, _manifest.Member | None, _manifest.Member | None]]:
    """Streaming merge of two sorted manifests: ("added"|"removed"|"changed"|"same", a, b)."""
    x, y = next(xs, None), next(ys, None)
    while x is not None or y is not None:
        if y is None or (x is not None and x.path < y.path):
            yield "removed", x, None
            x = next(xs, None)
        elif x is None or y.path < x.path:
            yield "added", None, y
            y = next(ys, None)
        else:
            same = x.sha256 == y.sha256 and x.size == y.size
            yield ("same" if same else "changed"), x, y
            x, y = next(xs, None), next(ys, None)


# -- checkout ---------------------------------------------------------------------------------------------


def _check_dest(dest: Path) -> None:
    if dest.is_symlink():
        raise UsageError(f"{dest} is a symbolic link; give a real directory to check out into")
    if dest.exists():
        if not dest.is_dir():
            raise UsageError(f"{dest} exists and is not a directory; give a new or empty directory")
        stale = _stale_temps(dest, dest.name)
        if any(p not in stale for p in dest.iterdir()):
            if stale:
                raise UsageError(
                    f"{dest} holds part of a checkout that was interrupted (what it had not moved in yet is "
                    f"in {stale[0].name}); empty {dest} and check out again"
                )
            raise UsageError(f"{dest} is not empty; check out into a new or empty directory")


def _stale_temps(where: Path, name: str) -> list[Path]:
    """Temp directories that checkouts into ``where/name`` (or into ``where`` itself, whose name is
    ``name``) left when they were killed: a live checkout holds an flock on its own (see _hold)."""
    # Exactly mkdtemp's names (8 characters of [a-z0-9_] after the prefix): a user's own directory that
    # merely starts like one is not removed.
    ours = re.compile(re.escape(f"{temp_prefix(name)}checkout-") + r"[a-z0-9_]{8}")
    found = []
    with os.scandir(where) as it:
        for e in it:
            if ours.fullmatch(e.name) and e.is_dir(follow_symlinks=False) and not _held(e.path):
                found.append(Path(e.path))
    return found


def _hold(path: Path) -> int:
    """Lock ``path`` (a directory) for as long as the returned descriptor is open, or the process lives."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # just made, so nobody else holds it
    except BaseException:  # ENOLCK on a filesystem without locks: the descriptor is not the caller's yet
        os.close(fd)
        raise
    return fd


def _held(path: str) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return True  # gone meanwhile, or not ours to judge
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # releases the lock taken just to test it
    return False


def _remove_stale(path: Path) -> None:
    """Remove a killed checkout's temp directory, holding its lock meanwhile: a checkout that made it just
    now and locks it only next (see _held_temp) fails to, and makes another, rather than writing into a
    tree removed under it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return  # gone meanwhile
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return  # a live checkout holds it now
        shutil.rmtree(path, ignore_errors=True)
    finally:
        os.close(fd)


_TEMP_TRIES = 5  # temp directories a checkout makes before it gives up on others sweeping them


def _held_temp(dest: Path, where: Path) -> tuple[Path, int]:
    """A new temp directory for a checkout into ``dest``, made in ``where`` and locked (see _hold). It is
    unlocked for a moment after it is made, when another checkout into ``dest`` may sweep it as stale: then
    another is made."""
    for _ in range(_TEMP_TRIES):
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f"{temp_prefix(dest.name)}checkout-", dir=where))
        except OSError as exc:
            raise _unusable_dest(dest, exc) from None
        try:
            held = _hold(tmp)
        except (FileNotFoundError, BlockingIOError):  # swept, or a sweep holds it while it removes it
            shutil.rmtree(tmp, ignore_errors=True)
            continue
        except BaseException as exc:  # ENOLCK: a filesystem without flock
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, OSError):
                raise _unlockable(dest, tmp, exc) from None
            raise
        try:  # swept between being opened and being locked: the lock is on a removed directory
            if os.path.samestat(os.stat(tmp, follow_symlinks=False), os.fstat(held)):
                return tmp, held
        except FileNotFoundError:
            pass
        os.close(held)
    raise UsageError(
        f"cannot check out into {dest}: another checkout into it removed this one's temporary directory in "
        f"{where} {_TEMP_TRIES} times, as if it were left by a killed checkout; retry once that one is done"
    )


def checkout(
    platform: Platform,
    ctx: Context,
    spec: str,
    dest: str | os.PathLike[str],
    *,
    progress: Progress | None = None,
    workers: int | None = None,
) -> VersionInfo:
    """Write version ``spec`` into the new (or empty) directory ``dest``, verifying every file's digest.
    Files go to a temp directory that is moved into place only once all are verified and flushed; on any
    failure it is removed, so ``dest`` never holds an unverified tree. A new ``dest`` is the temp
    directory renamed (atomic). An existing empty one is filled in place instead of replaced: it may be
    the shell's working directory (``checkout ds@1 .``), a mount point, or have its own owner and mode;
    the temp directory is made inside it and its top-level entries are renamed into it one by one.
    A checkout that was killed leaves its temp directory, which the next checkout into ``dest`` removes
    (or, if some entries had been moved in already, names when it refuses ``dest``)."""
    parse_spec(spec)
    platform.authorize(ctx, "dataset.read", f"dataset:{spec}")
    info = resolve(platform, ctx, spec, version_required=True)
    if not isinstance(dest, str | os.PathLike):
        raise UsageError(
            f"the directory to check out into must be a str or os.PathLike, not {type(dest).__name__}"
        )
    n_workers = _workers(platform, workers)
    dest = Path(dest).absolute()  # "." has no parent to make the temp directory in
    try:  # checking dest can fail too: a parent this user may not search, a dest it may not read
        _check_dest(dest)
        existing = dest.is_dir()
        where = dest if existing else dest.parent
        where.mkdir(parents=True, exist_ok=True)
        for stale in _stale_temps(where, dest.name):  # left by a killed checkout into dest
            _remove_stale(stale)
    except OSError as exc:
        raise _unusable_dest(dest, exc) from None
    tmp, held = _held_temp(dest, where)  # the cleanup below is not armed yet: it removes its own on failure
    moved: list[Path] = []
    try:
        if _case_insensitive(tmp):
            fold = _full_fold if _folds_fully(tmp) else _simple_fold
            _check_case(members(platform.artifacts, info.manifest_digest), spec, dest, fold)
        _materialise(platform.artifacts, info, tmp, n_workers, progress)
        sync_filesystem(tmp)
        try:
            if existing:
                _fill(dest, tmp, moved)
            else:
                _check_dest(dest)
                os.rename(tmp, dest)  # onto a directory made meanwhile only if that one is empty
        except OSError as exc:  # another checkout filled dest between the check and the rename
            raise UsageError(f"cannot check out into {dest}: {exc.strerror or exc}") from None
    except BaseException:
        for path in moved:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(held)
    return info


def _failure(exc: OSError, path: Path) -> tuple[Path, str]:
    """The path an OSError from making or using ``path`` is about, and why: mkdir below a file says "File
    exists" or "Not a directory" of a path that is not there, so that file is named instead."""
    failed = Path(exc.filename) if isinstance(exc.filename, str) else path
    if isinstance(exc, FileExistsError | NotADirectoryError):
        file = next((p for p in (failed, *failed.parents) if p.exists() and not p.is_dir()), None)
        if file is not None:
            return file, "it is a file, not a directory"
    return failed, exc.strerror or str(exc)


def _unusable_dest(dest: Path, exc: OSError) -> UsageError:
    failed, why = _failure(exc, dest)
    if failed.name.startswith(temp_prefix(dest.name)):  # our temp directory: name where it was to be made
        failed = failed.parent
    return UsageError(
        f"cannot check out into {dest}: {'' if failed == dest else f'{failed}: '}{why}; give a new or empty "
        "directory that this user can read and write"
    )


def _unlockable(dest: Path, tmp: Path, exc: OSError) -> UsageError:
    """A checkout's temp directory that cannot be locked (see _hold): ENOLCK where the filesystem has no
    flock (some network filesystems), not a permission problem, so _unusable_dest's remedy would mislead."""
    return UsageError(
        f"cannot check out into {dest}: cannot lock its temporary directory in {tmp.parent} "
        f"({exc.strerror or exc}); a checkout locks it so that another checkout does not remove it as "
        "stale: check out onto a filesystem with file locks (flock), such as a local disk"
    )


def _same_file(
    directory: Path, suffix: str, other_name: Callable[[str], str], *, unmakeable: bool | None = None
) -> bool:
    """Probe ``directory``'s filesystem: a temp file named ``.yard-case-<random><suffix>`` (mkstemp's random
    part is lower case) is made, then looked up as ``other_name(its name)``; True if that finds the same
    file. The probe is removed. A probe that cannot be made raises, or answers ``unmakeable`` if given."""
    try:
        fd, path = tempfile.mkstemp(prefix=".yard-case-", suffix=suffix, dir=directory)
    except (OSError, UnicodeError):
        if unmakeable is None:
            raise
        return unmakeable
    try:
        try:
            other = os.lstat(os.path.join(directory, other_name(os.path.basename(path))))
        except FileNotFoundError:
            return False
        return os.path.samestat(os.fstat(fd), other)
    finally:
        os.close(fd)
        os.unlink(path)


def _case_insensitive(directory: Path) -> bool:
    """True if ``directory``'s filesystem takes names that differ only in case for the same file (macOS and
    Windows by default): a file made with a lower-case name is found under its upper-case one."""
    return _same_file(directory, "", str.upper)


def _folds_fully(directory: Path) -> bool:
    """True if ``directory``'s (case-insensitive) filesystem folds case fully, "ß" as "ss": APFS and ext4's
    casefold do (Unicode CaseFolding.txt C+F, then NFD); NTFS and HFS+ fold one character to one, so there
    "Straße" and "STRASSE" are two names. Probed like _case_insensitive: a temp file named with "ß" is
    looked up with "ss". A filesystem that cannot hold the name counts as folding fully (refuse more)."""
    return _same_file(directory, "\u00df", lambda name: name[:-1] + "ss", unmakeable=True)


# Both folds compare as Unicode's canonical caseless match does, NFD(fold(NFD(name))); an ASCII name, the
# common case, is just lower-cased.
def _full_fold(name: str) -> str:
    if name.isascii():
        return name.lower()
    return unicodedata.normalize("NFD", unicodedata.normalize("NFD", name).casefold())


def _simple_fold(name: str) -> str:
    """Unicode simple case folding (CaseFolding.txt C+S: one character to one). NFD too, as HFS+ normalises;
    NTFS does not, so a pair differing only there is refused needlessly: rare, and better than a lost file.
    Python has only full folding (str.casefold, C+F); the two differ only where full folding maps a
    character to several ("ß" to "ss", "İ" to "i̇", "ﬁ" to "fi"): there the S mapping, where there is one,
    is the character's lower case ("ẞ" to "ß", "ᾈ" to "ᾀ"), and without one the character stays."""
    if name.isascii():
        return name.lower()
    out = []
    for c in unicodedata.normalize("NFD", name):
        folded = c.casefold()
        if len(folded) != 1:
            folded = c.lower() if len(c.lower()) == 1 else c
        out.append(folded)
    return unicodedata.normalize("NFD", "".join(out))


def _check_case(
    version: Iterator[_manifest.Member], spec: str, dest: Path, fold: Callable[[str], str]
) -> None:
    """Refuse a version holding two names (of files or of their directories) that ``fold`` makes equal: a
    case-insensitive filesystem would silently hold one where the version has two."""
    seen: dict[str, str] = {}
    for m in version:
        parts = m.path.split("/")
        for i in range(1, len(parts) + 1):
            name = "/".join(parts[:i])
            other = seen.setdefault(fold(name), name)
            if other != name:
                raise UsageError(
                    f"{spec} holds both {other!r} and {name!r}, which name the same file on the "
                    f"case-insensitive filesystem of {dest}; check it out onto a case-sensitive one"
                )


def _fill(dest: Path, tmp: Path, moved: list[Path]) -> None:
    """Move the verified entries of ``tmp`` (inside ``dest``) into ``dest``, then remove ``tmp``."""
    if any(p.name != tmp.name for p in dest.iterdir()):
        raise UsageError(f"{dest} is not empty; check out into a new or empty directory")
    with os.scandir(tmp) as it:
        for entry in it:
            os.rename(entry.path, dest / entry.name)
            moved.append(dest / entry.name)
    tmp.rmdir()
    sync_filesystem(dest)  # the renames


def _materialise(
    store: ArtifactStore, info: VersionInfo, root: Path, workers: int, progress: Progress | None
) -> None:
    files = total = 0
    pending: list[Future[list[int]]] = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        try:
            batch: list[tuple[str, Path]] = []

            def drain(limit: int) -> None:
                nonlocal files, total
                while len(pending) > limit:
                    sizes = pending.pop(0).result()
                    files += len(sizes)
                    total += sum(sizes)
                    if progress is not None:
                        progress(files, total)

            for m in members(store, info.manifest_digest):
                batch.append((m.sha256, safe_join(root, m.path)))
                if len(batch) >= _GET_BATCH:
                    pending.append(pool.submit(store.get_many, batch, sync=False))
                    batch = []
                    drain(2 * workers)
            if batch:
                pending.append(pool.submit(store.get_many, batch, sync=False))
            drain(0)
        except BaseException:
            for f in pending:
                f.cancel()
            raise
    if (files, total) != (info.files, info.bytes):
        raise BackendError(
            f"checkout of {info.name}@{info.version} wrote {files} files ({total} bytes), but the version "
            f"records {info.files} files ({info.bytes} bytes); its metadata is inconsistent"
        )


def _cache_dir(platform: Platform, ctx: Context, info: VersionInfo) -> Path:
    return platform.settings.home / "cache" / "data" / ctx.project / f"{info.name}@{info.version}"


def verify_tree(store: ArtifactStore, cache: _manifest.StatCache, root: Path, manifest_digest: str) -> bool:
    """True if ``root`` holds exactly the version's files (names, sizes, digests; stat cache first)."""
    expected = members(store, manifest_digest)
    try:
        for chunk in _manifest.chunked(_manifest.walk(root)):
            read_from = time.time_ns()
            for e in cache.fill(chunk):
                e.sha256, _ = _manifest.hash_file(e.path)
                cache.hashed += 1
            cache.store(chunk, read_from)
            for e in chunk:
                m = next(expected, None)
                if m is None or (m.path, m.size, m.sha256) != (e.name, e.size, e.sha256):
                    return False
    except (UsageError, OSError):
        return False
    return next(expected, None) is None


def get(platform: Platform, ctx: Context, spec: str) -> Path:
    """A verified local copy of version ``spec`` (``NAME@V`` or ``NAME`` for the latest), checked out into
    the cache under $YARD_HOME/cache/data and reused while it still matches the manifest."""
    parse_spec(spec, version_required=False)
    platform.authorize(ctx, "dataset.read", f"dataset:{spec}")
    info = resolve(platform, ctx, spec)
    target = _cache_dir(platform, ctx, info)
    with contextlib.ExitStack() as held:
        try:
            private_dirs(target.parent)  # cache/data/PROJECT: each level 0700, whatever the umask
            # One get of a version at a time (threads and processes): otherwise one that found the copy bad
            # could delete the fresh copy another had just made and returned in its place.
            held.enter_context(_copy_lock(target))
        except OSError as exc:
            raise _unusable_cache(platform, exc) from None
        try:
            with _manifest.StatCache(_cache_path(platform)) as cache:
                if target.is_dir() and verify_tree(platform.artifacts, cache, target, info.manifest_digest):
                    return target
            _remove_copy(target)
        except (OSError, sqlite3.Error) as exc:  # sqlite3: the stat cache in a folder this user cannot write
            raise _unusable_cache(platform, exc) from None
        # checkout looks the version up again, now under the lock: a remove that committed since the lookup
        # above may have found no copy to delete (or deleted the old one), and this get must not then make
        # one; a remove committing after it waits for the lock and deletes the copy made here.
        checkout(platform, ctx, f"{info.name}@{info.version}", target)
    return target


@contextlib.contextmanager
def _copy_lock(target: Path) -> Iterator[None]:
    """Hold the lock of the cached copy ``target`` (threads and processes): ``get`` holds it while it checks
    or makes the copy, ``remove`` while it deletes it. OSError if the lock file cannot be opened; ConfigError
    if its filesystem has no file locks."""
    path = _copy_lock_path(target)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:  # ENOLCK: a home on a filesystem without file locks; was a raw OSError
            raise ConfigError(
                f"cannot use the dataset cache: cannot lock {path} ({exc.strerror or exc}); the cache "
                "needs file locks (flock): set YARD_HOME to a home on a filesystem that has them, such as a "
                "local disk"
            ) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _copy_lock_path(target: Path) -> Path:
    return target.parent / f".{target.name}.lock"


def _remove_copy(target: Path) -> None:
    """Delete the cached copy ``target`` (a directory, or whatever else is in its place), if any."""
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif target.exists() or target.is_symlink():
        target.unlink()


def _unusable_cache(platform: Platform, exc: OSError | sqlite3.Error) -> ConfigError:
    cache = platform.settings.home / "cache"
    failed, why = _failure(exc, cache) if isinstance(exc, OSError) else (_cache_path(platform), str(exc))
    return ConfigError(
        f"cannot use the dataset cache: {failed}: {why}; make {cache} a directory this user can write (it "
        "holds only copies and may be deleted), or set YARD_HOME to a home it owns"
    )


# -- remove -----------------------------------------------------------------------------------------------


def remove(platform: Platform, ctx: Context, spec: str, *, force: bool = False) -> VersionInfo:
    """Delete a version's record (its number is never reused). Refused while a registered model depends on
    it (a ``model:`` reference downstream in the lineage graph), unless an admin passes ``force``."""
    from modelyard.tracking._lineage import dataset_ref, downstream_refs

    name, version = parse_spec(spec)
    assert version is not None
    action = "dataset.delete.force" if force else "dataset.delete"
    detail: dict[str, Any] = {}
    with platform.mutate(ctx, action, dataset_ref(name, version), detail) as s:
        _, row = _version_row(s, ctx, name, version)
        # Locked before its dependents are read: a model registering on it (which locks it FOR SHARE) either
        # commits first, and is seen below, or waits and finds it gone.
        s.execute(select(DatasetVersion.id).where(DatasetVersion.id == row.id).with_for_update())
        info = _info(s, name, row)
        models = sorted(
            r
            for r in downstream_refs(s, ctx.project_id, dataset_ref(name, version))
            if r.startswith("model:")
        )
        detail["models"] = models
        if models and not force:
            raise UsageError(
                f"{name}@{version} is used by registered model(s) {', '.join(models[:5])}; "
                "an admin can delete it anyway with --force"
            )
        s.delete(row)
    problem = _drop_cached_copy(platform, ctx, info)
    return dataclasses.replace(info, warnings=(problem,)) if problem else info


def _drop_cached_copy(platform: Platform, ctx: Context, info: VersionInfo) -> str | None:
    """Delete this home's copy of a removed version that ``get`` made (plain files, maybe personal data),
    under the lock ``get`` holds while it checks out; None when done, else what went wrong (the removal
    stands). Copies in other homes are beyond reach."""
    target = _cache_dir(platform, ctx, info)
    try:
        if not (_copy_lock_path(target).exists() or target.exists() or target.is_symlink()):
            return None  # never fetched here; a get starting now finds the version gone
        with _copy_lock(target):  # after a get mid-checkout, whose copy this then deletes
            _remove_copy(target)
    except OSError as exc:
        failed, why = _failure(exc, target)
        return f"could not delete the cached copy {target} ({failed}: {why}); delete it by hand"
    except ConfigError as exc:  # no file locks
        return f"could not delete the cached copy {target}: {exc}; delete it by hand"
    return None
