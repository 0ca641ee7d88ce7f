"""INT8 dynamic quantisation of an ONNX seq2seq directory.

:func:`quantize_int8` runs ``onnxruntime.quantization.quantize_dynamic`` on the three graphs written by
:func:`modelyard.optimize.export_onnx`: weights of MatMul nodes (every projection, feed-forward layer and the
LM head) become signed 8-bit integers with one scale per output channel; activations are quantised to
unsigned 8-bit on the fly, per tensor, at run time (``DynamicQuantizeLinear`` + ``MatMulInteger``). The
embedding table (``Gather``) is stored in INT8 too and dequantised row by row after the lookup. The weights
are shared between the graphs as in the FP32 export; the tokenizer and config files are copied unchanged and
``onnx.json`` says ``"quantization": "int8-dynamic"``.

Settings, as measured with benchmarks/cpu_inference.py's trained tiny model (600 held-out examples, greedy)
and the flan-t5-small-sized architecture (batch 1, one thread, 32 tokens), all against the FP32 export:

=====================================  ==========  =================  ===========  ========
variant                                ROUGE-L     outputs = FP32     batch 1      size
=====================================  ==========  =================  ===========  ========
FP32                                   74.46       100%               448 ms       308 MB
MatMul, per tensor                     74.20       91.7%              -            -
MatMul, per channel                    74.24       93.0%              101 ms       128 MB
MatMul + Gather, per tensor            74.12       92.0%              96 ms        77 MB
MatMul + Gather, per channel (chosen)  74.22       92.8%              107 ms       78 MB
MatMul + Gather, per channel, 7-bit    74.38       92.0%              105 ms       78 MB
=====================================  ==========  =================  ===========  ========

Quantising the embedding costs no measurable quality and saves most of what is left (the vocabulary of
32128 x d_model is the largest tensor), so it is quantised. Per-channel scales agree with FP32 slightly more
often at the same speed. Speeds within +-10% are noise on the shared two-core machine they were measured on.

onnx and onnxruntime are imported inside the function.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from modelyard.errors import UsageError, YardError
from modelyard.optimize._onnx import (
    EXTERNAL_DATA_THRESHOLD,
    check_outside,
    check_target,
    finish,
    make_staging,
    require,
    share_weights,
)
from modelyard.serving import _format as fmt

QUANTIZATION = "int8-dynamic"
#: MatMul (Gemm too, should a graph have one) and the embedding Gather; see the table in the module docstring
OP_TYPES = ("MatMul", "Gemm", "Gather")
#: one scale per output channel of each weight matrix
PER_CHANNEL = True
#: 7-bit weights avoid the saturation of u8 x s8 multiply-adds (VPMADDUBSW) on x86 CPUs without VNNI, where
#: ONNX Runtime recommends it for per-channel weights; CPUs with VNNI (every x86 server CPU since 2019) and
#: ARM do not saturate, and full 8 bits agree with FP32 a little more often there (measured on a VNNI CPU).
REDUCE_RANGE = False


def quantize_int8(onnx_dir: str | Path, out_dir: str | Path) -> Path:
    """Quantise the ONNX seq2seq directory ``onnx_dir`` (from :func:`~modelyard.optimize.export_onnx`) to
    INT8 into ``out_dir``, which must not exist or be an empty directory. Returns ``out_dir``.

    Raises :class:`~modelyard.errors.NotFoundError`, :class:`~modelyard.errors.UsageError` or
    :class:`~modelyard.errors.IntegrityError` for a missing, wrong or damaged ``onnx_dir`` (every file is
    checked against onnx.json), a :class:`~modelyard.errors.UsageError` for one that is already quantised,
    and :class:`~modelyard.errors.AlreadyExistsError` when ``out_dir`` holds files. Nothing is written
    when it fails."""
    src = Path(onnx_dir)
    out = Path(out_dir)
    require("INT8 quantisation", "onnx", "onnxruntime")
    meta = fmt.read_meta(src, verify=True)
    if meta.get("quantization"):
        raise UsageError(f"{src} is already quantised ({meta['quantization']}); quantise the FP32 export")
    check_target(out)
    check_outside(src, out)

    from onnxruntime.quantization import QuantType, quantize_dynamic

    # int8 weights are a quarter of the FP32 ones; above the threshold even those go to external data
    large = int(meta["files"].get(fmt.WEIGHTS_NAME, {}).get("size", 0)) > 4 * EXTERNAL_DATA_THRESHOLD
    tmp = make_staging(out)
    try:
        for name in fmt.GRAPHS:
            file = meta["graphs"][name]["file"]
            quantizer_log = logging.getLogger("root")
            level = quantizer_log.level
            quantizer_log.setLevel(
                logging.ERROR
            )  # the quantiser logs a pre-processing hint on the root logger
            try:
                quantize_dynamic(
                    src / file,
                    tmp / file,
                    op_types_to_quantize=list(OP_TYPES),
                    per_channel=PER_CHANNEL,
                    reduce_range=REDUCE_RANGE,
                    weight_type=QuantType.QInt8,
                    use_external_data_format=large,
                )
            except Exception as exc:
                raise YardError(f"onnxruntime could not quantise {file}: {exc}") from exc
            finally:
                quantizer_log.setLevel(level)
        share_weights(tmp)
        for name in meta["files"]:
            if name in fmt.SIDE_FILES:
                shutil.copyfile(src / name, tmp / name)
        new_meta: dict[str, Any] = {
            key: value for key, value in meta.items() if key not in ("files", "quantization", "source")
        }
        new_meta["quantization"] = QUANTIZATION
        new_meta["quantization_settings"] = {
            "tool": "onnxruntime.quantization.quantize_dynamic",
            "weight_type": "QInt8",
            "activation_type": "QUInt8 (dynamic, per tensor)",
            "op_types": list(OP_TYPES),
            "per_channel": PER_CHANNEL,
            "reduce_range": REDUCE_RANGE,
        }
        new_meta["source"] = {
            **(meta.get("source") or {}),
            "fp32_onnx_json_sha256": fmt.sha256_file(src / fmt.META_NAME),
        }
        finish(tmp, out, new_meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
