"""StagingWriter: staging files written through aligned buffers (O_DIRECT where allowed) have exactly the
bytes written, whatever their length, and fall back to ordinary writes where direct I/O is refused."""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path

import pytest

from modelyard.core import _blobs
from modelyard.core._blobs import StagingWriter

MIB = 1 << 20
SIZES = [0, 1, 4095, 4096, 4097, 4 * MIB - 1, 4 * MIB, 4 * MIB + 1, 9 * MIB + 123]


def _open(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)


@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("size", SIZES)
def test_exact_bytes_and_length(tmp_path: Path, size: int, direct: bool) -> None:
    payload = secrets.token_bytes(size)
    path = tmp_path / "f"
    with StagingWriter(_open(path), direct=direct) as out:
        # Uneven pieces, so writes straddle buffer boundaries.
        for i in range(0, size, 777_777):
            out.write(memoryview(payload)[i : i + 777_777])
        assert out.tell() == size
    assert path.read_bytes() == payload


def test_rewind_cuts_back_what_is_still_buffered(tmp_path: Path) -> None:
    path = tmp_path / "f"
    with StagingWriter(_open(path), direct=True) as out:
        out.write(b"a" * 10)
        assert out.rewind(4)
        out.write(b"b" * 3)
        out.write(b"c" * (9 * MIB))  # the first bytes are written out now
        assert not out.rewind(2)  # too late: kept as written
        assert out.tell() == 7 + 9 * MIB
    assert path.read_bytes() == b"aaaabbb" + b"c" * (9 * MIB)


def test_refused_direct_writes_fall_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.pwrite
    refused: list[int] = []

    def pwrite(fd: int, data: memoryview, offset: int) -> int:
        if not refused:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data, offset)

    monkeypatch.setattr(_blobs.os, "pwrite", pwrite)
    payload = secrets.token_bytes(5 * MIB + 3)
    path = tmp_path / "f"
    with StagingWriter(_open(path), direct=True) as out:
        out.write(payload)
    assert refused and path.read_bytes() == payload


def test_nested_writers_in_one_thread_do_not_share_buffers(tmp_path: Path) -> None:
    a, b = secrets.token_bytes(6 * MIB), secrets.token_bytes(5 * MIB)
    with (
        StagingWriter(_open(tmp_path / "a"), direct=True) as wa,
        StagingWriter(_open(tmp_path / "b"), direct=True) as wb,
    ):
        for i in range(0, 6 * MIB, MIB):
            wa.write(a[i : i + MIB])
            wb.write(b[i : i + MIB])
    assert (tmp_path / "a").read_bytes() == a and (tmp_path / "b").read_bytes() == b


def test_an_error_closes_the_descriptor_without_writing(tmp_path: Path) -> None:
    path = tmp_path / "f"
    fd = _open(path)
    with pytest.raises(RuntimeError), StagingWriter(fd, direct=True) as out:
        out.write(b"x" * (5 * MIB))
        raise RuntimeError("boom")
    with pytest.raises(OSError):
        os.fstat(fd)  # closed
    with StagingWriter(_open(tmp_path / "g"), direct=True) as out:  # the thread's buffers are free again
        out.write(b"ok")
    assert (tmp_path / "g").read_bytes() == b"ok"


def test_streams_encrypted_in_place_decrypt_across_buffer_boundaries(tmp_path: Path) -> None:
    """encrypt_stream writes ciphertext straight into the writer's buffer when it fits and falls back to
    a copy when it does not; streams packed back to back all decrypt to their plaintext."""
    import io

    from modelyard.core._crypto import encrypt_stream, iter_decrypt, new_data_key

    payloads = [secrets.token_bytes(n) for n in (3, MIB + 5, 3 * MIB, 1536 * 1024, 0, 2 * MIB - 7, 5 * MIB)]
    keys = [new_data_key() for _ in payloads]
    ranges = []
    path = tmp_path / "pack"
    with StagingWriter(_open(path), direct=True) as out:
        for payload, key in zip(payloads, keys, strict=True):
            start = out.tell()
            encrypt_stream(io.BytesIO(payload), out, key)
            ranges.append((start, out.tell()))
    blob = path.read_bytes()
    assert len(blob) == ranges[-1][1]
    for payload, key, (a, b) in zip(payloads, keys, ranges, strict=True):
        assert b"".join(iter_decrypt(io.BytesIO(blob[a:b]), key)) == payload
