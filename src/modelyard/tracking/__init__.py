"""Experiment tracking: experiments, runs, params, metrics, tags, artifacts, search; and lineage."""

from modelyard.tracking._client import (
    Client,
    Comparison,
    Run,
    active_run,
    end_run,
    flush,
    log_artifact,
    log_dict,
    log_figure,
    log_metric,
    log_metrics,
    log_param,
    log_params,
    set_tag,
    set_tags,
    start_run,
)
from modelyard.tracking._lineage import (
    LineageNode,
    artifact_ref,
    dataset_ref,
    lineage,
    model_ref,
    parse_ref,
    run_ref,
)
from modelyard.tracking._search import search_runs
from modelyard.tracking._store import MetricPoint, RunInfo, reap_stale_runs
from modelyard.tracking._writer import MetricWriterWarning

__all__ = [
    "Client",
    "Comparison",
    "LineageNode",
    "MetricPoint",
    "MetricWriterWarning",
    "Run",
    "RunInfo",
    "active_run",
    "artifact_ref",
    "dataset_ref",
    "end_run",
    "flush",
    "lineage",
    "log_artifact",
    "log_dict",
    "log_figure",
    "log_metric",
    "log_metrics",
    "log_param",
    "log_params",
    "model_ref",
    "parse_ref",
    "reap_stale_runs",
    "run_ref",
    "search_runs",
    "set_tag",
    "set_tags",
    "start_run",
]
