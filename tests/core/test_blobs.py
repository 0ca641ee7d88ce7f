from __future__ import annotations

import hashlib
import os
import socket
import stat
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from modelyard.core._blobs import BlobBackend, FileBackend, S3Backend, open_backend
from modelyard.errors import BackendError, NotFoundError, UnsafePathError, UsageError


def staged(backend: BlobBackend, data: bytes) -> Path:
    path = backend.staging_dir() / f"{uuid.uuid4().hex}.tmp"
    path.write_bytes(data)
    return path


# --- contract: every backend ----------------------------------------------------------------------


def test_write_read_exists_delete(blob_backend: BlobBackend) -> None:
    assert not blob_backend.exists("meta/a.json")
    blob_backend.write_bytes("meta/a.json", b'{"a": 1}')
    assert blob_backend.exists("meta/a.json")
    assert blob_backend.read_bytes("meta/a.json") == b'{"a": 1}'
    blob_backend.write_bytes("meta/a.json", b"replaced")
    assert blob_backend.read_bytes("meta/a.json") == b"replaced"
    blob_backend.delete("meta/a.json")
    assert not blob_backend.exists("meta/a.json")
    blob_backend.delete("meta/a.json")  # idempotent
    blob_backend.delete("never/existed")


def test_empty_objects(blob_backend: BlobBackend) -> None:
    blob_backend.write_bytes("empty", b"")
    assert blob_backend.read_bytes("empty") == b""
    blob_backend.put_file("empty2", staged(blob_backend, b""))
    with blob_backend.open("empty2") as f:
        assert f.read() == b""


def test_put_file_publishes_and_takes_ownership(blob_backend: BlobBackend) -> None:
    data = os.urandom(3 << 20)
    path = staged(blob_backend, data)
    blob_backend.put_file("objects/ab/abcdef", path)
    assert not path.exists()
    with blob_backend.open("objects/ab/abcdef") as f:
        pieces = []
        while piece := f.read(100_000):
            assert len(piece) <= 100_000
            pieces.append(piece)
    assert b"".join(pieces) == data
    blob_backend.put_file("objects/ab/abcdef", staged(blob_backend, b"new"))  # overwrite allowed
    assert blob_backend.read_bytes("objects/ab/abcdef") == b"new"


def test_large_file_streams_through(blob_backend: BlobBackend) -> None:
    # Over boto3's 8 MiB multipart threshold, so S3 uses a managed multipart upload.
    data = os.urandom(12 << 20)
    blob_backend.put_file("big.bin", staged(blob_backend, data))
    digest = hashlib.sha256()
    buf = bytearray(1 << 20)
    with blob_backend.open("big.bin") as f:
        while n := f.readinto(buf):  # type: ignore[attr-defined]
            digest.update(buf[:n])
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()


def test_missing_objects_are_not_found(blob_backend: BlobBackend) -> None:
    with pytest.raises(NotFoundError, match="no object named 'nope/x'"):
        blob_backend.open("nope/x")
    with pytest.raises(NotFoundError):
        blob_backend.read_bytes("nope")


def test_list_is_sorted_filtered_and_hides_staging(blob_backend: BlobBackend) -> None:
    names = ["a-c", "a/b", "a/b0", "a.b", "a0", "b", "models/v1/w.bin", "models/v10/w.bin", "models/v2"]
    for name in reversed(names):
        blob_backend.write_bytes(name, name.encode())
    staged(blob_backend, b"half-written upload")
    assert list(blob_backend.list()) == sorted(names)
    assert list(blob_backend.list("models/")) == ["models/v1/w.bin", "models/v10/w.bin", "models/v2"]
    assert list(blob_backend.list("models/v1")) == ["models/v1/w.bin", "models/v10/w.bin"]
    assert list(blob_backend.list("a/")) == ["a/b", "a/b0"]
    assert list(blob_backend.list("zzz")) == []
    assert list(blob_backend.list("nothing/here/")) == []
    # With sizes and modification times, from the same listing (what `yard gc` ages objects by).
    before = datetime.now(UTC) - timedelta(minutes=5)  # S3 servers keep whole seconds; clocks differ
    stats = list(blob_backend.list_stat("models/"))
    assert [(st.name, st.size) for st in stats] == [(n, len(n)) for n in names if n.startswith("models/")]
    assert all(before < st.modified < datetime.now(UTC) + timedelta(minutes=5) for st in stats)


@pytest.mark.parametrize(
    "name", ["../x", "/etc/passwd", "a/../../b", "%2e%2e/x", "a\\b", "a#b", "~/x", "a//b"]
)
def test_hostile_names_are_refused_by_every_method(blob_backend: BlobBackend, name: str) -> None:
    path = staged(blob_backend, b"x")
    for call in (
        lambda: blob_backend.put_file(name, path),
        lambda: blob_backend.write_bytes(name, b"x"),
        lambda: blob_backend.open(name),
        lambda: blob_backend.read_bytes(name),
        lambda: blob_backend.exists(name),
        lambda: blob_backend.delete(name),
        lambda: list(blob_backend.list(name)),
    ):
        with pytest.raises(UnsafePathError):
            call()
    assert path.exists()  # a refused put_file leaves the caller's file alone


def test_staging_dir_is_private_and_writable(blob_backend: BlobBackend) -> None:
    staging = blob_backend.staging_dir()
    assert staging.is_dir()
    assert stat.S_IMODE(staging.stat().st_mode) == 0o700
    assert staging == blob_backend.staging_dir()


# --- file:// ------------------------------------------------------------------------------------


def test_file_backend_modes_and_layout(tmp_path: Path) -> None:
    backend = FileBackend(tmp_path / "store")
    backend.write_bytes("a/b/c", b"x")
    root = tmp_path / "store"
    assert (root / "a" / "b" / "c").read_bytes() == b"x"
    for directory in (root, root / "a", root / "a" / "b"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "a" / "b" / "c").stat().st_mode) == 0o600
    assert backend.staging_dir().parent == root.resolve()
    assert list(backend.staging_dir().iterdir()) == []  # write_bytes leaves no temp file behind
    assert backend.uri == root.resolve().as_uri()


def test_file_backend_put_file_from_another_directory(tmp_path: Path) -> None:
    backend = FileBackend(tmp_path / "store")
    outside = tmp_path / "upload.bin"
    outside.write_bytes(b"payload")
    backend.put_file("x", outside)
    assert backend.read_bytes("x") == b"payload"
    assert not outside.exists()


def test_file_backend_refuses_symlink_escape(tmp_path: Path) -> None:
    root, outside = tmp_path / "store", tmp_path / "outside"
    backend = FileBackend(root)
    backend.write_bytes("ok", b"x")
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    (root / "evil").symlink_to(outside, target_is_directory=True)
    (root / "link").symlink_to(outside / "secret")
    for name in ("evil/secret", "link"):
        with pytest.raises(UnsafePathError, match="symbolic link"):
            backend.read_bytes(name)
    with pytest.raises(UnsafePathError):
        backend.write_bytes("evil/planted", b"x")
    with pytest.raises(UnsafePathError):
        backend.delete("evil/secret")
    assert sorted(os.listdir(outside)) == ["secret"]
    assert list(backend.list()) == ["ok"]  # links are not listed


def test_file_backend_list_skips_names_it_would_refuse(tmp_path: Path) -> None:
    backend = FileBackend(tmp_path / "store")
    backend.write_bytes("good", b"x")
    (tmp_path / "store" / "bad\\name").write_bytes(b"x")
    (tmp_path / "store" / "a#b").write_bytes(b"x")
    assert list(backend.list()) == ["good"]


def test_file_backend_directory_is_not_an_object(tmp_path: Path) -> None:
    backend = FileBackend(tmp_path / "store")
    backend.write_bytes("dir/x", b"x")
    with pytest.raises(NotFoundError, match="directory"):
        backend.open("dir")
    assert not backend.exists("dir")
    with pytest.raises(NotFoundError):
        backend.open("dir/x/y")  # a file in the middle of the name


def test_file_backend_os_errors_become_backend_errors(tmp_path: Path) -> None:
    backend = FileBackend(tmp_path / "store")
    backend.write_bytes("a", b"x")
    with pytest.raises(BackendError, match="cannot publish 'a/b'"):
        backend.write_bytes("a/b", b"x")  # 'a' is a file, so 'a/' cannot be a directory


# --- open_backend -------------------------------------------------------------------------------


def test_open_backend_file_uris(tmp_path: Path) -> None:
    for uri in (tmp_path.as_uri(), str(tmp_path), f"file://localhost{tmp_path}"):
        backend = open_backend(uri)
        assert isinstance(backend, FileBackend) and backend.root == tmp_path.resolve()
    spaced = open_backend((tmp_path / "my dir").as_uri())
    assert isinstance(spaced, FileBackend) and spaced.root == (tmp_path / "my dir").resolve()


@pytest.mark.parametrize(
    "uri", ["gs://bucket/x", "http://host/x", "artifacts", "./artifacts", "C:\\store", ""]
)
def test_open_backend_unknown_scheme_lists_valid_ones(uri: str) -> None:
    with pytest.raises(UsageError) as caught:
        open_backend(uri)
    assert "file://" in str(caught.value) and "s3://" in str(caught.value)


@pytest.mark.parametrize(
    "uri",
    ["file://otherhost/x", "file:relative", "file:///x?y=1", "s3://", "s3:///prefix", "s3://Bad_Bucket/x"],
)
def test_open_backend_malformed_uris(uri: str) -> None:
    with pytest.raises(UsageError):
        open_backend(uri)


def test_s3_prefix_must_be_safe() -> None:
    with pytest.raises(UnsafePathError):
        open_backend("s3://bucket/../other", s3_endpoint_url="http://127.0.0.1:9")


# --- s3:// against a real moto server -----------------------------------------------------------


def _bucket(endpoint: str) -> str:
    import boto3

    bucket = f"yard-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return bucket


@pytest.mark.s3
def test_open_backend_s3_uses_the_endpoint_setting(s3_endpoint: str) -> None:
    bucket = _bucket(s3_endpoint)
    backend = open_backend(f"s3://{bucket}/team/a", s3_endpoint_url=s3_endpoint)
    assert isinstance(backend, S3Backend) and backend.uri == f"s3://{bucket}/team/a/"
    backend.write_bytes("x", b"1")
    assert backend.read_bytes("x") == b"1"
    assert list(backend.list()) == ["x"]


@pytest.mark.s3
def test_s3_prefixes_isolate_backends(s3_endpoint: str) -> None:
    bucket = _bucket(s3_endpoint)
    one = S3Backend(bucket, "one", endpoint_url=s3_endpoint)
    two = S3Backend(bucket, "/two/", endpoint_url=s3_endpoint)
    whole = S3Backend(bucket, endpoint_url=s3_endpoint)
    one.write_bytes("k", b"1")
    two.write_bytes("k", b"2")
    assert (one.read_bytes("k"), two.read_bytes("k")) == (b"1", b"2")
    assert list(one.list()) == ["k"]
    assert list(whole.list()) == ["one/k", "two/k"]
    assert not one.exists("two/k")


@pytest.mark.s3
def test_s3_staging_dir_is_local_and_removed_with_the_backend(s3_endpoint: str) -> None:
    backend = S3Backend(_bucket(s3_endpoint), endpoint_url=s3_endpoint)
    staging = backend.staging_dir()
    assert staging.is_dir() and stat.S_IMODE(staging.stat().st_mode) == 0o700
    del backend
    assert not staging.exists()


@pytest.mark.s3
def test_s3_missing_bucket_is_a_backend_error(s3_endpoint: str) -> None:
    backend = S3Backend("no-such-bucket-here", endpoint_url=s3_endpoint)
    path = staged(backend, b"x")
    for call in (
        lambda: backend.exists("x"),
        lambda: backend.open("x"),
        lambda: backend.read_bytes("x"),
        lambda: backend.write_bytes("x", b"x"),
        lambda: backend.put_file("x", path),
        lambda: backend.delete("x"),
        lambda: list(backend.list()),
    ):
        with pytest.raises(
            BackendError, match=r"bucket 'no-such-bucket-here' at http://127\.0\.0\.1:\d+ does not exist"
        ):
            call()


@pytest.fixture
def refused_endpoint() -> Iterator[str]:
    # A bound socket that never listens: connections to it are refused for as long as we hold it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.s3
def test_s3_connection_refused_is_a_quick_backend_error(s3_endpoint: str, refused_endpoint: str) -> None:
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=1, read_timeout=1, retries={"total_max_attempts": 1})
    client = boto3.client("s3", endpoint_url=refused_endpoint, config=config)
    backend = S3Backend("bucket", endpoint_url=refused_endpoint, client=client)
    path = staged(backend, b"x")
    started = time.monotonic()
    for call in (
        lambda: backend.exists("x"),
        lambda: backend.read_bytes("x"),
        lambda: backend.write_bytes("x", b"x"),
        lambda: backend.put_file("x", path),
        lambda: list(backend.list()),
    ):
        with pytest.raises(BackendError) as caught:
            call()
        assert refused_endpoint in str(caught.value) and "YARD_S3_ENDPOINT_URL" in str(caught.value)
    assert time.monotonic() - started < 10


def test_s3_access_denied_message() -> None:
    from botocore.exceptions import ClientError

    backend = S3Backend("bucket", endpoint_url="http://127.0.0.1:9", client=object())
    denied = ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "GetObject")
    error = backend._describe(denied, "open", "x")
    assert isinstance(error, BackendError)
    assert "access to S3 bucket 'bucket' at http://127.0.0.1:9 was denied" in str(error)
    assert "credentials" in str(error)


def test_list_prefix_is_normalised_like_names(blob_backend: BlobBackend) -> None:
    blob_backend.write_bytes("cafe\u0301/x", b"x")  # stored under its NFC spelling
    assert list(blob_backend.list()) == ["caf\u00e9/x"]
    assert list(blob_backend.list("cafe\u0301/")) == ["caf\u00e9/x"]
    assert blob_backend.read_bytes("caf\u00e9/x") == b"x"
