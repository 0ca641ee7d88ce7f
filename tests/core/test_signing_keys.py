"""The installation's signing key rows: a row altered in the database is refused clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.core import Platform
from modelyard.core._models import SigningKey
from modelyard.core._signing import Signer, verify_signature
from modelyard.errors import IntegrityError


@pytest.mark.parametrize("public_key", ["not hex", "ab" * 31, "AB" * 32])
def test_a_signing_key_row_with_a_malformed_public_key_is_an_integrity_error(
    platform: Platform, public_key: str
) -> None:
    """A public key that is not 64 lower-case hex digits raised a bare ValueError out of verification
    (fromhex, or Ed25519's length check) instead of saying that the key row was altered."""
    signer = Signer(platform)
    signature = signer.sign(b"manifest")
    with platform.db.write() as s:
        row = s.get(SigningKey, signer.key_id)
        assert row is not None
        row.public_key = public_key
    refused = pytest.raises(IntegrityError, match=f"signing key {signer.key_id} is not this installation's")
    with Platform(platform.settings) as fresh, fresh.db.read() as s, refused:
        verify_signature(fresh, s, signer.key_id, b"manifest", signature, what="manifest")


@pytest.mark.postgres
def test_concurrent_first_uses_of_the_signing_key_agree_on_postgres(
    postgres_url: str, tmp_path: Path
) -> None:
    """A home made before the registry gets its signing key on first use, and concurrent first uses agree.
    On PostgreSQL the second one checked for the key before taking the lock the first one held, then
    inserted a second active key and failed with SQLAlchemy's unexpected IntegrityError."""
    import threading

    from sqlalchemy import delete, select

    from modelyard.core._keys import MASTER_KEY_ID
    from modelyard.core._models import Meta
    from modelyard.core._platform import utcnow
    from modelyard.core._signing import ACTIVE, ensure_signing_key
    from modelyard.testing import make_platform, wait_for_lock_wait

    p = make_platform(tmp_path / "home", database_url=postgres_url)
    try:
        with p.db.write() as s:  # as before the registry: no signing key yet
            s.execute(delete(Meta).where(Meta.key == ACTIVE))
            s.execute(delete(SigningKey))
        outcome: list[object] = []

        def first_use() -> None:
            try:
                outcome.append(ensure_signing_key(p, by="second"))
            except Exception as exc:
                outcome.append(exc)

        with p.db.write() as s:  # the first use, holding its lock until the second one waits on it
            s.execute(select(Meta).where(Meta.key == MASTER_KEY_ID).with_for_update())
            second = threading.Thread(target=first_use)
            second.start()
            wait_for_lock_wait(p.db.engine, second)
            s.add(Meta(key=ACTIVE, value="f" * 32))  # what the first use records (a stand-in key row)
            s.add(
                SigningKey(
                    id="f" * 32,
                    public_key="0" * 64,
                    master_key_id="x",
                    wrapped_private=b"x",
                    created_at=utcnow(),
                    created_by="first",
                )
            )
        second.join()
        assert outcome == ["f" * 32]
    finally:
        p.close()
