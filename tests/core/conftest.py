from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelyard.core._blobs import BlobBackend, FileBackend, S3Backend
from modelyard.testing._s3server import DUMMY_AWS_ENV, moto_s3_server


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real moto S3 server process for the session, with dummy credentials in the environment."""
    pytest.importorskip("boto3")
    pytest.importorskip("moto.server", reason="the S3 tests need moto[server]")
    with pytest.MonkeyPatch.context() as env:
        for name, value in DUMMY_AWS_ENV.items():
            env.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            env.delenv(name, raising=False)
        with moto_s3_server() as url:
            yield url


def _new_bucket(endpoint: str) -> str:
    import boto3

    bucket = f"yard-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A new, empty bucket on the session's S3 server."""
    return _new_bucket(s3_endpoint)


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.s3)])
def blob_backend(request: pytest.FixtureRequest, tmp_path: Path) -> BlobBackend:
    if request.param == "file":
        return FileBackend(tmp_path / "store")
    endpoint: str = request.getfixturevalue("s3_endpoint")
    return S3Backend(_new_bucket(endpoint), "tenant/artifacts", endpoint_url=endpoint)
