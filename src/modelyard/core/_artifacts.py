"""Encrypted, content-addressed artifact store, and the artifact services built on it.

Layout: ``objects/<d[:2]>/<digest>.<uuid>`` in the blob backend holds the encrypted payload; the ``blobs``
table maps the plaintext digest to that object and its wrapped data key. Every put writes a fresh, uniquely
named object and then claims the digest with an insert-if-absent, so concurrent puts of the same bytes
never overwrite each other: the loser deletes its copy.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from modelyard.core._blobs import BlobBackend
from modelyard.core._crypto import decrypt_stream, encrypt_stream, iter_decrypt, new_data_key
from modelyard.core._db import MetadataStore
from modelyard.core._keys import Keyring
from modelyard.core._models import Artifact, Blob
from modelyard.core._paths import safe_key
from modelyard.core._platform import Context, Platform, utcnow
from modelyard.errors import IntegrityError, NotFoundError, ResidencyError, UsageError

_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")


def check_digest(digest: str) -> str:
    if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
        raise UsageError(f"{digest!r} is not an artifact digest; expected 64 lower-case hex characters")
    return digest


@dataclass(frozen=True)
class StagedBlob:
    """An encrypted payload written to the backend, not yet claimed in the metadata store."""

    digest: str
    size: int
    object_name: str
    key_id: str
    wrapped_key: bytes
    region: str


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
    def stage(self, src: BinaryIO, *, region: str) -> StagedBlob:
        """Encrypt ``src`` in one streaming pass (hash + AES-GCM) and upload it under a unique name."""
        if region != self.region:
            raise ResidencyError(
                f"data of region {region!r} cannot be written to the artifact store of region "
                f"{self.region!r}; use a store in {region!r} (YARD_ARTIFACT_URI) or keep the data in-region"
            )
        data_key = new_data_key()
        fd, tmp_name = tempfile.mkstemp(prefix=".put-", dir=self.backend.staging_dir())
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                digest, size = encrypt_stream(src, out, data_key)
                out.flush()
                os.fsync(out.fileno())
            object_name = f"objects/{digest[:2]}/{digest}.{uuid.uuid4().hex}"
            key_id, wrapped = self.keyring.wrap(data_key, digest.encode())
            if not self.has_blob(digest):  # dedup: known bytes are not uploaded again
                self.backend.put_file(object_name, tmp)
            else:
                object_name = ""
            return StagedBlob(digest, size, object_name, key_id, wrapped, region)
        finally:
            tmp.unlink(missing_ok=True)

    def claim(self, s: Session, staged: StagedBlob) -> bool:
        """Record the staged blob unless its digest is already known. True if this call stored it."""
        if not staged.object_name:
            return False
        values = {
            "digest": staged.digest,
            "size": staged.size,
            "object_name": staged.object_name,
            "key_id": staged.key_id,
            "wrapped_key": staged.wrapped_key,
            "region": staged.region,
            "created_at": utcnow(),
        }
        insert = pg_insert if self.db.dialect == "postgresql" else sqlite_insert
        # RETURNING, not rowcount: psycopg reports -1 for ORM-enabled inserts.
        stmt = insert(Blob).values(**values).on_conflict_do_nothing(index_elements=["digest"])
        return s.execute(stmt.returning(Blob.digest)).first() is not None

    def discard(self, staged: StagedBlob) -> None:
        if staged.object_name:
            self.backend.delete(staged.object_name)

    def put(self, src: BinaryIO, *, region: str | None = None) -> str:
        """Store bytes without a project reference (internal use: manifests, checkpoints)."""
        staged = self.stage(src, region=region or self.region)
        with self.db.write() as s:
            stored = self.claim(s, staged)
        if not stored:
            self.discard(staged)
        return staged.digest

    # -- read -------------------------------------------------------------------------------------------
    def has_blob(self, digest: str) -> bool:
        with self.db.read() as s:
            return s.get(Blob, digest) is not None

    def _locate(self, digest: str) -> tuple[str, bytes]:
        """The object's name and its unwrapped data key."""
        check_digest(digest)
        with self.db.read() as s:
            blob = s.get(Blob, digest)
            if blob is None:
                raise NotFoundError(f"artifact {digest} is not in the store")
            object_name, key_id, wrapped = blob.object_name, blob.key_id, blob.wrapped_key
        return object_name, self.keyring.unwrap(key_id, wrapped, digest.encode())

    def iter_bytes(self, digest: str) -> Iterator[bytes]:
        """Authenticated plaintext chunks; the digest is re-checked before the last chunk is released."""
        object_name, data_key = self._locate(digest)
        with _naming(digest, object_name), contextlib.closing(self.backend.open(object_name)) as f:
            yield from iter_decrypt(f, data_key, expected_digest=digest)

    def get_to_file(self, digest: str, dest: Path) -> int:
        """Write the plaintext to ``dest`` only once it is fully verified (temp file + fsync + rename)."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        object_name, data_key = self._locate(digest)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        try:
            with (
                _naming(digest, object_name),
                os.fdopen(fd, "wb") as out,
                contextlib.closing(self.backend.open(object_name)) as f,
            ):
                _, size = decrypt_stream(f, out, data_key, expected_digest=digest)
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


def put_artifact(
    platform: Platform, ctx: Context, path: Path, *, name: str | None = None, region: str | None = None
) -> ArtifactInfo:
    """Encrypt and store a file for ctx's project. Refused (and audited) before reading anything when the
    role, the name or the region is wrong."""
    path = Path(path)
    resource = f"artifact:{name or path.name}"
    platform.authorize(ctx, "artifact.write", resource)
    try:
        ref_name = safe_key(name or path.name, what="artifact name")
        obj_region = region or ctx.region
        store = platform.artifacts
        if obj_region != store.region or ctx.region != store.region:
            raise ResidencyError(
                f"project {ctx.project!r} (region {ctx.region}) cannot write data of region "
                f"{obj_region!r} to the artifact store of region {store.region!r}; "
                "use a store in that region (YARD_ARTIFACT_URI) or keep the data in-region"
            )
        if not path.is_file():
            raise UsageError(f"{path} is not a readable file")
    except (UsageError, ResidencyError) as exc:
        raise platform.refuse(ctx, "artifact.write", resource, exc) from None
    with path.open("rb") as src:
        staged = store.stage(src, region=obj_region)
    resource = f"artifact:{staged.digest}"
    stored = committed = False
    try:
        with platform.mutate(ctx, "artifact.write", resource, {"name": ref_name, "size": staged.size}) as s:
            stored = store.claim(s, staged)
            existing = s.execute(
                select(Artifact).where(
                    Artifact.project_id == ctx.project_id,
                    Artifact.digest == staged.digest,
                    Artifact.name == ref_name,
                )
            ).scalar_one_or_none()
            ref = existing or Artifact(
                project_id=ctx.project_id,
                digest=staged.digest,
                name=ref_name,
                region=obj_region,
                created_at=utcnow(),
                created_by=ctx.user,
            )
            s.add(ref)
            s.flush()
            info = ArtifactInfo(ref.digest, staged.size, ref.name, ref.region, ref.created_at, ref.created_by)
        committed = True
    finally:
        if not (stored and committed):  # another writer owns this digest, or our transaction failed
            store.discard(staged)
    return info


def _ref(s: Session, ctx: Context, digest: str) -> Artifact:
    # Another project's digest reads as "not found": existence is not leaked across tenants.
    ref = s.execute(
        select(Artifact).where(Artifact.project_id == ctx.project_id, Artifact.digest == digest).limit(1)
    ).scalar_one_or_none()
    if ref is None:
        raise NotFoundError(f"artifact {digest} not found in project {ctx.project!r}")
    return ref


def get_artifact(platform: Platform, ctx: Context, digest: str, dest: Path) -> int:
    check_digest(digest)
    platform.authorize(ctx, "artifact.read", f"artifact:{digest}")
    with platform.db.read() as s:
        _ref(s, ctx, digest)
    return platform.artifacts.get_to_file(digest, dest)


def open_artifact(platform: Platform, ctx: Context, digest: str) -> Iterator[bytes]:
    check_digest(digest)
    platform.authorize(ctx, "artifact.read", f"artifact:{digest}")
    with platform.db.read() as s:
        _ref(s, ctx, digest)
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
        _ref(s, ctx, digest)
        removed = s.execute(
            delete(Artifact)
            .where(Artifact.project_id == ctx.project_id, Artifact.digest == digest)
            .returning(Artifact.id)
        ).all()
        return len(removed)
