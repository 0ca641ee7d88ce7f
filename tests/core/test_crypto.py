from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelyard.core import _crypto
from modelyard.core._crypto import (
    DEFAULT_CHUNK_SIZE,
    MAGIC,
    MasterKey,
    decrypt_stream,
    encrypt_stream,
    iter_decrypt,
    load_master_key_file,
    new_data_key,
    unwrap_key,
    wrap_key,
    write_master_key_file,
)
from modelyard.errors import IntegrityError, MasterKeyError, UsageError

CHUNK = 64
HEADER = len(MAGIC) + 4 + 7
TAG = 16


def encrypt(data: bytes, key: bytes, chunk_size: int = CHUNK) -> bytes:
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(data), out, key, chunk_size=chunk_size)
    return out.getvalue()


def decrypt(blob: bytes, key: bytes, expected_digest: str | None = None) -> bytes:
    return b"".join(iter_decrypt(io.BytesIO(blob), key, expected_digest=expected_digest))


def chunks_of(blob: bytes, chunk_size: int = CHUNK) -> list[bytes]:
    body = blob[HEADER:]
    step = chunk_size + TAG
    return [body[i : i + step] for i in range(0, len(body), step)]


@pytest.fixture
def key() -> bytes:
    return new_data_key()


# --- master key ---------------------------------------------------------------------------------


def test_master_key_id_is_derived_from_the_secret() -> None:
    master = MasterKey.generate()
    assert len(master.secret) == 32
    expected = hashlib.sha256(b"modelyard/master-key-id/v1" + master.secret).hexdigest()[:16]
    assert master.key_id == expected
    assert MasterKey.generate().key_id != master.key_id


def test_repr_does_not_show_the_secret() -> None:
    master = MasterKey.generate()
    shown = repr(master) + str(master)
    assert master.key_id in shown
    assert master.to_b64() not in shown and repr(master.secret) not in shown and "secret" not in shown


def test_b64_round_trip() -> None:
    master = MasterKey.generate()
    assert MasterKey.from_b64(master.to_b64()) == master
    assert MasterKey.from_b64(master.to_b64() + "\n") == master  # env vars often keep a newline


@pytest.mark.parametrize(
    ("text", "reason"),
    [("not base64!", "not valid base64"), ("YWJj", "decodes to 3 bytes"), ("", "decodes to 0 bytes")],
)
def test_bad_b64_is_a_clear_error(text: str, reason: str) -> None:
    with pytest.raises(MasterKeyError, match=reason):
        MasterKey.from_b64(text)


def test_a_key_id_that_does_not_match_is_refused() -> None:
    with pytest.raises(MasterKeyError, match="does not belong"):
        MasterKey(key_id="0" * 16, secret=os.urandom(32))
    with pytest.raises(MasterKeyError, match="32 bytes"):
        MasterKey.from_secret(os.urandom(16))


# --- key file -----------------------------------------------------------------------------------


def test_key_file_round_trip_with_private_modes(tmp_path: Path) -> None:
    path = tmp_path / "home" / "master.key"
    master = MasterKey.generate()
    write_master_key_file(path, master)
    assert load_master_key_file(path) == master
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert json.loads(path.read_text()) == {"version": 1, "key_id": master.key_id, "key": master.to_b64()}
    assert os.listdir(path.parent) == ["master.key"]  # no temp file left behind


def test_key_file_is_private_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_master_key_file(tmp_path / "k" / "master.key", MasterKey.generate())
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k" / "master.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o700


def test_existing_key_file_is_not_overwritten_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    first, second = MasterKey.generate(), MasterKey.generate()
    write_master_key_file(path, first)
    with pytest.raises(MasterKeyError, match="already exists"):
        write_master_key_file(path, second)
    assert load_master_key_file(path) == first
    write_master_key_file(path, second, overwrite=True)
    assert load_master_key_file(path) == second
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_key_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "master.key"
    write_master_key_file(path, MasterKey.generate())
    path.chmod(mode)
    with pytest.raises(MasterKeyError, match=re.escape(f"chmod 600 {path}")):
        load_master_key_file(path)


def _valid_doc() -> dict[str, object]:
    master = MasterKey.generate()
    return {"version": 1, "key_id": master.key_id, "key": master.to_b64()}


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "malformed"),
        (b"not json", "malformed"),
        (b"[1, 2]", "malformed"),
        (b"\xff\xfe", "malformed"),
        (json.dumps({"version": 1}).encode(), "malformed"),
        (json.dumps({**_valid_doc(), "version": 2}).encode(), "unsupported version 2"),
        (json.dumps({**_valid_doc(), "key": "!!"}).encode(), "not valid base64"),
        (json.dumps({**_valid_doc(), "key_id": "0" * 16}).encode(), "does not match its key"),
        (b" " * (70 << 10), "malformed"),
    ],
)
def test_malformed_key_file_is_a_clear_error(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "master.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, content)
    os.close(fd)
    with pytest.raises(MasterKeyError, match=reason):
        load_master_key_file(path)


def test_missing_key_file_says_how_to_fix_it(tmp_path: Path) -> None:
    with pytest.raises(MasterKeyError, match="yard init"):
        load_master_key_file(tmp_path / "nope.key")


# --- wrapping -----------------------------------------------------------------------------------


def test_wrap_unwrap_round_trip(key: bytes) -> None:
    master = MasterKey.generate()
    wrapped = wrap_key(master, key, b"blob:abc")
    assert unwrap_key(master, master.key_id, wrapped, b"blob:abc") == key
    assert wrap_key(master, key, b"blob:abc") != wrapped  # fresh nonce every time
    assert key not in wrapped


def test_wrong_master_key_id_names_both_keys(key: bytes) -> None:
    old, new = MasterKey.generate(), MasterKey.generate()
    wrapped = wrap_key(old, key, b"")
    with pytest.raises(MasterKeyError) as caught:
        unwrap_key(new, old.key_id, wrapped, b"")
    message = str(caught.value)
    assert f"encrypted under master key {old.key_id}" in message
    assert f"configured master key is {new.key_id}" in message
    assert "YARD_MASTER_KEY" in message


def test_wrong_master_key_material_or_aad_fails_the_tag(key: bytes) -> None:
    master, other = MasterKey.generate(), MasterKey.generate()
    wrapped = wrap_key(master, key, b"aad")
    with pytest.raises(MasterKeyError, match="cannot unwrap"):
        unwrap_key(other, other.key_id, wrapped, b"aad")
    with pytest.raises(MasterKeyError, match="cannot unwrap"):
        unwrap_key(master, master.key_id, wrapped, b"other aad")
    tampered = bytearray(wrapped)
    tampered[-1] ^= 1
    with pytest.raises(MasterKeyError, match="cannot unwrap"):
        unwrap_key(master, master.key_id, bytes(tampered), b"aad")


def test_malformed_wrapped_key_is_an_integrity_error(key: bytes) -> None:
    master = MasterKey.generate()
    wrapped = wrap_key(master, key, b"")
    for bad in (wrapped[:-1], wrapped + b"x", b"\x02" + wrapped[1:], b""):
        with pytest.raises(IntegrityError, match="malformed"):
            unwrap_key(master, master.key_id, bad, b"")


def test_data_keys_must_be_256_bit() -> None:
    master = MasterKey.generate()
    with pytest.raises(MasterKeyError, match="32 bytes"):
        wrap_key(master, os.urandom(16), b"")
    with pytest.raises(MasterKeyError, match="32 bytes"):
        encrypt(b"x", os.urandom(16))


# --- streaming ----------------------------------------------------------------------------------

SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5]


@pytest.mark.parametrize("size", SIZES)
def test_round_trip(key: bytes, size: int) -> None:
    data = os.urandom(size)
    src, out = io.BytesIO(data), io.BytesIO()
    digest, n = encrypt_stream(src, out, key, chunk_size=CHUNK)
    assert (digest, n) == (hashlib.sha256(data).hexdigest(), size)
    blob = out.getvalue()
    assert len(blob) == HEADER + max(1, math.ceil(size / CHUNK)) * TAG + size
    chunks = list(iter_decrypt(io.BytesIO(blob), key, expected_digest=digest))
    assert b"".join(chunks) == data
    assert all(0 < len(c) <= CHUNK for c in chunks) or size == 0
    plain = io.BytesIO()
    assert decrypt_stream(io.BytesIO(blob), plain, key, expected_digest=digest) == (digest, size)
    assert plain.getvalue() == data


@pytest.mark.parametrize("size", [0, 1, DEFAULT_CHUNK_SIZE, DEFAULT_CHUNK_SIZE + 1])
def test_round_trip_with_default_chunks(key: bytes, size: int) -> None:
    data = os.urandom(size)
    out = io.BytesIO()
    encrypt_stream(io.BytesIO(data), out, key)
    assert decrypt(out.getvalue(), key, hashlib.sha256(data).hexdigest()) == data


class Trickle:
    """A source that returns a few bytes per read and has no readinto, like a slow socket."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self._data.read(min(n, 7) if n >= 0 else 7)


class TrickleRaw(io.RawIOBase):
    """The same through readinto, as a raw socket stream does it."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._data.readinto(memoryview(buffer)[:7])


@pytest.mark.parametrize("source", [Trickle, TrickleRaw])
def test_short_reads_are_handled(key: bytes, source: Any) -> None:
    data = os.urandom(3 * CHUNK + 5)
    out = io.BytesIO()
    encrypt_stream(source(data), out, key, chunk_size=CHUNK)
    assert b"".join(iter_decrypt(source(out.getvalue()), key)) == data


def test_plaintext_does_not_appear_in_ciphertext(key: bytes) -> None:
    data = b"TOP-SECRET-WEIGHTS " * 1000
    blob = encrypt(data, key, chunk_size=1024)
    assert b"TOP-SECRET" not in blob
    assert encrypt(data, key, chunk_size=1024) != blob  # random nonce prefix per object


def test_every_flipped_byte_is_detected(key: bytes) -> None:
    blob = encrypt(os.urandom(3 * CHUNK + 5), key)
    for i in range(len(blob)):
        tampered = bytearray(blob)
        tampered[i] ^= 0x01
        with pytest.raises(IntegrityError, match="corrupt or was modified"):
            decrypt(bytes(tampered), key)


def test_every_truncation_is_detected(key: bytes) -> None:
    blob = encrypt(os.urandom(3 * CHUNK + 5), key)
    for length in range(len(blob)):
        with pytest.raises(IntegrityError):
            decrypt(blob[:length], key)


def test_truncation_at_a_chunk_boundary_says_so(key: bytes) -> None:
    blob = encrypt(os.urandom(3 * CHUNK + 5), key)
    with pytest.raises(IntegrityError, match="truncated"):
        decrypt(blob[: HEADER + 2 * (CHUNK + TAG)], key)


@pytest.mark.parametrize("size", [3 * CHUNK + 5, 3 * CHUNK, 0])
def test_appended_bytes_are_detected(key: bytes, size: int) -> None:
    blob = encrypt(os.urandom(size), key)
    for extra in (b"\x00", os.urandom(TAG), os.urandom(CHUNK + TAG), chunks_of(blob)[-1]):
        with pytest.raises(IntegrityError):
            decrypt(blob + extra, key)


def test_data_after_a_full_final_chunk_says_so(key: bytes) -> None:
    blob = encrypt(os.urandom(3 * CHUNK), key)
    with pytest.raises(IntegrityError, match="data after its final chunk"):
        decrypt(blob + os.urandom(5), key)


def test_swapped_dropped_or_duplicated_chunks_are_detected(key: bytes) -> None:
    blob = encrypt(os.urandom(4 * CHUNK + 5), key)
    header, chunks = blob[:HEADER], chunks_of(blob)
    variants = [
        [chunks[1], chunks[0], *chunks[2:]],
        [chunks[0], chunks[2], chunks[1], *chunks[3:]],
        [chunks[0], *chunks[2:]],
        [chunks[0], chunks[0], *chunks[1:]],
        chunks[:-1],
    ]
    for variant in variants:
        with pytest.raises(IntegrityError):
            decrypt(header + b"".join(variant), key)


def test_chunks_cannot_be_spliced_between_objects_under_one_key(key: bytes) -> None:
    data = os.urandom(3 * CHUNK)
    a, b = encrypt(data, key), encrypt(data, key)
    with pytest.raises(IntegrityError):
        decrypt(a[:HEADER] + b"".join([chunks_of(a)[0], *chunks_of(b)[1:]]), key)


def test_wrong_data_key_is_detected(key: bytes) -> None:
    with pytest.raises(IntegrityError, match="chunk 0 failed authentication"):
        decrypt(encrypt(b"hello", key), new_data_key())


@pytest.mark.parametrize(
    ("blob", "reason"),
    [
        (b"", "shorter than the encryption header"),
        (b"YARDENC1\x00\x00", "shorter than the encryption header"),
        (b"NOTYARD1" + b"\x00" * 40, "bad magic"),
        (MAGIC + b"\xff\xff\xff\xff" + b"\x00" * 40, "impossible chunk size"),
        (MAGIC + b"\x00\x00\x00\x00" + b"\x00" * 40, "impossible chunk size"),
    ],
)
def test_bad_headers_are_refused_before_allocating(key: bytes, blob: bytes, reason: str) -> None:
    with pytest.raises(IntegrityError, match=reason):
        decrypt(blob, key)


def test_digest_mismatch_is_raised_before_the_final_chunk(key: bytes) -> None:
    data = os.urandom(3 * CHUNK + 5)
    blob = encrypt(data, key)
    received: list[bytes] = []
    chunks: Iterator[bytes] = iter_decrypt(io.BytesIO(blob), key, expected_digest="0" * 64)
    with pytest.raises(IntegrityError, match="plaintext sha256"):
        for chunk in chunks:
            received.append(chunk)
    assert b"".join(received) == data[: 3 * CHUNK]
    with pytest.raises(IntegrityError, match="plaintext sha256"):
        decrypt_stream(io.BytesIO(blob), io.BytesIO(), key, expected_digest="0" * 64)


def test_expected_digest_is_case_insensitive(key: bytes) -> None:
    data = b"abc"
    assert decrypt(encrypt(data, key), key, hashlib.sha256(data).hexdigest().upper()) == data


@pytest.mark.parametrize("chunk_size", [0, -1, (64 << 20) + 1])
def test_chunk_size_is_bounded(key: bytes, chunk_size: int) -> None:
    with pytest.raises(UsageError, match="chunk_size"):
        encrypt(b"x", key, chunk_size=chunk_size)


def test_allocating_aead_path_is_compatible(key: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    # Older cryptography releases lack encrypt_into/decrypt_into; both paths must read each other's output.
    data = os.urandom(3 * CHUNK + 5)
    fast = encrypt(data, key)
    monkeypatch.setattr(_crypto, "_HAS_INTO", False)
    slow = encrypt(data, key)
    assert decrypt(fast, key) == data
    tampered = bytearray(fast)
    tampered[HEADER + 3] ^= 1
    with pytest.raises(IntegrityError):
        decrypt(bytes(tampered), key)
    monkeypatch.undo()
    assert decrypt(slow, key) == data


def test_nested_streams_in_one_thread_keep_their_own_buffers() -> None:
    """Re-encrypting one object while decrypting another (same thread) must not share the reused buffers."""
    import io

    from modelyard.core._crypto import encrypt_stream, iter_decrypt, new_data_key

    first, second = new_data_key(), new_data_key()
    plain = os.urandom(3 * (1 << 20) + 7)
    sealed = io.BytesIO()
    encrypt_stream(io.BytesIO(plain), sealed, first)
    sealed.seek(0)
    chunks = iter_decrypt(sealed, first)

    class Pull(io.RawIOBase):
        pending = b""

        def readable(self) -> bool:
            return True

        def readinto(self, b: Any) -> int:
            while not self.pending:
                self.pending = next(chunks, b"")
                if not self.pending:
                    return 0
            n = min(len(b), len(self.pending))
            b[:n], self.pending = self.pending[:n], self.pending[n:]
            return n

    resealed = io.BytesIO()
    digest, size = encrypt_stream(Pull(), resealed, second)  # decrypt of `first` is open meanwhile
    resealed.seek(0)
    assert b"".join(iter_decrypt(resealed, second, expected_digest=digest)) == plain
    assert size == len(plain)


def test_a_stream_finished_in_another_thread_frees_only_its_own_buffers() -> None:
    """A decrypting iterator may be advanced by one thread and finished by another (a thread pool
    streaming a response does this). Finishing it marked the finishing thread's buffers free while a
    stream suspended in that thread still used them: the next stream there overwrote them, and the
    suspended one failed as 'corrupt'."""
    import threading

    def sealed(data: bytes) -> tuple[io.BytesIO, bytes]:
        key, out = new_data_key(), io.BytesIO()
        encrypt_stream(io.BytesIO(data), out, key)
        out.seek(0)
        return out, key

    plains = [os.urandom(3 * DEFAULT_CHUNK_SIZE) for _ in range(3)]
    (fa, ka), (fb, kb), (fc, kc) = (sealed(p) for p in plains)
    moved = iter_decrypt(fa, ka)
    started: list[bytes] = []
    worker = threading.Thread(target=lambda: started.append(next(moved)))  # begun in another thread
    worker.start()
    worker.join()
    suspended = iter_decrypt(fb, kb)
    got_b = [next(suspended)]  # holds this thread's buffers
    assert started[0] + b"".join(moved) == plains[0]  # finished here
    assert b"".join(iter_decrypt(fc, kc)) == plains[2]  # a new stream in this thread meanwhile
    got_b += list(suspended)
    assert b"".join(got_b) == plains[1]
