"""Fixtures and contract suites shipped with modelyard, run over every backend (needs pytest)."""

from modelyard.testing._cli import CliResult, Yard, cli_runner
from modelyard.testing._contracts import ArtifactStoreContract, MetadataStoreContract
from modelyard.testing._fixtures import JOB_RECIPE, actor, fresh_postgres_database, make_platform, vm_hwm_kib
from modelyard.testing._s3server import moto_s3_server

__all__ = [
    "JOB_RECIPE",
    "ArtifactStoreContract",
    "CliResult",
    "MetadataStoreContract",
    "Yard",
    "actor",
    "cli_runner",
    "fresh_postgres_database",
    "make_platform",
    "moto_s3_server",
    "vm_hwm_kib",
]
