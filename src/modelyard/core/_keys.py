"""The master keyring and key rotation.

Rotation re-wraps every data key under a new master key in one database transaction; payloads are never
re-encrypted. The new key is written to ``<key file>.next`` before the transaction and moved over the old
key file after it, so a crash at any point leaves a keyring that still opens every object; the next load
finishes or discards the half-done rotation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from modelyard.config import Settings
from modelyard.core._crypto import (
    MasterKey,
    load_master_key_file,
    unwrap_key,
    wrap_key,
    write_master_key_file,
)
from modelyard.core._db import MetadataStore
from modelyard.core._models import Blob
from modelyard.errors import MasterKeyError, YardError

if TYPE_CHECKING:
    from modelyard.core._platform import Context, Platform


@dataclass
class Keyring:
    current: MasterKey
    source: str  # "env" or the key file path
    pending: MasterKey | None = None  # a rotation's new key, until the rotation completes

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
        pending_path = _pending_path(path)
        pending = load_master_key_file(pending_path) if pending_path.exists() else None
        return cls(load_master_key_file(path), str(path), pending)

    def for_id(self, key_id: str) -> MasterKey:
        if self.pending is not None and key_id == self.pending.key_id:
            return self.pending
        return self.current  # unwrap_key explains a mismatch with both ids

    def unwrap(self, key_id: str, wrapped: bytes, aad: bytes) -> bytes:
        return unwrap_key(self.for_id(key_id), key_id, wrapped, aad)

    def wrap(self, data_key: bytes, aad: bytes) -> tuple[str, bytes]:
        return self.current.key_id, wrap_key(self.current, data_key, aad)


def _pending_path(path: Path) -> Path:
    return path.with_name(path.name + ".next")


def finish_pending_rotation(keyring: Keyring, db: MetadataStore) -> None:
    """Complete (or discard) a rotation that crashed between its steps."""
    if keyring.pending is None or keyring.source == "env":
        return
    path = Path(keyring.source)
    with db.read() as s:
        under_new = s.scalar(select(func.count()).where(Blob.key_id == keyring.pending.key_id)) or 0
        under_old = s.scalar(select(func.count()).where(Blob.key_id == keyring.current.key_id)) or 0
    if under_new and not under_old:
        os.replace(_pending_path(path), path)
        keyring.current, keyring.pending = keyring.pending, None
    elif not under_new:
        _pending_path(path).unlink()
        keyring.pending = None


def rotate(keyring: Keyring, db: MetadataStore) -> tuple[str, str, int]:
    """Re-wrap every data key under a fresh master key. Returns (old id, new id, objects re-wrapped)."""
    if keyring.source == "env":
        raise MasterKeyError(
            "the master key comes from YARD_MASTER_KEY, so `yard keys rotate` cannot replace it; "
            "store it in a key file (YARD_MASTER_KEY_FILE) and unset YARD_MASTER_KEY, then rotate"
        )
    finish_pending_rotation(keyring, db)
    path = Path(keyring.source)
    old, new = keyring.current, MasterKey.generate()
    write_master_key_file(_pending_path(path), new, overwrite=True)
    keyring.pending = new
    count = 0
    with db.write() as s:
        for blob in s.execute(select(Blob).execution_options(yield_per=1000)).scalars():
            aad = blob.digest.encode()
            data_key = keyring.unwrap(blob.key_id, blob.wrapped_key, aad)
            blob.wrapped_key = wrap_key(new, data_key, aad)
            blob.key_id = new.key_id
            count += 1
    os.replace(_pending_path(path), path)
    keyring.current, keyring.pending = new, None
    return old.key_id, new.key_id, count


def rotate_master_key(platform: Platform, ctx: Context) -> tuple[str, str, int]:
    """Service: admin only, audited with both key ids (never the keys)."""
    platform.authorize(ctx, "key.rotate", "key:master")
    try:
        old_id, new_id, count = rotate(platform.keyring, platform.db)
    except YardError as exc:
        raise platform.refuse(ctx, "key.rotate", "key:master", exc) from None
    platform.audit(ctx, "key.rotate", "key:master", "ok", {"old": old_id, "new": new_id, "objects": count})
    return old_id, new_id, count
