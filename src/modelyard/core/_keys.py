"""The master keyring and key rotation.

The metadata store records which master key every data key must be wrapped with (``meta.master_key_id``);
only a rotation changes it, in the same transaction that re-wraps every data key, so payloads are never
re-encrypted. Around that transaction, on disk: the new key is written to ``<key file>.next`` first and
moved over the key file after the commit, all under one exclusive lock (``<key file>.lock``), so two
rotations never interleave. A rotation interrupted between its commit and the move is settled the next
time a keyring is opened: the recorded id says which of the two files is the live key.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelyard.config import Settings
from modelyard.core._crypto import (
    MasterKey,
    load_master_key_file,
    unwrap_key,
    wrap_key,
    write_master_key_file,
)
from modelyard.core._db import MetadataStore
from modelyard.core._gc import fence
from modelyard.core._models import Blob, Meta, SigningKey
from modelyard.errors import MasterKeyError, YardError

if TYPE_CHECKING:
    from modelyard.core._platform import Context, Platform

MASTER_KEY_ID = "master_key_id"  # the meta row naming the live master key


def signing_aad(key_id: str) -> bytes:
    """What a wrapped model-signing key is bound to (so it cannot pass for a data key, or another key)."""
    return f"signing-key:{key_id}".encode()


@dataclass
class Keyring:
    current: MasterKey
    source: str  # "env" or the key file path
    pending: MasterKey | None = None  # a rotation's new key, until the rotation is settled
    # Keys this process held before a rotation replaced them: a data key it wrapped with one of them
    # (staged, not yet claimed) must still unwrap when the claim re-wraps it to the live key.
    retired: dict[str, MasterKey] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, settings: Settings) -> Keyring:
        if settings.master_key is not None:
            return cls(MasterKey.from_b64(settings.master_key.get_secret_value()), "env")
        path = settings.resolved_key_file
        if not path.exists():
            raise MasterKeyError(
                f"no master key: {path} does not exist and YARD_MASTER_KEY is not set; "
                "run `yard init` or point YARD_MASTER_KEY_FILE at your key file"
            )
        return cls.from_file(path)

    @classmethod
    def from_file(cls, path: Path) -> Keyring:
        pending_path = _pending_path(path)
        pending = load_master_key_file(pending_path) if pending_path.exists() else None
        return cls(load_master_key_file(path), str(path), pending)

    def known(self, key_id: str) -> MasterKey | None:
        for key in (self.current, self.pending):
            if key is not None and key.key_id == key_id:
                return key
        return self.retired.get(key_id)

    def replace(self, current: MasterKey, pending: MasterKey | None) -> None:
        """Switch to ``current`` (and ``pending``), keeping the keys held until now as retired."""
        for key in (self.current, self.pending):
            if key is not None and key.key_id not in (current.key_id, pending and pending.key_id):
                self.retired[key.key_id] = key
        self.current, self.pending = current, pending

    def unwrap(self, key_id: str, wrapped: bytes, aad: bytes) -> bytes:
        key = self.known(key_id)
        if key is None and self.source != "env":
            # Another process may have rotated the master key since this one read the file: a server or
            # worker must keep reading (writes already re-read it, see ArtifactStore).
            with contextlib.suppress(MasterKeyError, OSError):
                self.refresh()
            key = self.known(key_id)
        # With an id still unknown, unwrap_key explains the mismatch naming both ids.
        return unwrap_key(key or self.current, key_id, wrapped, aad)

    def wrap(self, data_key: bytes, aad: bytes) -> tuple[str, bytes]:
        return self.current.key_id, wrap_key(self.current, data_key, aad)

    def refresh(self) -> None:
        """Re-read the key file (another process may have rotated the key)."""
        if self.source != "env":
            fresh = Keyring.from_file(Path(self.source))
            self.replace(fresh.current, fresh.pending)


def _pending_path(path: Path) -> Path:
    return path.with_name(path.name + ".next")


@contextlib.contextmanager
def _rotation_lock(path: Path) -> Iterator[None]:
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def recorded_key_id(s: Session, *, lock: bool = False) -> str | None:
    stmt = select(Meta).where(Meta.key == MASTER_KEY_ID)
    if lock:  # FOR UPDATE on PostgreSQL; SQLite writers are serialised anyway
        stmt = stmt.with_for_update()
    row = s.scalars(stmt).one_or_none()
    return row.value if row else None


def settle(keyring: Keyring, db: MetadataStore) -> None:
    """Finish or discard a rotation that stopped between its commit and the key-file move."""
    if keyring.source == "env" or keyring.pending is None:
        return
    path = Path(keyring.source)
    with _rotation_lock(path):
        _settle_locked(keyring, db, path)


def _settle_locked(keyring: Keyring, db: MetadataStore, path: Path) -> None:
    keyring.refresh()  # under the lock: a rotation that was running may have finished meanwhile
    if keyring.pending is None:
        return
    with db.read() as s:
        recorded = recorded_key_id(s)
    if recorded == keyring.pending.key_id:  # committed: the new key is live
        os.replace(_pending_path(path), path)
        keyring.replace(keyring.pending, None)
    elif recorded in (None, keyring.current.key_id):  # never committed: the new key protects nothing
        _pending_path(path).unlink()
        keyring.pending = None
    else:
        raise MasterKeyError(
            f"the store's data keys are wrapped with master key {recorded}, but {path} holds "
            f"{keyring.current.key_id} and {_pending_path(path)} holds {keyring.pending.key_id}; "
            "restore the key file with that id"
        )


def rotate(
    keyring: Keyring, db: MetadataStore, record: Callable[[Session, str, str, int], None] | None = None
) -> tuple[str, str, int]:
    """Re-wrap every data key under a fresh master key. Returns (old id, new id, objects re-wrapped).
    ``record(session, old id, new id, count)`` writes the audit record in the rotation's transaction."""
    if keyring.source == "env":
        raise MasterKeyError(
            "the master key comes from YARD_MASTER_KEY, so `yard keys rotate` cannot replace it; "
            "store it in a key file (YARD_MASTER_KEY_FILE) and unset YARD_MASTER_KEY, then rotate"
        )
    path = Path(keyring.source)
    with _rotation_lock(path):
        _settle_locked(keyring, db, path)
        old, new = keyring.current, MasterKey.generate()
        write_master_key_file(_pending_path(path), new)  # never overwrites: settled above
        keyring.pending = new
        count = 0
        try:
            with db.write() as s:
                fence(s, 0)  # a collection deleting rows while this rewrites them all could deadlock
                recorded = recorded_key_id(s, lock=True)
                if recorded not in (None, old.key_id):
                    raise MasterKeyError(
                        f"the store records master key {recorded}, but this key file holds {old.key_id}; "
                        "rotate from a machine with the current key"
                    )
                for blob in s.execute(select(Blob).execution_options(yield_per=1000)).scalars():
                    aad = blob.digest.encode()
                    data_key = keyring.unwrap(blob.key_id, blob.wrapped_key, aad)
                    blob.wrapped_key = wrap_key(new, data_key, aad)
                    blob.key_id = new.key_id
                    count += 1
                for key in s.execute(select(SigningKey)).scalars():  # model-signing keys, same envelope
                    aad = signing_aad(key.id)
                    private = keyring.unwrap(key.master_key_id, key.wrapped_private, aad)
                    key.wrapped_private, key.master_key_id = wrap_key(new, private, aad), new.key_id
                s.merge(Meta(key=MASTER_KEY_ID, value=new.key_id))
                if record is not None:
                    record(s, old.key_id, new.key_id, count)
        except BaseException:
            # If the commit went through after all (acknowledgement lost), settling keeps the new key.
            _settle_locked(keyring, db, path)
            raise
        _settle_locked(keyring, db, path)
    return old.key_id, new.key_id, count


def rotate_master_key(platform: Platform, ctx: Context) -> tuple[str, str, int]:
    """Service: installation admins only, audited with both key ids (never the keys)."""
    platform.authorize_installation(ctx, "key.rotate", "key:master")

    def record(s: Session, old: str, new: str, count: int) -> None:  # commits with the new key, or not at all
        platform.audit(ctx, "key.rotate", "key:master", "ok", {"old": old, "new": new, "objects": count}, s)

    try:
        return rotate(platform.keyring, platform.db, record)
    except YardError as exc:
        raise platform.refuse(ctx, "key.rotate", "key:master", exc) from None
    except Exception as exc:
        platform.audit(ctx, "key.rotate", "key:master", "error", {"message": f"{type(exc).__name__}: {exc}"})
        raise
