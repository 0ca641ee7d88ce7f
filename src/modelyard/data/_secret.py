"""The per-project secret that salts PII hashing.

Salted hashing keeps joins working (the same e-mail hashes to the same token in every table of the
project) while a dictionary attack needs the secret. The secret is 32 random bytes created on first use
and stored as an encrypted blob, its digest recorded in ``meta`` under ``pii_salt:<project id>``. Stored
as a blob (not a meta value wrapped by the master key) because master-key rotation re-wraps every
blob's data key: a value wrapped outside the blobs table would become unreadable after a rotation.
"""

from __future__ import annotations

import io
import secrets

from sqlalchemy import select

from modelyard.core import _gc
from modelyard.core._db import insert_for
from modelyard.core._models import Meta
from modelyard.core._platform import Context, Platform
from modelyard.errors import IntegrityError

SALT_BYTES = 32


def _key(ctx: Context) -> str:
    return f"pii_salt:{ctx.project_id}"


def project_salt(platform: Platform, ctx: Context) -> bytes:
    """The project's salt, created on first use. Concurrent first uses agree: the first recorded wins."""
    store = platform.artifacts
    digest = platform.meta(_key(ctx))
    if digest is None:
        since = _gc.generation(platform)
        candidate = store.put(io.BytesIO(secrets.token_bytes(SALT_BYTES)), region=store.region)
        with platform.db.write() as s:
            collected = _gc.fence(s, since)
            s.execute(insert_for(s)(Meta).values(key=_key(ctx), value=candidate).on_conflict_do_nothing())
            digest = s.execute(select(Meta.value).where(Meta.key == _key(ctx))).scalar_one()
            if collected:  # a collection between the put and this insert may have taken it
                _gc.require_stored(s, [digest], f"the PII salt of project {ctx.project!r}")
    salt = b"".join(store.iter_bytes(digest))  # verified against its digest on read
    if len(salt) != SALT_BYTES:
        raise IntegrityError(f"the PII salt of project {ctx.project!r} is malformed")
    return salt
