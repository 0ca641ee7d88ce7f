"""CPU optimisation: ONNX export of seq2seq models, INT8 quantisation of the exported graphs, magnitude
pruning and knowledge distillation through the training loop, and :func:`optimize`, which makes, measures
and registers the variants of a registered version.

Importing this package loads neither torch nor onnxruntime; :func:`export_onnx` and :func:`quantize_int8`
import what they need when they run. The directories they write are loaded with
:class:`modelyard.serving.OnnxSeq2Seq`.
"""

from __future__ import annotations

from modelyard.optimize._distill import DistillResult, distill, kd_loss
from modelyard.optimize._onnx import export_onnx
from modelyard.optimize._pipeline import Measured, OptimizeReport, optimize, parse_budget
from modelyard.optimize._prune import PruneResult, prune_model
from modelyard.optimize._quantize import quantize_int8

__all__ = [
    "DistillResult",
    "Measured",
    "OptimizeReport",
    "PruneResult",
    "distill",
    "export_onnx",
    "kd_loss",
    "optimize",
    "parse_budget",
    "prune_model",
    "quantize_int8",
]
