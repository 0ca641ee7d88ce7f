"""Garbage collection of the artifact store: ``yard gc`` deletes the blobs that nothing refers to.

Blobs are deduplicated by digest across projects, so deleting a dataset version, a run or an artifact
reference removes only rows; the blobs stay until a collection finds that nothing holds them. Holders
are the rows that name a digest (artifact and run-artifact references, dataset and model version
manifests, digests kept in ``meta`` such as a project's PII salt) and the contents of every manifest (a
dataset's files; a model's files, evaluation report and recipe). Manifests are scanned for every run of
64 hex digits rather than parsed by format: a scan that reads too much keeps a blob, never loses one.

Deleting a blob row deletes its wrapped data key, so the live store can no longer decrypt the bytes
(crypto-shredding), even those of a packed blob that stay in a pack object still holding live blobs.
Copies of the key outlive the commit where the database keeps old pages (backups, SQLite's free pages and
WAL, PostgreSQL's dead tuples until VACUUM): erasure is complete once those are gone too. Objects are
deleted after the rows commit: a failed delete leaves undecryptable bytes behind, never a row without
its object.

Races. Writers deduplicate: an add that finds a digest stored does not upload it again, and later records
a manifest naming it. Had a collection deleted that blob in between, the version would name bytes that
no longer exist. So every recording transaction opens with :func:`fence` (the collector's lock, shared:
a PostgreSQL advisory lock; SQLite serialises writers anyway) and compares the collection generation with
the one it read before it deduplicated. Unchanged: nothing was collected meanwhile. Changed: before it
commits, :func:`require_stored` checks that every digest it names is stored, else it fails and records
nothing (run again: the next run uploads the bytes). A collection bumps the generation under the lock held
exclusively, then re-checks its candidates against everything committed since it marked them. Blobs
younger than ``min_age`` are never collected, a second fence for writers that claim a blob in one
transaction and name it in the next.

Then objects no row names (orphans) are condemned and deleted, and packs that are mostly dead are rewritten
with their live blobs (repacking); see the functions below and docs/architecture.md.
"""

from __future__ import annotations

import contextlib
import logging
import re
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Select, Table, bindparam, delete, func, select, text, update
from sqlalchemy.orm import Session

from modelyard.core._blobs import BlobBackend, StagingWriter, is_object_name
from modelyard.core._checkpoints import checkpoints_dir, remove_run_checkpoints
from modelyard.core._db import ROWS, MetadataStore, chunks, insert_for
from modelyard.core._models import (
    Artifact,
    Blob,
    CondemnedObject,
    DatasetVersion,
    Meta,
    ModelVersion,
    Run,
    RunArtifact,
)
from modelyard.core._platform import Context, Platform, as_utc, utcnow
from modelyard.errors import (
    BackendError,
    CollectedMeanwhileError,
    IntegrityError,
    NotFoundError,
    UsageError,
    YardError,
)

if TYPE_CHECKING:
    from modelyard.core._artifacts import ArtifactStore

log = logging.getLogger("modelyard.gc")
GENERATION = "artifact_gc_generation"
# The advisory lock key of collections on PostgreSQL (any constant no other lock of ours uses).
_PG_LOCK = 0x79617264_6763
_RUN_ID = re.compile(r"[0-9a-f]{32}")  # a run's checkpoint folder is named by its id
_HEX_RUN = re.compile(rb"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])")
ACTION, RESOURCE = "artifact.gc", "artifacts:store"
# Objects no row names are left by a write that died between uploading and recording them, or by a failed
# delete; a live writer's look the same until it commits, so only those this old are swept by default.
ORPHAN_MIN_AGE = timedelta(hours=24)
# A pack whose live blobs fill less than this fraction of it is rewritten with only them (repacking).
REPACK_BELOW = 0.5
_REPACK_TARGET = 256 << 20  # live bytes gathered into one new pack
_REPACK_BLOBS = 50_000  # and at most this many blobs: rows moved in one transaction, held in memory


def digests_in(data: bytes) -> set[str]:
    """Every digest-shaped string in ``data`` (a manifest)."""
    return {m.decode() for m in _HEX_RUN.findall(data)}


def stored_digests(s: Session, digests: Iterable[str]) -> set[str]:
    """Which of ``digests`` have a blob row, as ``s`` sees them (its own uncommitted claims included)."""
    found: set[str] = set()
    conn = s.connection()
    # Driver SQL with the driver's placeholders: the ORM select cost ~10x more per digest, which a dataset
    # add of 10,000 files paid on the main thread. Only the placeholders are formatted in; the digests
    # are bound.
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    for chunk in chunks(sorted(set(digests))):
        sql = f"SELECT digest FROM blobs WHERE digest IN ({', '.join([mark] * len(chunk))})"  # noqa: S608
        found.update([row[0] for row in conn.exec_driver_sql(sql, tuple(chunk)).fetchall()])
    return found


def named_objects(s: Session, names: Iterable[str]) -> set[str]:
    """Which of the object ``names`` a blob row names, as ``s`` sees them."""
    found: set[str] = set()
    for chunk in chunks(sorted(set(names))):
        found.update(s.scalars(select(Blob.object_name).where(Blob.object_name.in_(chunk)).distinct()))
    return found


def _generation(s: Session) -> int:
    value = s.execute(select(Meta.value).where(Meta.key == GENERATION)).scalar_one_or_none()
    return int(value) if value else 0


def generation(source: Platform | MetadataStore) -> int:
    """Read before a write deduplicates against the store or publishes objects; hand it to :func:`fence`."""
    db = source.db if isinstance(source, Platform) else source
    with db.read() as s:
        return _generation(s)


def fence(s: Session, since: int) -> bool:
    """Call first in a recording transaction: holds collections off until it ends, and says whether one
    ran since ``since`` (then call :func:`require_stored` before committing)."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock_shared(:k)"), {"k": _PG_LOCK})
    return _generation(s) != since


def require_stored(s: Session, digests: Iterable[str], what: str) -> None:
    """Fail unless every digest is stored (this transaction's own claims count)."""
    wanted = sorted(set(digests))
    stored = stored_digests(s, wanted)
    missing = [d for d in wanted if d not in stored]
    if missing:
        raise CollectedMeanwhileError(
            f"{what}: {len(missing)} stored file(s) it reuses (e.g. {missing[0]}) were deleted by `yard gc` "
            "while it ran; nothing was recorded — run it again (it uploads them anew)",
            missing=len(missing),
        )


def require_unclaimed(s: Session, names: Iterable[str], what: str) -> None:
    """Fail if a collection condemned any of these objects (published, not yet claimed: orphans to it, as a
    slow writer's can look). Asked inside the writer's transaction, after :func:`fence`: condemnations are
    committed before any delete, so this answer holds whatever the collector does next."""
    wanted = sorted(set(names))
    condemned: list[str] = []
    for chunk in chunks(wanted):
        condemned += s.scalars(select(CondemnedObject.name).where(CondemnedObject.name.in_(chunk))).all()
    if condemned:
        raise CollectedMeanwhileError(
            f"{what}: {len(condemned)} object(s) it uploaded (e.g. {condemned[0]}) were deleted by `yard gc` "
            "as unclaimed before it could record them; nothing was recorded — run it again",
            missing=len(condemned),
        )


@dataclass(frozen=True)
class GcReport:
    """What a collection deleted (or, with ``dry_run``, would delete)."""

    dry_run: bool
    blobs: int  # blob rows (and their wrapped keys) deleted
    bytes: int  # their plaintext sizes
    objects: int  # whole objects deleted from the backend (packs once their last blob went)
    failed_objects: int  # objects whose delete failed: unreadable leftovers, see the log
    live: int  # blobs something refers to
    young: int  # unreferenced blobs kept because they are younger than min_age
    orphans: int = 0  # objects no blob row named (a crashed write's, a failed delete's), deleted
    orphan_bytes: int = 0  # their stored (encrypted) sizes
    staging: int = 0  # temp files and work directories of interrupted writes, a day old, removed locally
    repacked: int = 0  # packs mostly dead, rewritten with their live blobs only and deleted
    repacked_bytes: int = 0  # the dead bytes that went with them
    uploads: int = 0  # unfinished uploads (S3 multipart) of killed writes, as old as orphans, aborted
    checkpoints: int = 0  # this home's checkpoint folders of FINISHED or deleted runs, removed
    failed_checkpoints: int = 0  # such folders that could not be removed (logged)
    unknown_checkpoints: tuple[str, ...] = ()  # names in checkpoints/ that are no run's folder, left alone

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _meta_refs(s: Session) -> set[str]:
    """Digests kept as ``meta`` values (a project's PII salt)."""
    return {v for v in s.scalars(select(Meta.value)) if v and _HEX_RUN.fullmatch(v.encode())}


def _table_refs(s: Session, chunk: Sequence[str] | None = None) -> set[str]:
    """Digests named by reference and version rows (all of them, or those in ``chunk``)."""
    found: set[str] = set()
    for column in (
        Artifact.digest,
        RunArtifact.digest,
        DatasetVersion.manifest_digest,
        ModelVersion.manifest_digest,
    ):
        stmt: Select[str] = select(column).distinct()
        if chunk is not None:
            stmt = stmt.where(column.in_(chunk))
        found.update(s.scalars(stmt))
    return found


def _manifests(s: Session) -> set[str]:
    """The manifest digests of every dataset and model version."""
    found = set(s.scalars(select(DatasetVersion.manifest_digest)))
    return found | set(s.scalars(select(ModelVersion.manifest_digest)))


def _manifest_refs(store: ArtifactStore, manifests: Iterable[str]) -> set[str]:
    """Every digest-shaped string in the manifests, streamed (memory stays flat however large one is)."""
    found: set[str] = set()
    for digest in sorted(manifests):
        try:
            tail = b""
            for chunk in store.iter_bytes(digest):
                window = tail + chunk
                found |= digests_in(window)
                tail = window[-64:]  # a digest cut by the chunk boundary is whole in the next window
        except YardError as exc:
            # An unreadable manifest hides what it holds: collecting anything now could lose data.
            raise IntegrityError(
                f"`yard gc` stopped before deleting anything: manifest {digest} cannot be read "
                f"({exc.message}); restore it from a backup, then collect again"
            ) from None
    return found


def collect_garbage(
    platform: Platform,
    ctx: Context,
    *,
    min_age: timedelta = timedelta(hours=1),
    dry_run: bool = False,
    orphan_min_age: timedelta = ORPHAN_MIN_AGE,
    repack_below: float = REPACK_BELOW,
) -> GcReport:
    """Delete every blob nothing refers to that is older than ``min_age``, then every object no blob row
    names (left by a crashed write or a failed delete) older than ``orphan_min_age`` (at least ``min_age``),
    then rewrite the packs whose live blobs fill less than ``repack_below`` of them (0: never).
    Installation admins only (blobs are shared by all projects); audited with what was deleted."""
    platform.authorize_installation(ctx, ACTION, RESOURCE)
    for what, value in (("min_age", min_age), ("orphan_min_age", orphan_min_age)):
        if not isinstance(value, timedelta) or value < timedelta(0):
            raise platform.refuse(
                ctx, ACTION, RESOURCE, UsageError(f"{what} must be a duration of 0 or more")
            )
    if (
        isinstance(repack_below, bool)
        or not isinstance(repack_below, int | float)
        or not 0 <= repack_below <= 1
    ):
        raise platform.refuse(
            ctx, ACTION, RESOURCE, UsageError("repack_below must be a fraction from 0 to 1")
        )
    from modelyard.core._home import sweep_backend_staging

    report = _sweep_rows(platform, ctx, min_age, dry_run)
    now = _store_now(platform)
    packs: dict[str, int] = {}  # the packs older than min_age, gathered by the orphans' listing
    orphans, orphan_bytes, failed = _sweep_orphans(
        platform, ctx, max(min_age, orphan_min_age), dry_run, now=now, packs=packs, packs_before=now - min_age
    )
    uploads, failed_uploads = _abort_uploads(platform, ctx, now - max(min_age, orphan_min_age), dry_run)
    repacked, repacked_bytes, failed_packs = _repack(platform, ctx, float(repack_below), packs, dry_run)
    # This machine's staging only (each machine stages locally, S3 stores too); a day, whatever the ages.
    staging = 0 if dry_run else sweep_backend_staging(platform.artifacts.backend)
    checkpoints, failed_checkpoints, unknown = _sweep_checkpoints(platform, ctx, dry_run)
    return replace(
        report,
        checkpoints=checkpoints,
        failed_checkpoints=failed_checkpoints,
        unknown_checkpoints=unknown,
        orphans=orphans,
        orphan_bytes=orphan_bytes,
        failed_objects=report.failed_objects + failed + failed_uploads + failed_packs,
        uploads=uploads,
        staging=staging,
        repacked=repacked,
        repacked_bytes=repacked_bytes,
    )


def _sweep_rows(platform: Platform, ctx: Context, min_age: timedelta, dry_run: bool) -> GcReport:
    """Unreferenced blob rows older than ``min_age``, then the objects only they used."""
    store = platform.artifacts
    cutoff = utcnow() - min_age
    with _refusing(platform, ctx):
        with platform.db.read() as s:
            manifests = _manifests(s)
            live = _table_refs(s) | _meta_refs(s)
            blobs = s.execute(select(Blob.digest, Blob.size, Blob.created_at)).all()
        live |= manifests | _manifest_refs(store, manifests)
    dead = [b for b in blobs if b.digest not in live]
    candidates = sorted(b.digest for b in dead if as_utc(b.created_at) < cutoff)
    young = len(dead) - len(candidates)
    live_count = len(blobs) - len(dead)
    if dry_run or not candidates:
        size = {b.digest: b.size for b in dead}
        would = candidates if dry_run else []
        return GcReport(dry_run, len(would), sum(size[d] for d in would), 0, 0, live_count, young)

    detail: dict[str, Any] = {"min_age_s": int(min_age.total_seconds())}
    deleted: list[_Deleted] = []
    with platform.mutate(ctx, ACTION, RESOURCE, detail) as s:
        bumped = _exclusive(s)
        # Everything committed since the mark: new references, and the manifests of new versions.
        doomed = set(candidates) - _meta_refs(s)
        for chunk in chunks(candidates):
            doomed -= _table_refs(s, chunk)
        # By digest, not row id: SQLite reuses the id of a deleted newest row, and manifests are content.
        doomed -= _manifest_refs(store, _manifests(s) - manifests)
        for chunk in chunks(sorted(doomed)):
            deleted += s.execute(
                delete(Blob)
                .where(Blob.digest.in_(chunk))
                .returning(Blob.digest, Blob.object_name, Blob.pack_offset, Blob.size)
            ).all()
        names = _unreferenced_objects(s, deleted)
        detail.update(
            blobs=len(deleted), bytes=sum(r[3] for r in deleted), objects=len(names), generation=bumped
        )
    objects, failed = _delete_objects(platform, names)
    return GcReport(False, len(deleted), sum(r[3] for r in deleted), objects, failed, live_count, young)


def _sweep_checkpoints(platform: Platform, ctx: Context, dry_run: bool) -> tuple[int, int, tuple[str, ...]]:
    """This home's checkpoint folders (plain files of the user's data) that no resume can use: those of
    FINISHED runs (a crash between storing the model and deleting them; versions before that deletion)
    and of deleted runs. RUNNING, FAILED and KILLED runs keep theirs; a folder a process trains (its lock
    is held) is kept whatever its run's state; a name that is no run id is left alone and reported.
    Returns (removed, failed, unknown names). The database judges: a home shared by two databases is not
    supported (the folders of one's runs look deleted to the other)."""
    base = checkpoints_dir(platform.settings.home)
    try:
        entries = sorted(base.iterdir()) if base.is_dir() else []
    except OSError as exc:
        log.warning("checkpoints in %s not swept: %s", base, exc)
        return 0, 0, ()
    folders = {p.name: p for p in entries if _RUN_ID.fullmatch(p.name) and (p.is_dir() or p.is_symlink())}
    unknown = tuple(p.name for p in entries if p.name not in folders)
    status: dict[str, str] = {}
    with platform.db.read() as s:
        for chunk in chunks(sorted(folders)):
            status.update((i, st) for i, st in s.execute(select(Run.id, Run.status).where(Run.id.in_(chunk))))
    # Never RUNNING, FAILED or KILLED: resuming needs them. A deleted run's row never comes back (ids are
    # random), and training refuses to resume a FINISHED run, so neither state changes under us.
    doomed = [name for name in folders if status.get(name, "FINISHED") == "FINISHED"]
    if dry_run or not doomed:
        return len(doomed), 0, unknown
    removed: list[str] = []
    failed = 0
    for name in doomed:
        try:
            problem = remove_run_checkpoints(folders[name], name)
        except UsageError:
            continue  # trained by a process on this machine right now (its row deleted meanwhile)
        if problem is None:
            removed.append(name)
        else:
            failed += 1
            log.warning(
                "checkpoints %s of a %s run not deleted: %s",
                folders[name],
                status.get(name, "deleted"),
                problem,
            )
    detail = {"checkpoints": removed[:1000], "removed": len(removed), "failed": failed}
    platform.audit(ctx, ACTION, f"checkpoints:{base}", "ok" if not failed else "error", detail)
    return len(removed), failed, unknown


@contextlib.contextmanager
def _refusing(platform: Platform, ctx: Context) -> Iterator[None]:
    """A failed mark is audited as a refused collection (the sweeps' transactions audit themselves)."""
    try:
        yield
    except YardError as exc:
        raise platform.refuse(ctx, ACTION, RESOURCE, exc) from None


def _lock(s: Session) -> None:
    """Take the collectors' lock exclusively: writers' fences and other collections wait."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK})


def _exclusive(s: Session) -> int:
    """Take the collectors' lock exclusively and bump the generation (writers then check what they name)."""
    _lock(s)
    bumped = _generation(s) + 1
    s.execute(insert_for(s)(Meta).values(key=GENERATION, value="0").on_conflict_do_nothing())
    s.execute(update(Meta).where(Meta.key == GENERATION).values(value=str(bumped)))
    return bumped


def _sweep_orphans(
    platform: Platform,
    ctx: Context,
    min_age: timedelta,
    dry_run: bool,
    *,
    now: datetime,
    packs: dict[str, int],
    packs_before: datetime,
) -> tuple[int, int, int]:
    """Objects no row names, older than ``min_age`` at ``now`` (the store's clock): (deleted, their bytes,
    failed deletes). The same listing fills ``packs`` with every pack modified before ``packs_before``, and
    its size, for :func:`_repack`: one listing of the backend per collection, not two.

    A writer publishes its objects, then claims them in one transaction: until then they are orphans too,
    and a slow writer's may be older than ``min_age``. So the collection condemns them first, in a
    transaction that takes the lock, bumps the generation and re-checks the rows; only once that commits
    does it delete them. A writer whose fence then sees the new generation finds its objects condemned
    (:func:`require_unclaimed`) and records nothing. No lock is held while objects are deleted: a collector
    whose database session dies meanwhile cannot let a claim in. A condemned object that failed to delete
    is retried by the next collection (it still has no row)."""
    cutoff = now - min_age
    sizes: dict[str, int] = {}  # the orphans
    batch: dict[str, int] = {}

    def keep_unnamed() -> None:
        with platform.db.read() as s:
            named = named_objects(s, batch)
        sizes.update((name, size) for name, size in batch.items() if name not in named)
        batch.clear()

    with _refusing(platform, ctx):
        # Streamed: the listing is checked against the rows 500 names at a time; memory holds orphans only.
        for item in platform.artifacts.backend.list_stat("objects/"):
            if not is_object_name(item.name):
                continue
            if item.modified < packs_before and item.name.startswith("objects/pk/"):
                packs[item.name] = item.size
            if item.modified < cutoff:
                batch[item.name] = item.size
                if len(batch) >= ROWS:
                    keep_unnamed()
        keep_unnamed()
    if dry_run or not sizes:
        return len(sizes), sum(sizes.values()), 0
    detail: dict[str, Any] = {"orphan_min_age_s": int(min_age.total_seconds())}
    with platform.mutate(ctx, ACTION, RESOURCE, detail) as s:
        bumped = _exclusive(s)
        doomed = set(sizes) - named_objects(s, sizes)  # claimed since the listing: kept
        now = utcnow()
        rows = [{"name": n, "generation": bumped, "condemned_at": now} for n in sorted(doomed)]
        for part in chunks(rows):
            s.execute(insert_for(s)(CondemnedObject).values(list(part)).on_conflict_do_nothing())
        detail.update(generation=bumped, orphans=len(doomed), orphan_bytes=sum(sizes[n] for n in doomed))
    done, failed = _delete_objects(platform, sorted(doomed))
    return done, sum(sizes[n] for n in doomed), failed


def _abort_uploads(platform: Platform, ctx: Context, before: datetime, dry_run: bool) -> tuple[int, int]:
    """Abort the unfinished uploads of object names begun before ``before``: (aborted, failed). A writer
    killed mid-upload leaves its parts stored (and billed) where no listing of objects shows them. One that
    is still uploading after the orphan age fails and records nothing, as when its objects are swept."""
    backend = platform.artifacts.backend
    try:
        stale = [u for u in backend.list_uploads("objects/") if is_object_name(u.name) and u.started < before]
    except BackendError as exc:  # e.g. a bucket policy without ListBucketMultipartUploads: the rest goes on
        log.warning("gc: cannot list unfinished uploads, none aborted: %s", exc)
        return 0, 0
    if dry_run or not stale:
        return len(stale), 0
    done = failed = 0
    for upload in stale:
        try:
            backend.abort_upload(upload)
            done += 1
        except (OSError, BackendError) as exc:
            failed += 1  # the next collection tries again
            log.warning("gc: aborting the unfinished upload of %s failed: %s", upload.name, exc)
    if done:
        platform.audit(ctx, ACTION, RESOURCE, "ok", {"aborted_uploads": done})
    return done, failed


def _repack(
    platform: Platform, ctx: Context, below: float, sizes: dict[str, int], dry_run: bool
) -> tuple[int, int, int]:
    """Packs among ``sizes`` (old enough, with their stored sizes) whose live blobs fill less than ``below``
    of them: (packs rewritten, dead bytes gone with them, failed deletes).

    Their live blobs' bytes are copied unchanged (each is sealed on its own, with its own key) into a new
    pack, published, then one transaction under the collectors' lock checks that no other collection
    condemned the new pack, moves the rows (only those still where they were) and condemns the old packs
    that no row names any more; the old packs are deleted after the commit. The generation stays: writers
    name digests, not places. A reader that located a blob in an old pack before that finds it gone and
    asks its row again (``ArtifactStore._open_current``)."""
    if below <= 0:
        return 0, 0, 0
    with _refusing(platform, ctx):
        live: dict[str, int] = {}
        counts: dict[str, int] = {}
        with platform.db.read() as s:
            stmt = (
                select(Blob.object_name, func.sum(Blob.pack_length), func.count())
                .where(Blob.pack_offset.is_not(None))
                .group_by(Blob.object_name)
            )
            for name, used, blobs in s.execute(stmt):
                if name in sizes and int(used or 0) < below * sizes[name]:
                    live[name], counts[name] = int(used or 0), int(blobs)
    if dry_run or not live:
        return len(live), sum(sizes[n] - live[n] for n in live), 0
    done = freed = failed = 0
    groups: list[list[str]] = [[]]
    total = blobs = 0
    for name in sorted(live):  # new packs of about _REPACK_TARGET live bytes each
        if groups[-1] and (total + live[name] > _REPACK_TARGET or blobs + counts[name] > _REPACK_BLOBS):
            groups.append([])
            total = blobs = 0
        groups[-1].append(name)
        total, blobs = total + live[name], blobs + counts[name]
    for group in groups:
        n, b, f = _repack_group(platform, ctx, group, sizes)
        done, freed, failed = done + n, freed + b, failed + f
    return done, freed, failed


def _repack_group(
    platform: Platform, ctx: Context, packs: Sequence[str], sizes: dict[str, int]
) -> tuple[int, int, int]:
    """Copy the live blobs of ``packs`` into one new pack, move their rows, delete the old packs. A pack
    another collection removed meanwhile, or one that cannot be read, is left out (with a warning)."""
    store = platform.artifacts
    backend = store.backend
    with platform.db.read() as s:
        rows = s.execute(
            select(Blob.digest, Blob.object_name, Blob.pack_offset, Blob.pack_length)
            .where(Blob.object_name.in_(packs), Blob.pack_offset.is_not(None))
            .order_by(Blob.object_name, Blob.pack_offset)
        ).all()
    members: dict[str, list[tuple[str, int, int]]] = {}
    for digest, old, offset, length in rows:  # offsets and lengths are set for every packed blob
        members.setdefault(old, []).append((digest, cast(int, offset), cast(int, length)))
    name = f"objects/pk/{uuid.uuid4().hex}"
    moved: list[dict[str, Any]] = []
    copied: list[str] = []
    out, tmp = store._staging_file(".repack-")
    try:
        with _refusing(platform, ctx):
            with out:
                for old, blobs in members.items():
                    try:
                        moved += _copy_pack(backend, out, old, blobs)
                    except _Unreadable as exc:  # what was copied of it stays as dead space in the new pack
                        gone = isinstance(exc.__cause__, NotFoundError)
                        log.warning(
                            "gc: pack %s not repacked: %s",
                            old,
                            "it is gone (another collection repacked it meanwhile, or it was lost)"
                            if gone
                            else f"it cannot be read ({exc.__cause__})",
                        )
                        continue
                    copied.append(old)
                new_size = out.tell()
            if not copied:  # every blob went meanwhile (the packs are orphans for the orphan sweep)
                return 0, 0, 0
            backend.put_file(name, tmp, durable=True)
    finally:
        tmp.unlink(missing_ok=True)  # gone already when published
    detail: dict[str, Any] = {"pack": name}
    # On failure the new pack stays, nameless: a commit that failed may still have happened, and the orphan
    # sweep removes it later if no row names it.
    with platform.mutate(ctx, ACTION, RESOURCE, detail) as s:
        # No new generation: moving rows changes nothing a writer names or uploads (a writer never claims
        # into a pack another transaction committed), so writers keep their fast path. The lock orders this
        # with other collections, one of which may have swept the new pack as an orphan.
        _lock(s)
        require_unclaimed(s, [name], "repacking")
        current = _generation(s)
        table = cast(Table, Blob.__table__)
        s.connection().execute(
            update(table)
            .where(
                table.c.digest == bindparam("d"),
                table.c.object_name == bindparam("old"),
                table.c.pack_offset == bindparam("off"),
            )
            .values(object_name=name, pack_offset=bindparam("new_off")),
            moved,
        )
        doomed = sorted(set(copied) - named_objects(s, copied))  # rows claimed into them meanwhile: kept
        now = utcnow()
        for part in chunks([{"name": n, "generation": current, "condemned_at": now} for n in doomed]):
            s.execute(insert_for(s)(CondemnedObject).values(list(part)).on_conflict_do_nothing())
        freed = max(sum(sizes[n] for n in doomed) - new_size, 0)
        detail.update(generation=current, repacked=len(doomed), repacked_bytes=freed)
        named = bool(named_objects(s, [name]))
    if not named:  # every blob went meanwhile: the new pack holds nothing
        backend.delete(name)
    done, failed = _delete_objects(platform, doomed)
    return done, freed, failed


class _Unreadable(Exception):
    """Reading an old pack failed (gone, truncated, an I/O error); the cause is chained. Errors writing the
    new pack are not this: they abandon the whole group, since bytes of packs already copied may be lost."""


def _copy_pack(
    backend: BlobBackend, out: StagingWriter, pack: str, blobs: Sequence[tuple[str, int, int]]
) -> list[dict[str, Any]]:
    """Append the sealed bytes of ``blobs`` (digest, offset, length; by offset) of ``pack`` to ``out``,
    unchanged; returns their moves. Blobs that lie end to end are read with one (ranged) read, so an S3
    pack costs one GET per run of live blobs, not one per blob."""
    moves: list[dict[str, Any]] = []
    i = 0
    while i < len(blobs):
        j, end = i + 1, blobs[i][1] + blobs[i][2]
        while j < len(blobs) and blobs[j][1] == end:
            end += blobs[j][2]
            j += 1
        try:
            f = backend.open_range(pack, blobs[i][1], end - blobs[i][1])
        except (YardError, OSError) as exc:
            raise _Unreadable() from exc
        with contextlib.closing(f):
            for digest, offset, length in blobs[i:j]:
                start, left = out.tell(), length
                while left:
                    try:
                        chunk = f.read(min(left, 1 << 20))
                    except (YardError, OSError) as exc:
                        raise _Unreadable() from exc
                    if not chunk:
                        raise _Unreadable() from IntegrityError(f"blob {digest} in pack {pack} is truncated")
                    out.write(chunk)  # a write error propagates: the whole group is abandoned
                    left -= len(chunk)
                moves.append({"d": digest, "old": pack, "off": offset, "new_off": start})
        i = j
    return moves


def _store_now(platform: Platform) -> datetime:
    """The database's clock on PostgreSQL (hosts' clocks may be skewed), the local one on SQLite."""
    clock = platform.db.now()
    if isinstance(clock, datetime):
        return clock
    with platform.db.read() as s:
        return as_utc(s.execute(select(clock)).scalar_one())


_Deleted = tuple[str, str, int | None, int]  # digest, object name, pack offset, size


def _unreferenced_objects(s: Session, deleted: Sequence[_Deleted]) -> list[str]:
    """The objects of deleted rows: a whole object, or a pack once no row refers to it any more (pack
    names are unique to the add that wrote them, so no new row can come to refer to one)."""
    names = {name for _, name, offset, _ in deleted if offset is None}
    packs = {name for _, name, offset, _ in deleted if offset is not None}
    return sorted(names | (packs - named_objects(s, packs)))


def _delete_objects(platform: Platform, names: Sequence[str]) -> tuple[int, int]:
    """Delete objects whose rows are gone (after the commit: never a row without its object)."""
    done = failed = 0
    for name in names:
        try:
            platform.artifacts.backend.delete(name)
            done += 1
        except (OSError, BackendError) as exc:
            failed += 1  # its key is gone: the bytes are unreadable; a later delete may remove them
            log.warning("gc: deleting object %s failed: %s", name, exc)
    return done, failed
