"""The artifact-store contract over file:// and s3:// (a real local S3-compatible server process), with the
metadata index on SQLite and on PostgreSQL."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelyard.core import Platform
from modelyard.testing import ArtifactStoreContract, make_platform


class TestFileArtifactStore(ArtifactStoreContract):
    @pytest.fixture
    def platform(self, home: Path) -> Iterator[Platform]:
        p = make_platform(home, region="me-central-1")
        yield p
        p.close()

    def test_no_plaintext_anywhere_under_the_home(self, platform: Platform, tmp_path: Path) -> None:
        from modelyard.core import put_artifact

        src = tmp_path / "secret.bin"
        src.write_bytes(b"".join(secrets.token_bytes(4096) for _ in range(64)))
        put_artifact(platform, platform.context(), src)
        plain = src.read_bytes()
        for path in platform.settings.home.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                for offset in range(0, len(plain) - 16, 4096):
                    assert plain[offset : offset + 16] not in data, f"plaintext found in {path}"


@pytest.mark.s3
class TestS3ArtifactStore(ArtifactStoreContract):
    @pytest.fixture
    def platform(self, home: Path, s3_endpoint: str) -> Iterator[Platform]:
        import boto3

        bucket = f"yard-{secrets.token_hex(4)}"
        boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
        p = make_platform(home, artifact_uri=f"s3://{bucket}/store", s3_endpoint_url=s3_endpoint)
        yield p
        p.close()


@pytest.mark.postgres
class TestPostgresIndexedArtifactStore(ArtifactStoreContract):
    @pytest.fixture
    def platform(self, home: Path, postgres_url: str) -> Iterator[Platform]:
        p = make_platform(home, database_url=postgres_url)
        yield p
        p.close()
