"""Serving: the REST server (:func:`create_app`, ``yard serve``), candidate traffic (:func:`deploy`), the
prediction log and feedback, and inference without torch (:class:`OnnxSeq2Seq`: onnxruntime, tokenizers
and numpy only).

Importing this package loads none of FastAPI, onnxruntime or numpy; each loads on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelyard.serving._app import create_app
    from modelyard.serving._config import ServeConfig, load_config, parse_config
    from modelyard.serving._deploy import DeploymentInfo, deploy
    from modelyard.serving._onnx import OnnxSeq2Seq
    from modelyard.serving._predlog import LoggedPrediction, predictions, record_feedback

_LAZY = {
    "DeploymentInfo": "_deploy",
    "LoggedPrediction": "_predlog",
    "OnnxSeq2Seq": "_onnx",
    "ServeConfig": "_config",
    "create_app": "_app",
    "deploy": "_deploy",
    "load_config": "_config",
    "parse_config": "_config",
    "predictions": "_predlog",
    "record_feedback": "_predlog",
}

__all__ = [
    "DeploymentInfo",
    "LoggedPrediction",
    "OnnxSeq2Seq",
    "ServeConfig",
    "create_app",
    "deploy",
    "load_config",
    "parse_config",
    "predictions",
    "record_feedback",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'modelyard.serving' has no attribute {name!r}")
    return getattr(importlib.import_module(f"modelyard.serving.{module}"), name)
