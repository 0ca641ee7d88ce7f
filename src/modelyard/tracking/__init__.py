"""Experiment tracking: experiments, runs, params, metrics, tags, artifacts, search; and lineage."""

from modelyard.tracking._lineage import (
    LineageNode,
    artifact_ref,
    dataset_ref,
    lineage,
    model_ref,
    parse_ref,
    run_ref,
)

__all__ = [
    "LineageNode",
    "artifact_ref",
    "dataset_ref",
    "lineage",
    "model_ref",
    "parse_ref",
    "run_ref",
]
