"""The installation's signing key rows: a row altered in the database is refused clearly."""

from __future__ import annotations

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
