"""Encrypted, content-addressed artifact store, and the artifact services built on it.

Layout: ``objects/<d[:2]>/<digest>.<uuid>`` in the blob backend holds the encrypted payload; the ``blobs``
table maps the plaintext digest to that object and its wrapped data key. Every put writes a fresh, uniquely
named object and then claims the digest with an insert-if-absent, so concurrent puts of the same bytes
never overwrite each other: the loser deletes its copy.

Packs: a dataset add seals its small files (below ``PACK_MAX_BLOB``) one after another into one pack object
``objects/pk/<uuid>`` per task instead of one object per file, as git does with packfiles: creating ten
thousand files is the kernel's inode allocation, which costs more than hashing and encrypting them. Each
packed blob keeps exactly the per-blob format (own data key, chunked AES-GCM stream, key wrapped in its
row); its row adds the byte range (``pack_offset``, ``pack_length``) and reads go through a ranged reader,
so verification is unchanged and a damaged blob fails alone. A pack member whose digest turns out to be
stored already is never claimed: its bytes stay in the pack as dead space. A pack is deleted only when
none of its blobs was claimed; ``yard gc`` rewrites one that is mostly dead (core/_gc.py, repacking).

Puts and gets work in batches (a single file is a batch of one): one metadata transaction, one lock of the
audit chain and one filesystem flush per batch, so many small files cost little more than copying them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from sqlalchemy import Table, delete, insert, select, text
from sqlalchemy.orm import Session

from modelyard.core._blobs import BlobBackend, StagingWriter, sync_filesystem
from modelyard.core._crypto import decrypt_stream, encrypt_stream, iter_decrypt, new_data_key, wrap_key
from modelyard.core._db import MetadataStore, chunks
from modelyard.core._gc import (
    fence,
    generation,
    named_objects,
    require_stored,
    require_unclaimed,
    stored_digests,
)
from modelyard.core._keys import Keyring, recorded_key_id
from modelyard.core._models import Artifact, Blob
from modelyard.core._paths import check_output_target, safe_key, temp_prefix
from modelyard.core._platform import Context, Platform, utcnow
from modelyard.errors import (
    BackendError,
    IntegrityError,
    MasterKeyError,
    NotFoundError,
    ResidencyError,
    UsageError,
    YardError,
)

log = logging.getLogger("modelyard.artifacts")
_DIGEST_RE = re.compile(r"^[0-9a-f]{64}\Z")
# Rows per executemany of claim (SQLAlchemy splits them into statements within the driver's limits).
_CLAIM_ROWS = 1000
_SQLITE_CLAIM = (
    "INSERT INTO blobs (digest, size, object_name, key_id, wrapped_key, region, created_at, pack_offset, "
    "pack_length) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (digest) DO NOTHING"
)
# Batches up to this size fsync every file; larger ones publish everything, then flush the filesystem once.
_DURABLE_EACH = 4
# Files sealed into local temp space before they are published: bounds the temp space a batch needs.
_GROUP_FILES = 256
_GROUP_BYTES = 1 << 30
# publish_files packs files smaller than this; larger ones get one object each.
PACK_MAX_BLOB = 4 << 20


def check_digest(digest: str) -> str:
    if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
        raise UsageError(f"{digest!r} is not an artifact digest; expected 64 lower-case hex characters")
    return digest


@dataclass(frozen=True)
class _Sealed:
    """Encrypted into a local temp file; not yet published."""

    tmp: Path
    digest: str
    size: int
    key_id: str
    wrapped_key: bytes


def _seal_all(
    seal: Callable[[Path], _Sealed], paths: Sequence[Path], pool: ThreadPoolExecutor | None
) -> list[_Sealed]:
    """Seal ``paths`` in order; if one fails, remove the temp files of the others before raising."""
    if pool is None:
        done: list[_Sealed] = []
        try:
            for p in paths:
                done.append(seal(p))
        except BaseException:
            for item in done:
                item.tmp.unlink(missing_ok=True)
            raise
        return done
    futures = [pool.submit(seal, p) for p in paths]
    wait(futures)
    results = [f.result() for f in futures if f.exception() is None]
    failed = next((f.exception() for f in futures if f.exception() is not None), None)
    if failed is not None:
        for item in results:
            item.tmp.unlink(missing_ok=True)
        raise failed
    return results


def _seal_file(
    path: str | os.PathLike[str],
    out: StagingWriter,
    data_key: bytes,
    expect: tuple[int, int, int, int] | None,
) -> tuple[str, int]:
    """Encrypt one file into ``out``; with ``expect`` (size, mtime_ns, ctime_ns, inode), fail if the
    file's descriptor shows anything else once it has been read: it changed while it was read. The
    descriptor's stat is the inode that was read, wherever its path points meanwhile."""
    with open(path, "rb", buffering=0) as src:  # unbuffered: each read lands in the crypto buffer
        digest, size = encrypt_stream(src, out, data_key)
        if expect is not None:
            st = os.fstat(src.fileno())
            if size != expect[0] or (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) != expect:
                raise UsageError(f"{os.fspath(path)} changed while it was being read; add it again")
    return digest, size


@dataclass(frozen=True)
class StagedBlob:
    """An encrypted payload published to the backend (``object_name`` empty when its bytes were already
    stored), not yet claimed in the metadata store."""

    digest: str
    size: int
    object_name: str
    key_id: str
    wrapped_key: bytes
    region: str
    pack_offset: int | None = None  # set for a blob stored inside a pack object
    pack_length: int | None = None


class _Location(NamedTuple):
    object_name: str
    key_id: str
    wrapped_key: bytes
    pack_offset: int | None
    pack_length: int | None


@dataclass(frozen=True)
class ArtifactInfo:
    digest: str
    size: int
    name: str
    region: str
    created_at: datetime
    created_by: str


class ArtifactStore:
    """Blob backend + metadata index + keyring. Knows nothing of users; the services below do."""

    def __init__(self, backend: BlobBackend, db: MetadataStore, keyring: Keyring, *, region: str) -> None:
        self.backend, self.db, self.keyring, self.region = backend, db, keyring, region

    # -- write ------------------------------------------------------------------------------------------
    def _check_region(self, region: str) -> None:
        if region != self.region:
            raise ResidencyError(
                f"data of region {region!r} cannot be written to the artifact store of region "
                f"{self.region!r}; use a store in {region!r} (YARD_ARTIFACT_URI) or keep the data in-region"
            )

    @property
    def _direct(self) -> bool:
        return bool(getattr(self.backend, "direct_staging", False))

    def _staging_file(self, prefix: str) -> tuple[StagingWriter, Path]:
        fd, tmp_name = tempfile.mkstemp(prefix=prefix, dir=self.backend.staging_dir())
        try:
            return StagingWriter(fd, direct=self._direct), Path(tmp_name)
        except BaseException:
            os.close(fd)
            Path(tmp_name).unlink(missing_ok=True)
            raise

    def _seal(self, src: BinaryIO) -> _Sealed:
        """Hash and encrypt ``src`` in one streaming pass into a temp file in the staging area."""
        data_key = new_data_key()
        out, tmp = self._staging_file(".put-")
        try:
            with out:
                digest, size = encrypt_stream(src, out, data_key)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        key_id, wrapped = self.keyring.wrap(data_key, digest.encode())
        return _Sealed(tmp, digest, size, key_id, wrapped)

    def _publish(
        self, group: Sequence[_Sealed], region: str, published: dict[str, str], durable: bool
    ) -> list[StagedBlob]:
        """Upload what the store does not hold yet; ``published`` (digest -> object) spans the batch."""
        known = self.known_digests([s.digest for s in group])
        staged: list[StagedBlob] = []
        for item in group:
            name = ""
            if item.digest not in known and item.digest not in published:
                name = f"objects/{item.digest[:2]}/{item.digest}.{uuid.uuid4().hex}"
                self.backend.put_file(name, item.tmp, durable=durable)
                published[item.digest] = name
            else:
                item.tmp.unlink(missing_ok=True)  # its bytes are stored already
            staged.append(StagedBlob(item.digest, item.size, name, item.key_id, item.wrapped_key, region))
        return staged

    def stage_files(
        self, paths: Sequence[Path], *, region: str, workers: int = 1, sync: bool = True
    ) -> list[StagedBlob]:
        """Seal and publish files in groups, so local temp space stays bounded (S3 stages locally), and
        make everything durable before returning: nothing may record an object that a crash could lose.

        ``workers`` > 1 seals a group's files on that many threads: SHA-256 and AES-GCM release the GIL
        on large buffers, so hashing and encryption scale with cores. ``sync=False`` leaves the final
        flush to the caller (a dataset add stages many batches and flushes once before recording);
        a caller passing it must call ``backend.sync()`` before claiming anything."""
        self._check_region(region)
        durable = sync and len(paths) <= _DURABLE_EACH
        staged: list[StagedBlob] = []
        published: dict[str, str] = {}
        group: list[Path] = []
        sealed: list[_Sealed] = []
        group_bytes = 0
        pool = ThreadPoolExecutor(workers) if workers > 1 and len(paths) > 1 else None

        def seal_path(path: Path) -> _Sealed:
            with open(path, "rb") as src:
                return self._seal(src)

        try:
            for i, path in enumerate(paths):
                group.append(path)
                with contextlib.suppress(OSError):  # an unreadable file fails below, when it is opened
                    group_bytes += os.stat(path).st_size
                if len(group) >= _GROUP_FILES or group_bytes >= _GROUP_BYTES or i == len(paths) - 1:
                    sealed = _seal_all(seal_path, group, pool)
                    staged += self._publish(sealed, region, published, durable)
                    group, sealed, group_bytes = [], [], 0
            if published and not durable and sync:
                self.backend.sync()
        except BaseException:
            for name in published.values():
                self.backend.delete(name)
            raise
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
            for item in sealed:
                item.tmp.unlink(missing_ok=True)  # published ones were moved away already
        return staged

    def publish_files(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        region: str,
        expect: Sequence[tuple[int, int, int, int]] | None = None,
    ) -> list[StagedBlob]:
        """Seal and publish files at once (one ``StagedBlob`` per path, in order), without a flush and
        without asking the metadata store whether their digests are known: the building block of a
        caller that runs many of these on its own pool (a dataset add). Files smaller than
        ``PACK_MAX_BLOB`` go into one pack object (when there are at least two), larger ones into one
        object each. The caller owns the published objects: it must delete those none of whose blobs it
        claims, and call ``backend.sync()`` before claiming any. On failure, this call's objects are
        deleted before the error propagates.

        ``expect`` gives each file's (size, mtime_ns, ctime_ns, inode) as the caller saw it: a file
        whose descriptor no longer shows exactly that after it was read changed while it was read,
        and fails the call (a manifest must describe bytes that existed together)."""
        self._check_region(region)
        if expect is not None and len(expect) != len(paths):
            raise ValueError("expect must give one stat per path")
        results: list[StagedBlob | None] = [None] * len(paths)
        small: list[int] = []
        for i, path in enumerate(paths):
            if expect is not None:
                size = expect[i][0]
            else:
                try:
                    size = os.stat(path).st_size
                except OSError:  # an unreadable file fails below, when it is opened
                    continue
            if size < PACK_MAX_BLOB:
                small.append(i)
        if len(small) < 2:
            small = []
        published: list[str] = []
        try:
            if small:
                self._publish_pack(paths, small, region, results, published, expect)
            packed = set(small)
            for i, path in enumerate(paths):
                if i in packed:
                    continue
                data_key = new_data_key()
                out, tmp = self._staging_file(".put-")
                try:
                    with out:
                        digest, size = _seal_file(path, out, data_key, expect[i] if expect else None)
                    name = f"objects/{digest[:2]}/{digest}.{uuid.uuid4().hex}"
                    self.backend.put_file(name, tmp, durable=False)
                finally:
                    tmp.unlink(missing_ok=True)  # gone already when published
                published.append(name)
                key_id, wrapped = self.keyring.wrap(data_key, digest.encode())
                results[i] = StagedBlob(digest, size, name, key_id, wrapped, region)
        except BaseException:
            for name in published:
                self.backend.delete(name)
            raise
        staged = [b for b in results if b is not None]
        assert len(staged) == len(paths)
        return staged

    def _publish_pack(
        self,
        paths: Sequence[str | os.PathLike[str]],
        members: Sequence[int],
        region: str,
        results: list[StagedBlob | None],
        published: list[str],
        expect: Sequence[tuple[int, int, int, int]] | None = None,
    ) -> None:
        """Seal ``paths[i]`` for each member, one after another, into one temp file (streamed: memory
        stays flat), then publish it as one pack object. A digest repeated within the pack is stored
        once: its later copies are cut off again (or, when already written out, left as dead space)
        and share the first one's range and key."""
        name = f"objects/pk/{uuid.uuid4().hex}"
        out, tmp = self._staging_file(".pack-")
        wrap = self.keyring.wrap
        try:
            by_digest: dict[str, StagedBlob] = {}
            with out:
                for i in members:
                    offset = out.tell()
                    data_key = new_data_key()
                    digest, size = _seal_file(paths[i], out, data_key, expect[i] if expect else None)
                    first = by_digest.get(digest)
                    if first is not None:
                        out.rewind(offset)
                        results[i] = first
                        continue
                    key_id, wrapped = wrap(data_key, digest.encode())
                    length = out.tell() - offset
                    blob = StagedBlob(digest, size, name, key_id, wrapped, region, offset, length)
                    results[i] = by_digest[digest] = blob
            self.backend.put_file(name, tmp, durable=False)
            published.append(name)
        finally:
            tmp.unlink(missing_ok=True)  # gone already when published

    def stage(self, src: BinaryIO, *, region: str, durable: bool = True) -> StagedBlob:
        """Seal and publish one stream. ``durable=False`` skips its fsyncs: the caller must call
        ``backend.sync()`` before claiming it (a dataset add flushes its manifest with its files)."""
        self._check_region(region)
        sealed = self._seal(src)
        try:
            return self._publish([sealed], region, {}, durable=durable)[0]
        finally:
            sealed.tmp.unlink(missing_ok=True)

    def _current_wrapping(self, s: Session, staged: Sequence[StagedBlob]) -> list[StagedBlob]:
        """Data keys must be wrapped with the master key the store records. A process that loaded its
        keyring before another one rotated the key re-wraps here (reading the new key file) instead of
        storing a key wrapped with the retired master, which nothing could open afterwards."""
        recorded = recorded_key_id(s, lock=True)  # also holds off a concurrent rotation until we commit
        stale = [b for b in staged if b.object_name and b.key_id != recorded]
        if recorded is None or not stale:
            return list(staged)
        data_keys = {b.digest: self.keyring.unwrap(b.key_id, b.wrapped_key, b.digest.encode()) for b in stale}
        if self.keyring.known(recorded) is None:
            self.keyring.refresh()
        master = self.keyring.known(recorded)
        if master is None:
            raise MasterKeyError(
                f"the store's master key was rotated to {recorded}, but this machine's key file holds "
                f"{self.keyring.current.key_id}; install the current key file, then retry"
            )
        return [
            replace(
                b, key_id=master.key_id, wrapped_key=wrap_key(master, data_keys[b.digest], b.digest.encode())
            )
            if b.digest in data_keys
            else b
            for b in staged
        ]

    def claim(self, s: Session, staged: Sequence[StagedBlob], *, collected: bool = False) -> set[str]:
        """Record staged blobs whose digests are not known yet; return the digests this call stored.
        ``collected``: :func:`fence` said a collection ran since the caller read the generation, which may
        have condemned these objects as orphans (published, not yet claimed): that is checked first."""
        if collected:
            require_unclaimed(s, [b.object_name for b in staged if b.object_name], "this write")
        staged = self._current_wrapping(s, staged)
        now = utcnow()
        ordered = sorted((b for b in staged if b.object_name), key=lambda b: b.digest)  # a stable order
        if not ordered:
            return set()
        if self.db.dialect == "sqlite":
            return self._claim_sqlite(s, ordered, now)
        rows = [
            {
                "digest": b.digest,
                "size": b.size,
                "object_name": b.object_name,
                "key_id": b.key_id,
                "wrapped_key": b.wrapped_key,
                "region": b.region,
                "created_at": now,
                "pack_offset": b.pack_offset,
                "pack_length": b.pack_length,
            }
            for b in ordered
        ]
        from sqlalchemy.dialects.postgresql import insert as pg_insert  # imported only where used

        claimed: set[str] = set()
        # One statement executed with many parameter sets: SQLAlchemy compiles it once and batches the
        # rows into multi-row INSERTs ("insertmanyvalues"); a .values(rows) statement would be compiled
        # anew for every chunk, which cost more than the inserts. RETURNING, not rowcount: psycopg
        # reports -1 for executemany.
        table = Blob.__table__
        assert isinstance(table, Table)
        stmt = pg_insert(table).on_conflict_do_nothing(index_elements=["digest"]).returning(table.c.digest)
        for chunk in chunks(rows, _CLAIM_ROWS):
            claimed.update(s.execute(stmt, list(chunk)).scalars())
        return claimed

    def _claim_sqlite(self, s: Session, ordered: Sequence[StagedBlob], now: datetime) -> set[str]:
        """SQLite: one executemany on the driver, inside the session's transaction. SQLAlchemy's own
        executemany built, type-processed and returned a row per blob, which made claiming 10,000 blobs
        cost more than a second; here the timestamp is converted once (by the column type's own bind
        processor, so the stored text is what the ORM writes) and the driver counts the inserted rows.
        Only if some were not inserted (another writer stored those digests first) does one query ask
        which rows are this call's, by object name and range (object names are unique to their put)."""
        table = Blob.__table__
        assert isinstance(table, Table)
        conn = s.connection()
        process = table.c.created_at.type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
        created_at = process(now) if process is not None else now
        rows = [
            (
                b.digest,
                b.size,
                b.object_name,
                b.key_id,
                b.wrapped_key,
                b.region,
                created_at,
                b.pack_offset,
                b.pack_length,
            )
            for b in ordered
        ]
        cursor = conn.exec_driver_sql(_SQLITE_CLAIM, rows)
        if cursor.rowcount == len(rows):
            return {b.digest for b in ordered}
        ours = {(b.digest, b.object_name, b.pack_offset) for b in ordered}
        claimed: set[str] = set()
        for chunk in chunks([b.digest for b in ordered]):
            found = s.execute(
                select(Blob.digest, Blob.object_name, Blob.pack_offset).where(Blob.digest.in_(chunk))
            )
            claimed.update(d for d, name, offset in found if (d, name, offset) in ours)
        return claimed

    def transaction_id(self, s: Session) -> str | None:
        """The PostgreSQL transaction id of ``s`` (call it inside the claiming transaction), so that a
        commit whose acknowledgement was lost can be told apart from one that failed: see discard()."""
        if self.db.dialect != "postgresql":
            return None  # SQLite commits locally: once commit returns or raises, new readers see the outcome
        return str(s.execute(text("SELECT pg_current_xact_id()::text")).scalar_one())

    def _settled(self, xid: str, *, wait_s: float = 30.0) -> bool:
        """Whether transaction ``xid`` has committed or aborted. A commit whose acknowledgement was lost
        may still be running (WAL flush, a synchronous standby) and is invisible to other snapshots
        until it ends; asking which objects it references before then would answer "none"."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                with self.db.read() as s:
                    status = s.execute(
                        text("SELECT pg_xact_status(CAST(:x AS xid8))"), {"x": xid}
                    ).scalar_one_or_none()
            except Exception:
                return False
            if status in ("committed", "aborted"):
                return True
            if status is None or time.monotonic() >= deadline:
                return False  # unknown or still running: the caller keeps everything
            time.sleep(0.2)

    def discard(
        self, staged: Sequence[StagedBlob], *, committed: bool, claimed: set[str], xid: str | None = None
    ) -> None:
        """Delete published objects that no metadata row refers to: those that lost the race for their
        digest, or all of them when the transaction failed. When the outcome of a failed commit is unknown
        (its acknowledgement may have been lost), ask the store; if it cannot answer, keep everything:
        an orphaned object is harmless, a deleted referenced one is data lost.

        A pack object is deleted only if none of its blobs was claimed. ``staged`` may hold only some of
        a pack's blobs (a dataset add passes the losers of its races), so for packs the store is asked
        which of them a row refers to; if it cannot answer, they are kept. With ``xid`` (PostgreSQL, from
        transaction_id()) a failed commit is first waited for until its outcome is known."""
        published = [b for b in staged if b.object_name]
        if not published:
            return
        if not committed and xid is not None and not self._settled(xid):
            return
        packs = {b.object_name for b in published if b.pack_offset is not None}
        if not committed or packs:
            asked = {b.object_name for b in published} if not committed else packs
            try:
                referenced = self._referenced(sorted(asked))
            except Exception:
                if not committed:
                    return
                referenced = packs  # unknown: keep every pack
            if not committed:
                claimed = {b.digest for b in published if b.object_name in referenced}
            packs -= referenced  # packs no row refers to: none of their blobs was claimed
        doomed: set[str] = set()
        for b in published:
            if b.pack_offset is not None:
                if b.object_name in packs:
                    doomed.add(b.object_name)
            elif b.digest not in claimed:
                doomed.add(b.object_name)
        for name in sorted(doomed):
            self.backend.delete(name)

    def _referenced(self, object_names: Sequence[str]) -> set[str]:
        with self.db.read() as s:
            return named_objects(s, object_names)

    def put(self, src: BinaryIO, *, region: str | None = None) -> str:
        """Store bytes without a project reference (internal use: manifests, checkpoints)."""
        since = generation(self.db)
        staged = self.stage(src, region=region or self.region)
        claimed: set[str] = set()
        committed = False
        xid: str | None = None
        try:
            with self.db.write() as s:
                claimed = self.claim(s, [staged], collected=fence(s, since))
                xid = self.transaction_id(s)
            committed = True
        finally:
            self.discard([staged], committed=committed, claimed=claimed, xid=xid)
        return staged.digest

    # -- read -------------------------------------------------------------------------------------------
    def known_digests(self, digests: Sequence[str]) -> set[str]:
        if not digests:
            return set()
        with self.db.read() as s:
            return stored_digests(s, digests)

    def _locate(self, digests: Sequence[str]) -> dict[str, _Location]:
        """digest -> where its payload is and its wrapped data key; NotFoundError names the first missing."""
        for d in digests:
            check_digest(d)
        unique = sorted(set(digests))
        found: dict[str, _Location] = {}
        with self.db.read() as s:
            for chunk in chunks(unique):
                rows = s.execute(
                    select(
                        Blob.digest,
                        Blob.object_name,
                        Blob.key_id,
                        Blob.wrapped_key,
                        Blob.pack_offset,
                        Blob.pack_length,
                    ).where(Blob.digest.in_(chunk))
                )
                found.update((row[0], _Location(*row[1:])) for row in rows)
        missing = [d for d in digests if d not in found]
        if missing:
            raise NotFoundError(f"artifact {missing[0]} is not in the store")
        return found

    def _data_key(self, digest: str, key_id: str, wrapped: bytes) -> bytes:
        return self.keyring.unwrap(key_id, wrapped, digest.encode())

    def _open(self, loc: _Location) -> BinaryIO:
        if loc.pack_offset is None or loc.pack_length is None:
            return self.backend.open(loc.object_name)
        return self.backend.open_range(loc.object_name, loc.pack_offset, loc.pack_length)

    def _open_current(self, digest: str, loc: _Location) -> tuple[BinaryIO, _Location]:
        """Open a blob where ``loc`` says, or where its row says now: ``yard gc`` may have moved a packed
        blob into a new pack and deleted the old one since ``loc`` was read. Returns the location opened: its
        row's key is the one to unwrap (the blob may also have been collected and stored again meanwhile)."""
        try:
            return self._open(loc), loc
        except NotFoundError:
            if loc.pack_offset is None:
                raise
            now = self._locate([digest])[digest]
            if (now.object_name, now.pack_offset) == (loc.object_name, loc.pack_offset):
                raise
            return self._open(now), now

    def iter_bytes(self, digest: str) -> Iterator[bytes]:
        """Authenticated plaintext chunks; the digest is re-checked before the last chunk is released."""
        f, loc = self._open_current(digest, self._locate([digest])[digest])
        with contextlib.closing(f):
            data_key = self._data_key(digest, loc.key_id, loc.wrapped_key)  # of the row that was opened
            with _naming(digest, loc.object_name):
                yield from iter_decrypt(f, data_key, expected_digest=digest)

    def get_many(self, pairs: Sequence[tuple[str, Path]], *, sync: bool = True) -> list[int]:
        """Write each digest's plaintext to its destination, each only once fully verified (temp file +
        rename). If one fails, the files before it are complete and verified; it and later ones are not
        written. Small batches fsync each file, larger ones flush each destination filesystem once;
        ``sync=False`` leaves that flush to the caller (a dataset checkout flushes once at the end)."""
        located = self._locate([d for d, _ in pairs])
        durable = sync and len(pairs) <= _DURABLE_EACH
        sizes: list[int] = []
        parents: dict[int, Path] = {}
        for digest, dest in pairs:
            sizes.append(self._decrypt_to(digest, located[digest], Path(dest), durable))
            if not durable and sync:  # one flush per destination filesystem at the end
                parents.setdefault(Path(dest).parent.stat().st_dev, Path(dest).parent)
        if not durable and sync:
            for parent in parents.values():
                sync_filesystem(parent)
        return sizes

    def get_to_file(self, digest: str, dest: Path) -> int:
        return self.get_many([(digest, dest)])[0]

    def _decrypt_to(self, digest: str, loc: _Location, dest: Path, durable: bool) -> int:
        if dest.is_dir():
            raise UsageError(f"output {dest} is a directory; give a file path to write the artifact to")
        check_output_target(dest)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(dest.name), dir=dest.parent)
        except OSError as exc:
            raise UsageError(f"cannot write output {dest}: {exc.strerror or exc}") from None
        try:
            with os.fdopen(fd, "wb") as out:
                f, loc = self._open_current(digest, loc)
                with contextlib.closing(f):
                    data_key = self._data_key(digest, loc.key_id, loc.wrapped_key)  # of the row opened
                    with _naming(digest, loc.object_name):
                        _, size = decrypt_stream(f, out, data_key, expected_digest=digest)
                if durable:
                    out.flush()
                    os.fsync(out.fileno())
            os.replace(tmp_name, dest)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return size


@contextlib.contextmanager
def _naming(digest: str, object_name: str) -> Iterator[None]:
    """Say which artifact is damaged and what to do about it."""
    try:
        yield
    except IntegrityError as exc:
        raise IntegrityError(
            f"artifact {digest} (object {object_name}) failed verification: {exc.message}; "
            "nothing was written — restore the object from a backup or put the original file again",
            digest=digest,
        ) from exc


# -- services: permission, residency, audit ------------------------------------------------------------


def _is_within(path: str, folder: str) -> bool:
    """Path(path).is_relative_to(folder) for realpath()'s normalised strings, at a fraction of its cost."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_outside_home(platform: Platform, *roots: Path, remedy: str) -> None:
    """Refuse a path that holds modelyard's home, folder store or master key, or lies in the store, the
    home's keys or the SQLite database: stored, the master key and the database would reach every reader,
    and writing the store while walking it never ends. Data kept elsewhere in the home (the quickstart's)
    is fine. ``remedy`` ends the message (what to do instead). The guarded places are resolved once for
    all ``roots`` (a batch of thousands of files paid for each file's own resolving of them)."""
    home = platform.settings.home
    store = getattr(platform.artifacts.backend, "root", None)  # a folder store; S3 has none here
    stores = [store] if isinstance(store, Path) else []
    db = platform.db._sqlite_file()
    held = [home, *stores, platform.settings.resolved_key_file]
    within = [*stores, home / "keys", *([Path(db + x) for x in ("", "-wal", "-shm")] if db else [])]
    places = [(os.path.realpath(p), True) for p in held] + [(os.path.realpath(p), False) for p in within]
    for root in roots:
        tree = os.path.realpath(root)
        for place, holds in places:
            if _is_within(place, tree) if holds else _is_within(tree, place):
                # The place itself reads as what it is ("master.key holds master.key" said nothing).
                where = "is" if tree == place else f"{'holds' if holds else 'lies in'} {place},"
                raise UsageError(
                    f"{root} {where} modelyard's own (its home, store, "
                    f"database or keys: the master key, database and objects); {remedy}"
                )


def put_artifacts(
    platform: Platform,
    ctx: Context,
    paths: Sequence[Path],
    *,
    names: Sequence[str] | None = None,
    region: str | None = None,
) -> list[ArtifactInfo]:
    """Encrypt and store files for ctx's project in one batch. The whole batch is refused (and audited)
    before any file is read when the role, a name, a file or the region is wrong; otherwise every file is
    recorded in one transaction with one audit record each."""
    paths = [Path(p) for p in paths]
    names = list(names) if names is not None else [p.name for p in paths]
    resource = f"artifact:{names[0]}" if len(names) == 1 else f"artifacts:{len(names)} files"
    platform.authorize(ctx, "artifact.write", resource)
    try:
        if not paths or len(names) != len(paths):
            raise UsageError(f"expected one name per file, got {len(names)} names for {len(paths)} files")
        ref_names = [safe_key(n, what="artifact name") for n in names]
        obj_region = region or ctx.region
        store = platform.artifacts
        if obj_region != store.region or ctx.region != store.region:
            raise ResidencyError(
                f"project {ctx.project!r} (region {ctx.region}) cannot write data of region "
                f"{obj_region!r} to the artifact store of region {store.region!r}; "
                "use a store in that region (YARD_ARTIFACT_URI) or keep the data in-region"
            )
        unreadable = [p for p in paths if not p.is_file()]
        if unreadable:
            raise UsageError(f"{unreadable[0]} is not a readable file")
        # `yard artifacts put .` from the folder holding the home: the master key too
        check_outside_home(platform, *paths, remedy="store files from outside it")
    except (UsageError, ResidencyError) as exc:
        raise platform.refuse(ctx, "artifact.write", resource, exc) from None
    since = generation(platform)  # before stage_files deduplicates against the stored digests
    try:
        staged = store.stage_files(paths, region=obj_region)
    except YardError as exc:  # read, upload or flush failed: the attempt is still on record
        raise platform.refuse(ctx, "artifact.write", resource, exc) from None
    except OSError as exc:
        failure = BackendError(f"storing {resource} failed: {exc}")
        raise platform.refuse(ctx, "artifact.write", resource, failure) from exc
    items: list[tuple[str, dict[str, Any] | None]] = [
        (f"artifact:{b.digest}", {"name": n, "size": b.size}) for b, n in zip(staged, ref_names, strict=True)
    ]
    if len(items) == 1:
        (resource, detail), extra = items[0], []
    else:
        detail = {"count": len(items), "bytes": sum(b.size for b in staged)}
        resource, extra = f"artifacts:{len(items)} files", items
    now = utcnow()
    claimed: set[str] = set()
    committed = False
    xid: str | None = None
    try:
        with platform.mutate(ctx, "artifact.write", resource, detail) as s:
            collected = fence(s, since)
            claimed = store.claim(s, staged, collected=collected)
            if collected:
                require_stored(s, [b.digest for b in staged], resource)
            xid = store.transaction_id(s)
            existing = _existing_refs(s, ctx, [b.digest for b in staged])
            rows = []
            for b, name in zip(staged, ref_names, strict=True):
                if (b.digest, name) not in existing:
                    existing.add((b.digest, name))
                    rows.append(
                        {
                            "project_id": ctx.project_id,
                            "digest": b.digest,
                            "name": name,
                            "region": obj_region,
                            "created_at": now,
                            "created_by": ctx.user,
                        }
                    )
            for chunk in chunks(rows):
                s.execute(insert(Artifact), list(chunk))
            if extra:
                platform.audit_many(ctx, "artifact.write", extra, "ok", session=s)
        committed = True
    finally:
        # Objects that lost a race for their digest, or whose transaction failed, are not referenced.
        try:
            store.discard(staged, committed=committed, claimed=claimed, xid=xid)
        except Exception as exc:
            if not committed:
                raise
            # Stored and recorded: a failed clean-up leaves unreferenced objects, not a failed put.
            log.warning("%s: stored, but removing unreferenced objects failed: %s", resource, exc)
    return [
        ArtifactInfo(b.digest, b.size, n, obj_region, now, ctx.user)
        for b, n in zip(staged, ref_names, strict=True)
    ]


def put_artifact(
    platform: Platform, ctx: Context, path: Path, *, name: str | None = None, region: str | None = None
) -> ArtifactInfo:
    """Encrypt and store one file (a batch of one)."""
    return put_artifacts(platform, ctx, [path], names=[name or Path(path).name], region=region)[0]


def _existing_refs(s: Session, ctx: Context, digests: Sequence[str]) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for chunk in chunks(sorted(set(digests))):
        found.update(
            (d, n)
            for d, n in s.execute(
                select(Artifact.digest, Artifact.name).where(
                    Artifact.project_id == ctx.project_id, Artifact.digest.in_(chunk)
                )
            )
        )
    return found


def _require_refs(platform: Platform, ctx: Context, digests: Sequence[str]) -> None:
    # Another project's digest reads as "not found": existence is not leaked across tenants.
    with platform.db.read() as s:
        present = {d for d, _ in _existing_refs(s, ctx, digests)}
    missing = [d for d in digests if d not in present]
    if missing:
        raise NotFoundError(f"artifact {missing[0]} not found in project {ctx.project!r}")


def get_artifacts(platform: Platform, ctx: Context, pairs: Sequence[tuple[str, Path]]) -> list[int]:
    """Decrypt and verify artifacts of ctx's project to files; returns their sizes."""
    digests = [check_digest(d) for d, _ in pairs]
    platform.authorize(
        ctx, "artifact.read", f"artifact:{digests[0]}" if len(digests) == 1 else f"artifacts:{len(digests)}"
    )
    _require_refs(platform, ctx, digests)
    return platform.artifacts.get_many(pairs)


def get_artifact(platform: Platform, ctx: Context, digest: str, dest: Path) -> int:
    return get_artifacts(platform, ctx, [(digest, dest)])[0]


def open_artifact(platform: Platform, ctx: Context, digest: str) -> Iterator[bytes]:
    check_digest(digest)
    platform.authorize(ctx, "artifact.read", f"artifact:{digest}")
    _require_refs(platform, ctx, [digest])
    return platform.artifacts.iter_bytes(digest)


def list_artifacts(platform: Platform, ctx: Context) -> list[ArtifactInfo]:
    platform.authorize(ctx, "artifact.read", f"project:{ctx.project}")
    with platform.db.read() as s:
        rows = s.execute(
            select(Artifact, Blob.size)
            .join(Blob, Blob.digest == Artifact.digest)
            .where(Artifact.project_id == ctx.project_id)
            .order_by(Artifact.created_at, Artifact.id)
        ).all()
    return [ArtifactInfo(a.digest, size, a.name, a.region, a.created_at, a.created_by) for a, size in rows]


def delete_artifact(platform: Platform, ctx: Context, digest: str) -> int:
    """Remove the project's references to a digest (the blob stays while any project still refers to it)."""
    check_digest(digest)
    with platform.mutate(ctx, "artifact.delete", f"artifact:{digest}") as s:
        removed = s.execute(
            delete(Artifact)
            .where(Artifact.project_id == ctx.project_id, Artifact.digest == digest)
            .returning(Artifact.id)
        ).all()
        if not removed:
            raise NotFoundError(f"artifact {digest} not found in project {ctx.project!r}")
        return len(removed)
