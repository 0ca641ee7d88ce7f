"""Serving: inference without torch. :class:`OnnxSeq2Seq` generates with a seq2seq model exported by
:mod:`modelyard.optimize` using only onnxruntime, tokenizers and numpy.

Importing this package loads none of them; they load on first use of :class:`OnnxSeq2Seq`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelyard.serving._onnx import OnnxSeq2Seq

__all__ = ["OnnxSeq2Seq"]


def __getattr__(name: str) -> Any:
    if name == "OnnxSeq2Seq":
        from modelyard.serving import _onnx

        return _onnx.OnnxSeq2Seq
    raise AttributeError(f"module 'modelyard.serving' has no attribute {name!r}")
