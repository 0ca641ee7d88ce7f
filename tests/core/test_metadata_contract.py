"""The metadata-store contract over SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.testing import MetadataStoreContract


class TestSQLiteMetadataStore(MetadataStoreContract):
    @pytest.fixture
    def fresh_database_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path / 'fresh' / 'yard.db'}"


@pytest.mark.postgres
class TestPostgresMetadataStore(MetadataStoreContract):
    @pytest.fixture
    def fresh_database_url(self, postgres_url: str) -> str:
        return postgres_url
