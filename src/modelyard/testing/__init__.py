"""Fixtures and contract suites shipped with modelyard, run over every backend (needs pytest)."""

from modelyard.testing._cli import CliResult, Yard, cli_runner
from modelyard.testing._contracts import ArtifactStoreContract, MetadataStoreContract
from modelyard.testing._fixtures import (
    JOB_RECIPE,
    TINY_RECIPE,
    TrainedModel,
    actor,
    fresh_postgres_database,
    make_platform,
    reaping,
    same_tree,
    train_tiny,
    trained_model,
    vm_hwm_kib,
    wait_for_lock_wait,
)
from modelyard.testing._k8sapi import FakeCluster, fake_kubernetes
from modelyard.testing._s3server import moto_s3_server

__all__ = [
    "JOB_RECIPE",
    "TINY_RECIPE",
    "ArtifactStoreContract",
    "CliResult",
    "FakeCluster",
    "MetadataStoreContract",
    "TrainedModel",
    "Yard",
    "actor",
    "cli_runner",
    "fake_kubernetes",
    "fresh_postgres_database",
    "make_platform",
    "moto_s3_server",
    "reaping",
    "same_tree",
    "train_tiny",
    "trained_model",
    "vm_hwm_kib",
    "wait_for_lock_wait",
]
