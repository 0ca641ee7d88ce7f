"""Monitoring: drift statistics between a reference sample (the training data) and a current one (recent
inputs and outputs).

* :func:`detect_drift` compares two tables column by column (numeric, categorical and text columns) and
  returns a :class:`DriftReport` (JSON via ``to_dict()``, a self-contained HTML page via ``to_html()``,
  rows for a Rich table via ``rows()``).
* :func:`text_drift` compares two lists of texts (a seq2seq model's inputs or outputs): lengths, token
  distribution and out-of-vocabulary rate.
* :func:`model_drift` and :func:`quality` compare a served model's logged traffic (and feedback) with its
  training data and evaluation; :func:`run_once` evaluates alert rules (:func:`load_alerts`) and acts: log,
  webhook (:func:`send`, refusing internal addresses), retrain + gate + canary.

Importing this package loads neither numpy, scipy, pyarrow nor matplotlib; each loads on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelyard.monitoring._alerts import AlertPolicy, MonitorResult, load_alerts, run_once
    from modelyard.monitoring._drift import (
        ColumnDrift,
        ColumnKind,
        DriftReport,
        detect_drift,
        infer_kind,
        text_drift,
        word_tokens,
    )
    from modelyard.monitoring._monitor import Quality, model_drift, parse_window, quality
    from modelyard.monitoring._webhook import WebhookPolicy, WebhookRefused, send

_LAZY = {
    "ColumnDrift": "_drift",
    "ColumnKind": "_drift",
    "DriftReport": "_drift",
    "detect_drift": "_drift",
    "infer_kind": "_drift",
    "text_drift": "_drift",
    "word_tokens": "_drift",
    "AlertPolicy": "_alerts",
    "MonitorResult": "_alerts",
    "load_alerts": "_alerts",
    "run_once": "_alerts",
    "Quality": "_monitor",
    "model_drift": "_monitor",
    "parse_window": "_monitor",
    "quality": "_monitor",
    "WebhookPolicy": "_webhook",
    "WebhookRefused": "_webhook",
    "send": "_webhook",
}

__all__ = [
    "AlertPolicy",
    "ColumnDrift",
    "ColumnKind",
    "DriftReport",
    "MonitorResult",
    "Quality",
    "WebhookPolicy",
    "WebhookRefused",
    "detect_drift",
    "infer_kind",
    "load_alerts",
    "model_drift",
    "parse_window",
    "quality",
    "run_once",
    "send",
    "text_drift",
    "word_tokens",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'modelyard.monitoring' has no attribute {name!r}")
    return getattr(importlib.import_module(f"modelyard.monitoring.{module}"), name)
