"""The installation's Ed25519 signing key: model manifests and attestations are signed with it.

The private key (32 bytes) is wrapped by the master key exactly like a data key (AES-256-GCM, bound to the
key's id) and re-wrapped by ``yard keys rotate``; its public half is stored beside it for anyone to verify
with and listed by ``yard keys ls``. ``meta.signing_key`` names the key new signatures use. ``yard init``
creates it; a home made before the registry existed gets one on first use, and concurrent first uses
agree (the first recorded wins).

Signatures are over exact bytes (canonical JSON: sorted keys, no spaces, UTF-8), which is also how those
bytes are stored, so verifying never depends on re-serialising.
"""

from __future__ import annotations

import hashlib
import json
import re
import weakref
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from sqlalchemy import select
from sqlalchemy.orm import Session

from modelyard.core._crypto import wrap_key
from modelyard.core._keys import recorded_key_id, signing_aad
from modelyard.core._models import Meta, SigningKey
from modelyard.core._platform import Platform, os_user, utcnow
from modelyard.errors import IntegrityError, MasterKeyError

ACTIVE = "signing_key"  # meta row naming the key new signatures use
# Per platform: key id -> public key (hex) of rows already shown to belong to this installation.
_TRUSTED: weakref.WeakKeyDictionary[Platform, dict[str, str]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class PublicKeyInfo:
    id: str
    public_key: str  # hex
    created_at: datetime
    created_by: str
    active: bool


def canonical(obj: Any) -> bytes:
    """The one serialisation that is signed and stored."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _key_id(public: bytes) -> str:
    return hashlib.sha256(public).hexdigest()[:32]


def _public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def ensure_signing_key(platform: Platform, *, by: str | None = None) -> str:
    """The active key's id, creating the key if the installation has none yet."""
    active = platform.meta(ACTIVE)
    if active is not None:
        return active
    key = Ed25519PrivateKey.generate()
    raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    public = _public_bytes(key)
    kid = _key_id(public)
    keyring = platform.keyring
    with platform.db.write() as s:
        # Wrap with the master key the store records, under its lock, so a rotation that ran since this
        # process loaded its keyring cannot leave the key wrapped with a retired master. Locked before the
        # check: on PostgreSQL that also orders concurrent first uses, so the later one finds the key made.
        recorded = recorded_key_id(s, lock=True) or keyring.current.key_id
        if s.get(Meta, ACTIVE) is None:
            if keyring.known(recorded) is None:
                keyring.refresh()
            master = keyring.known(recorded)
            if master is None:
                raise MasterKeyError(f"the store's master key is {recorded}; this machine's key is not it")
            s.add(
                SigningKey(
                    id=kid,
                    public_key=public.hex(),
                    master_key_id=master.key_id,
                    wrapped_private=wrap_key(master, raw, signing_aad(kid)),
                    created_at=utcnow(),
                    created_by=by or os_user(),
                )
            )
            s.add(Meta(key=ACTIVE, value=kid))
            s.flush()
        return str(s.execute(select(Meta.value).where(Meta.key == ACTIVE)).scalar_one())


class Signer:
    """Signs with the installation's active key."""

    def __init__(self, platform: Platform) -> None:
        self.key_id = ensure_signing_key(platform)
        with platform.db.read() as s:
            row = s.get(SigningKey, self.key_id)
            if row is None:
                raise IntegrityError(f"signing key {self.key_id} is recorded as active but missing")
            master_id, wrapped, public = row.master_key_id, row.wrapped_private, row.public_key
        raw = platform.keyring.unwrap(master_id, wrapped, signing_aad(self.key_id))
        self._key = Ed25519PrivateKey.from_private_bytes(raw)
        if _public_bytes(self._key).hex() != public:
            raise IntegrityError(f"signing key {self.key_id}: the private key does not match its public key")

    def sign(self, data: bytes) -> str:
        return self._key.sign(data).hex()


def _trusted_public_key(platform: Platform, row: SigningKey) -> Ed25519PublicKey:
    """The row's public key, once its private half is shown to be wrapped by this installation's master
    key. Without that check anyone able to write the database could add a key of their own, point a record
    at it and sign whatever they liked; with it a key row is as hard to forge as the master key."""
    cache = _TRUSTED.setdefault(platform, {})
    if cache.get(row.id) != row.public_key:
        problem = None
        if not re.fullmatch(r"[0-9a-f]{64}", row.public_key or ""):
            problem = "its public key is not 32 bytes of hex"
        elif _key_id(bytes.fromhex(row.public_key)) != row.id:
            problem = "its id is not the digest of its public key"
        else:
            try:
                raw = platform.keyring.unwrap(row.master_key_id, row.wrapped_private, signing_aad(row.id))
                if _public_bytes(Ed25519PrivateKey.from_private_bytes(raw)).hex() != row.public_key:
                    problem = "its private half does not match its public key"
            except (IntegrityError, MasterKeyError, ValueError):
                problem = "its private half does not unwrap with this installation's master key"
        if problem:
            raise IntegrityError(
                f"signing key {row.id} is not this installation's: {problem} (a key row was added or "
                "altered in the database)",
                key_id=row.id,
            )
        cache[row.id] = row.public_key
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(row.public_key))


def verify_signature(
    platform: Platform, s: Session, key_id: str, data: bytes, signature: str, *, what: str
) -> None:
    """Raise IntegrityError unless ``signature`` (hex) is a valid signature of ``data`` by ``key_id``, a key
    of this installation."""
    row = s.get(SigningKey, key_id)
    if row is None:
        raise IntegrityError(f"{what}: signed by unknown key {key_id!r}", key_id=key_id)
    try:
        public = _trusted_public_key(platform, row)
    except IntegrityError as exc:
        raise IntegrityError(f"{what}: {exc.message}", key_id=key_id) from None
    try:
        public.verify(bytes.fromhex(signature), data)
    except (InvalidSignature, ValueError):
        raise IntegrityError(
            f"{what}: the signature does not match (key {key_id}); the record or its manifest was altered",
            key_id=key_id,
        ) from None


def list_signing_keys(platform: Platform) -> list[PublicKeyInfo]:
    active = platform.meta(ACTIVE)
    with platform.db.read() as s:
        rows = s.execute(select(SigningKey).order_by(SigningKey.created_at)).scalars().all()
        return [PublicKeyInfo(r.id, r.public_key, r.created_at, r.created_by, r.id == active) for r in rows]
