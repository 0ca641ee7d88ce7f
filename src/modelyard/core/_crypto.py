"""Envelope encryption: a master key wraps one random data key per object; payloads stream.

A single AES-GCM message cannot be authenticated before all of its plaintext has been released, and
it would need the whole object in memory. Payloads therefore use a chunked STREAM construction (as
in Tink's streaming AEAD and age): every chunk is its own AES-GCM message whose nonce carries the
chunk counter and a last-chunk flag, so reordering, dropping, truncating or extending the stream
fails authentication, and each chunk is released only after its tag has been checked. It is
hand-written because neither ``cryptography`` nor another well-kept library offers it in Python.

Stream layout::

    header = b"YARDENC1" | chunk_size (u32 BE) | nonce_prefix (7 random bytes)
    chunk i = AES-256-GCM(data_key, nonce = prefix | i (u32 BE) | last (1 byte), aad = header)

Every chunk but the last holds exactly ``chunk_size`` plaintext bytes; empty input is one empty
final chunk.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import hmac
import json
import os
import secrets
import stat
import struct
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from modelyard.core._paths import private_dirs
from modelyard.errors import IntegrityError, MasterKeyError, UsageError

KEY_BYTES = 32
DEFAULT_CHUNK_SIZE = 1 << 20
# The header is only authenticated by the first chunk, so its chunk size must be bounded before we
# allocate buffers for it.
MAX_CHUNK_SIZE = 64 << 20
MAGIC = b"YARDENC1"
_TAG = 16
_PREFIX = 7
_HEADER = struct.Struct(f">{len(MAGIC)}sI{_PREFIX}s")
_MAX_CHUNKS = 1 << 32  # the counter is a u32; a nonce must never repeat under one data key
_KEY_ID_CONTEXT = b"modelyard/master-key-id/v1"
_WRAP_VERSION = b"\x01"
_WRAP_NONCE = 12
# Domain separation: a wrapped data key can never be confused with anything else sealed by the
# master key, whatever AAD the caller passes.
_WRAP_AAD = b"modelyard/wrap-data-key/v1\x00"
_KEY_FILE_VERSION = 1
_MAX_KEY_FILE_BYTES = 64 << 10
# Newer cryptography releases have encrypt_into/decrypt_into, which write into our reused buffers
# instead of allocating a result per chunk (about 1.4x faster AES); older ones still work.
_HAS_INTO = hasattr(AESGCM, "encrypt_into")


def _key_id(secret: bytes) -> str:
    return hashlib.sha256(_KEY_ID_CONTEXT + secret).hexdigest()[:16]


@dataclass(frozen=True)
class MasterKey:
    """The key that wraps per-object data keys. ``repr`` shows only the key id."""

    key_id: str
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) != KEY_BYTES:
            raise MasterKeyError(f"a master key must be {KEY_BYTES} bytes, got {len(self.secret)}")
        if self.key_id != _key_id(self.secret):
            raise MasterKeyError(f"key id {self.key_id!r} does not belong to this master key")

    @classmethod
    def from_secret(cls, secret: bytes) -> MasterKey:
        return cls(key_id=_key_id(secret), secret=secret)

    @classmethod
    def generate(cls) -> MasterKey:
        return cls.from_secret(secrets.token_bytes(KEY_BYTES))

    @classmethod
    def from_b64(cls, text: str) -> MasterKey:
        try:
            secret = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise MasterKeyError(
                "the master key is not valid base64; expected the 44-character value that "
                "`yard init` wrote (YARD_MASTER_KEY or the key file)"
            ) from None
        if len(secret) != KEY_BYTES:
            raise MasterKeyError(
                f"the master key decodes to {len(secret)} bytes, expected {KEY_BYTES}; "
                "check YARD_MASTER_KEY or the key file"
            )
        return cls.from_secret(secret)

    def to_b64(self) -> str:
        return base64.b64encode(self.secret).decode("ascii")

    @functools.cached_property
    def aead(self) -> AESGCM:
        """The master key's cipher, built once: a dataset add wraps one data key per file."""
        return AESGCM(self.secret)


def _fsync_dir(path: Path) -> None:
    # Makes a rename durable; directories cannot be opened this way on Windows, hence the guard.
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_master_key_file(path: Path, key: MasterKey, *, overwrite: bool = False) -> None:
    """Write ``key`` as JSON, mode 0600, atomically; refuse to replace an existing key file."""
    if path.exists() and not overwrite:
        raise MasterKeyError(_exists_message(path))
    # Every missing parent 0700 (mkdir -p gives them the umask's mode): through a folder others can write,
    # they could swap the key's folder for one holding a key they know.
    private_dirs(path.parent)
    doc = {"version": _KEY_FILE_VERSION, "key_id": key.key_id, "key": key.to_b64()}
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        # Created 0600 from the start: a chmod afterwards would leave a window where others can read it.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(json.dumps(doc).encode("ascii") + b"\n")
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            # link() fails if the name exists, so two concurrent `yard init` cannot clobber a key that
            # may already protect data.
            os.link(tmp, path)
        _fsync_dir(path.parent)
    except FileExistsError:
        raise MasterKeyError(_exists_message(path)) from None
    except OSError as exc:
        raise MasterKeyError(f"cannot write master key file {path}: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _exists_message(path: Path) -> str:
    return (
        f"master key file {path} already exists; refusing to overwrite it because objects encrypted "
        "under it would become unreadable (pass overwrite=True only after re-wrapping them)"
    )


def load_master_key_file(path: Path) -> MasterKey:
    """Read a key file written by ``write_master_key_file``; refuse one others can read."""
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            raw = f.read(_MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError:
        raise MasterKeyError(
            f"master key file {path} does not exist; run `yard init` or set YARD_MASTER_KEY"
        ) from None
    except OSError as exc:
        raise MasterKeyError(f"cannot read master key file {path}: {exc.strerror or exc}") from exc
    if os.name != "nt" and stat.S_IMODE(mode) & 0o077:
        raise MasterKeyError(
            f"master key file {path} is readable by other users (mode {stat.S_IMODE(mode):04o}); "
            f"run `chmod 600 {path}`"
        )
    expected = 'expected JSON {"version": 1, "key_id": "...", "key": "<base64>"}'
    try:
        doc: Any = json.loads(raw) if len(raw) <= _MAX_KEY_FILE_BYTES else None
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("key"), str):
        raise MasterKeyError(f"master key file {path} is malformed; {expected}")
    if doc.get("version") != _KEY_FILE_VERSION:
        version = doc.get("version")
        raise MasterKeyError(f"master key file {path} has unsupported version {version!r}; {expected}")
    key = MasterKey.from_b64(doc["key"])
    if doc.get("key_id") != key.key_id:
        raise MasterKeyError(
            f"master key file {path} is corrupt: its key_id {doc.get('key_id')!r} does not match its key "
            f"({key.key_id})"
        )
    return key


def new_data_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def wrap_key(master: MasterKey, data_key: bytes, aad: bytes) -> bytes:
    """Seal ``data_key`` under the master key: version (1) | nonce (12) | ciphertext+tag (48)."""
    _check_data_key(data_key)
    nonce = secrets.token_bytes(_WRAP_NONCE)
    return _WRAP_VERSION + nonce + master.aead.encrypt(nonce, data_key, _WRAP_AAD + aad)


def unwrap_key(master: MasterKey, key_id: str, wrapped: bytes, aad: bytes) -> bytes:
    if key_id != master.key_id:
        raise MasterKeyError(
            f"object was encrypted under master key {key_id}, but the configured master key is "
            f"{master.key_id}; set YARD_MASTER_KEY or the key file to the right key"
        )
    if len(wrapped) != 1 + _WRAP_NONCE + KEY_BYTES + _TAG or wrapped[:1] != _WRAP_VERSION:
        raise IntegrityError("the stored wrapped data key is malformed; the object's metadata is corrupt")
    nonce, sealed = wrapped[1 : 1 + _WRAP_NONCE], wrapped[1 + _WRAP_NONCE :]
    try:
        return master.aead.decrypt(nonce, sealed, _WRAP_AAD + aad)
    except InvalidTag:
        raise MasterKeyError(
            f"cannot unwrap the object's data key with master key {master.key_id}: the key material "
            "differs from the one it was wrapped with, or the wrapped key or its metadata was modified"
        ) from None


def _check_data_key(data_key: bytes) -> None:
    # AESGCM would silently accept 16 or 24 bytes and downgrade to AES-128/192.
    if len(data_key) != KEY_BYTES:
        raise MasterKeyError(f"a data key must be {KEY_BYTES} bytes, got {len(data_key)}")


_local = threading.local()
# Only default-sized buffers are kept: one object with 64 MiB chunks must not pin 192 MiB per thread.
_MAX_CACHED = DEFAULT_CHUNK_SIZE + _TAG


class _LeaseState:
    """One thread's cached buffers and whether a stream holds them."""

    busy = False
    buffers: tuple[memoryview, memoryview, memoryview] | None = None


@contextlib.contextmanager
def _lease(size: int) -> Iterator[tuple[memoryview, memoryview, memoryview]]:
    """Three ``size``-byte buffers, reused per thread. Fresh megabyte buffers for every object cost a page
    fault per 4 KiB touched, which dominated getting many 1 MiB artifacts. A stream that starts while
    another is open in the same thread (reading one artifact into another) gets its own buffers.

    The state is that of the thread the lease began in, held here: a decrypting generator may be resumed
    and finished by other threads (a thread pool streaming a response), and releasing "the current
    thread's" buffers there would free ones another suspended stream of that thread still uses."""
    state: _LeaseState | None = getattr(_local, "state", None)
    if state is None:
        state = _local.state = _LeaseState()
    if state.busy or size > _MAX_CACHED:
        yield memoryview(bytearray(size)), memoryview(bytearray(size)), memoryview(bytearray(size))
        return
    cached = state.buffers
    if cached is None or len(cached[0]) < size:
        cached = (memoryview(bytearray(size)), memoryview(bytearray(size)), memoryview(bytearray(size)))
        state.buffers = cached
    state.busy = True
    try:
        yield cached[0][:size], cached[1][:size], cached[2][:size]
    finally:
        state.busy = False


def _nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    return prefix + struct.pack(">IB", counter, last)


def _read_full(src: BinaryIO, buf: memoryview) -> int:
    """Fill ``buf``; return fewer bytes only at end of stream (sockets and pipes return short reads)."""
    readinto = getattr(src, "readinto", None)
    filled = 0
    while filled < len(buf):
        if readinto is not None:
            got = readinto(buf[filled:]) or 0
        else:
            data = src.read(len(buf) - filled)
            got = len(data)
            buf[filled : filled + got] = data
        if not got:
            break
        filled += got
    return filled


def _seal(aead: AESGCM, nonce: bytes, plain: memoryview, aad: bytes, out: memoryview) -> memoryview:
    if _HAS_INTO:
        sealed = out[: len(plain) + _TAG]
        aead.encrypt_into(nonce, plain, aad, sealed)
        return sealed
    return memoryview(aead.encrypt(nonce, plain, aad))


def _unseal(aead: AESGCM, nonce: bytes, sealed: memoryview, aad: bytes, out: memoryview) -> memoryview:
    if _HAS_INTO:
        plain = out[: len(sealed) - _TAG]
        aead.decrypt_into(nonce, sealed, aad, plain)
        return plain
    return memoryview(aead.decrypt(nonce, sealed, aad))


class Writable(Protocol):
    """Where encrypt_stream writes: a binary file or anything with its ``write``."""

    def write(self, data: bytes | bytearray | memoryview, /) -> int: ...


def encrypt_stream(
    src: BinaryIO, dst: Writable, data_key: bytes, *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> tuple[str, int]:
    """Encrypt ``src`` into ``dst``; return the plaintext's (sha256 hex, size), computed in the same pass."""
    _check_data_key(data_key)
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise UsageError(f"chunk_size must be between 1 and {MAX_CHUNK_SIZE} bytes, got {chunk_size}")
    prefix = secrets.token_bytes(_PREFIX)
    header = _HEADER.pack(MAGIC, chunk_size, prefix)
    aead = AESGCM(data_key)
    digest = hashlib.sha256()
    dst.write(header)
    # A destination that lends its own buffer (StagingWriter.reserve) gets the ciphertext written there
    # directly, saving one copy of every byte.
    reserve = getattr(dst, "reserve", None) if _HAS_INTO else None
    with _lease(chunk_size + _TAG) as (cur_buf, ahead_buf, out):
        cur, ahead = cur_buf[:chunk_size], ahead_buf[:chunk_size]
        size, counter = 0, 0
        filled = _read_full(src, cur)
        while True:
            # Read one chunk ahead so the last chunk carries the final flag even when the size is an
            # exact multiple of chunk_size.
            next_filled = _read_full(src, ahead) if filled == chunk_size else 0
            last = next_filled == 0
            plain = cur[:filled]
            digest.update(plain)
            target = reserve(filled + _TAG) if reserve is not None else None
            if target is not None:
                aead.encrypt_into(_nonce(prefix, counter, last), plain, header, target)
                dst.commit(filled + _TAG)  # type: ignore[attr-defined]
            else:
                dst.write(_seal(aead, _nonce(prefix, counter, last), plain, header, out))
            size += filled
            if last:
                return digest.hexdigest(), size
            counter += 1
            if counter >= _MAX_CHUNKS:
                raise UsageError("input too large for this chunk size; use a larger chunk_size")
            cur, ahead, filled = ahead, cur, next_filled


def _corrupt(problem: str) -> IntegrityError:
    return IntegrityError(f"the stored object is corrupt or was modified: {problem}")


def _open_chunk(
    aead: AESGCM, header: bytes, prefix: bytes, counter: int, last: bool, sealed: memoryview, out: memoryview
) -> memoryview:
    if len(sealed) < _TAG:
        raise _corrupt(f"chunk {counter} is shorter than its authentication tag (truncated)")
    try:
        return _unseal(aead, _nonce(prefix, counter, last), sealed, header, out)
    except InvalidTag:
        pass
    # Only on failure: try the other flag to tell truncation and appended data from plain tampering.
    try:
        _unseal(aead, _nonce(prefix, counter, not last), sealed, header, out)
    except InvalidTag:
        raise _corrupt(f"chunk {counter} failed authentication") from None
    if last:
        raise _corrupt("it ends before its final chunk (truncated)")
    raise _corrupt("there is data after its final chunk")


def _decrypt_views(
    src: BinaryIO, data_key: bytes, expected_digest: str | None
) -> Generator[memoryview, None, tuple[str, int]]:
    """Yield authenticated plaintext as views into one reused buffer; return (sha256 hex, size).

    A view is valid only until the next one is requested, which is why this is private.
    """
    _check_data_key(data_key)
    header_buf = memoryview(bytearray(_HEADER.size))
    if _read_full(src, header_buf) < _HEADER.size:
        raise _corrupt("it is shorter than the encryption header")
    header = bytes(header_buf)
    magic, chunk_size, prefix = _HEADER.unpack(header)
    if magic != MAGIC:
        raise _corrupt("it does not start with the modelyard encryption header (bad magic)")
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise _corrupt(f"its header declares an impossible chunk size {chunk_size}")
    aead = AESGCM(data_key)
    digest = hashlib.sha256()
    ct_size = chunk_size + _TAG
    with _lease(ct_size) as (cur, ahead, out):
        size, counter = 0, 0
        filled = _read_full(src, cur)
        while True:
            # A short read can only be the final chunk; a full one is final only if nothing follows it.
            next_filled = _read_full(src, ahead) if filled == ct_size else 0
            last = next_filled == 0
            plain = _open_chunk(aead, header, prefix, counter, last, cur[:filled], out)
            digest.update(plain)
            size += len(plain)
            if last:
                # Checked before the final chunk is released, so a consumer never receives all of a
                # mismatching object.
                actual = digest.hexdigest()
                if expected_digest is not None and not hmac.compare_digest(actual, expected_digest.lower()):
                    raise _corrupt(f"its plaintext sha256 is {actual}, expected {expected_digest}")
                yield plain
                return actual, size
            yield plain
            counter += 1
            if counter >= _MAX_CHUNKS:
                raise _corrupt("it has more chunks than the format allows")
            cur, ahead, filled = ahead, cur, next_filled


def iter_decrypt(src: BinaryIO, data_key: bytes, *, expected_digest: str | None = None) -> Iterator[bytes]:
    """Yield authenticated plaintext chunks; raise IntegrityError on any tampering or digest mismatch."""
    for view in _decrypt_views(src, data_key, expected_digest):
        yield bytes(view)


def decrypt_stream(
    src: BinaryIO, dst: BinaryIO, data_key: bytes, *, expected_digest: str | None = None
) -> tuple[str, int]:
    """Decrypt ``src`` into ``dst``; return the plaintext's (sha256 hex, size).

    On IntegrityError, ``dst`` holds a prefix of authenticated chunks; callers write to a temp file
    and discard it.
    """
    views = _decrypt_views(src, data_key, expected_digest)
    while True:
        try:
            view = next(views)
        except StopIteration as done:
            result: tuple[str, int] = done.value
            return result
        dst.write(view)
