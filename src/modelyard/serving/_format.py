"""The ONNX seq2seq directory: what :func:`modelyard.optimize.export_onnx` writes and
:class:`modelyard.serving.OnnxSeq2Seq` reads.

A directory holds three graphs (``encoder.onnx``, ``decoder.onnx`` for the first decoding step,
``decoder_with_past.onnx`` for the steps with a KV cache), their weights in ``weights.onnx.data`` (ONNX
external data that all three graphs reference, so a tensor two graphs use is stored once), the tokenizer
files (``tokenizer.json`` is the one a runtime needs), ``config.json``, ``generation_config.json`` and
``onnx.json``: sizes, token ids, the input and output names of each graph, how the graphs were made, and the
size and SHA-256 of every other file in the directory, so a runtime can check what it loads.

Tensor names follow Hugging Face optimum's seq2seq export, so tools that know those graphs know these:

* encoder: ``input_ids``, ``attention_mask`` -> ``last_hidden_state``
* decoder: ``input_ids``, ``encoder_hidden_states``, ``encoder_attention_mask`` -> ``logits``,
  ``present.{i}.decoder.key``, ``present.{i}.decoder.value``, ``present.{i}.encoder.key``,
  ``present.{i}.encoder.value``
* decoder_with_past: ``input_ids``, ``encoder_attention_mask``, ``past_key_values.{i}.decoder.key``,
  ``past_key_values.{i}.decoder.value``, ``past_key_values.{i}.encoder.key``,
  ``past_key_values.{i}.encoder.value`` -> ``logits``, ``present.{i}.decoder.key``,
  ``present.{i}.decoder.value``

Key and value tensors are ``(batch, num_heads, length, d_kv)``; the self-attention ones grow by one position
per step, the cross-attention ones are computed once by ``decoder`` and passed back unchanged.

This module uses only the standard library: the exporter (which needs torch) and the runtime (which must not)
both import it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from modelyard.errors import IntegrityError, NotFoundError, UsageError

FORMAT = "modelyard.onnx-seq2seq/1"
META_NAME = "onnx.json"
TOKENIZER_NAME = "tokenizer.json"
GRAPHS = ("encoder", "decoder", "decoder_with_past")
GRAPH_FILES = {name: f"{name}.onnx" for name in GRAPHS}
#: the graphs' weights, each distinct tensor once (the two decoder graphs share all of theirs, and every graph
#: the embedding), as ONNX external data
WEIGHTS_NAME = "weights.onnx.data"
#: files copied from the model directory next to the graphs when present (tokenizer.json is required)
SIDE_FILES = (
    "config.json",
    "generation_config.json",
    TOKENIZER_NAME,
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "spiece.model",
)

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}\Z")
_CHUNK = 1 << 20


def encoder_io() -> tuple[list[str], list[str]]:
    return ["input_ids", "attention_mask"], ["last_hidden_state"]


def decoder_io(num_layers: int) -> tuple[list[str], list[str]]:
    outputs = ["logits"]
    for i in range(num_layers):
        outputs += [f"present.{i}.{side}.{kv}" for side in ("decoder", "encoder") for kv in ("key", "value")]
    return ["input_ids", "encoder_hidden_states", "encoder_attention_mask"], outputs


def decoder_with_past_io(num_layers: int) -> tuple[list[str], list[str]]:
    inputs = ["input_ids", "encoder_attention_mask"]
    outputs = ["logits"]
    for i in range(num_layers):
        inputs += [
            f"past_key_values.{i}.{side}.{kv}" for side in ("decoder", "encoder") for kv in ("key", "value")
        ]
        outputs += [f"present.{i}.decoder.{kv}" for kv in ("key", "value")]
    return inputs, outputs


def graph_io(name: str, num_layers: int) -> tuple[list[str], list[str]]:
    if name == "encoder":
        return encoder_io()
    if name == "decoder":
        return decoder_io(num_layers)
    return decoder_with_past_io(num_layers)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def describe_files(root: Path) -> dict[str, dict[str, Any]]:
    """``name -> {"size", "sha256"}`` for every regular file of ``root`` except onnx.json (the directory is
    flat: a subdirectory or a symlink is refused)."""
    out: dict[str, dict[str, Any]] = {}
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name == META_NAME:
            continue
        if entry.is_symlink() or not entry.is_file():
            raise IntegrityError(f"{root}: {entry.name} is not a regular file", file=entry.name)
        out[entry.name] = {"size": entry.stat().st_size, "sha256": sha256_file(entry)}
    return out


def write_json(path: Path, data: dict[str, Any]) -> None:
    """``data`` as indented JSON, flushed to disk."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def fsync_tree(root: Path) -> None:
    """fsync every file of the flat directory ``root`` and the directory itself."""
    for entry in root.iterdir():
        if entry.is_file() and not entry.is_symlink():
            fd = os.open(entry, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fsync_dir(root)


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _int(meta: dict[str, Any], *keys: str) -> int:
    node: Any = meta
    for key in keys:
        node = node[key]
    if isinstance(node, bool) or not isinstance(node, int):
        raise TypeError(f"{'.'.join(keys)} is not an integer")
    return node


def read_meta(root: Path, *, verify: bool = True) -> dict[str, Any]:
    """Read and check ``root/onnx.json``: the format, the sizes and token ids a runtime needs, safe file
    names, every graph and the tokenizer present, and (``verify``) every listed file's size and SHA-256 and no
    unlisted file. Raises :class:`NotFoundError` for a missing directory, :class:`UsageError` for a directory
    that is not an ONNX export, :class:`IntegrityError` for a damaged one."""
    if not root.is_dir():
        raise NotFoundError(f"ONNX model directory {str(root)!r} not found")
    meta_path = root / META_NAME
    if not meta_path.is_file() or meta_path.is_symlink():
        raise UsageError(
            f"{root} is not an ONNX model directory (no {META_NAME}); make one with "
            "modelyard.optimize.export_onnx(model_dir, out_dir)"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            raise TypeError("not a JSON object")
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{root}: {META_NAME} is not valid JSON ({exc})", file=META_NAME) from None
    if meta.get("format") != FORMAT:
        raise UsageError(
            f"{root}: {META_NAME} has format {meta.get('format')!r}; this modelyard reads {FORMAT!r} "
            "(export the model again with this version)"
        )
    try:
        for keys in (
            ("config", "num_layers"),
            ("config", "num_decoder_layers"),
            ("config", "num_heads"),
            ("config", "d_kv"),
            ("config", "d_model"),
            ("config", "vocab_size"),
            ("tokens", "pad_token_id"),
            ("tokens", "decoder_start_token_id"),
        ):
            if _int(meta, *keys) < 0:
                raise ValueError(f"{'.'.join(keys)} is negative")
        eos = meta["tokens"]["eos_token_id"]
        if not isinstance(eos, list) or not eos or not all(type(e) is int and e >= 0 for e in eos):
            raise TypeError("tokens.eos_token_id is not a non-empty list of token ids")
        files = meta["files"]
        graphs = meta["graphs"]
        if not isinstance(files, dict) or not isinstance(graphs, dict):
            raise TypeError("files and graphs must be objects")
        layers = _int(meta, "config", "num_decoder_layers")
        for name in GRAPHS:
            graph = graphs[name]
            inputs, outputs = graph_io(name, layers)
            if graph["file"] != GRAPH_FILES[name] or graph["inputs"] != inputs or graph["outputs"] != outputs:
                raise ValueError(f"graph {name!r} does not have the expected file, inputs and outputs")
        for name, info in files.items():
            if not isinstance(name, str) or not _SAFE_NAME.match(name) or ".." in name or name == META_NAME:
                raise ValueError(f"unsafe file name {name!r}")
            if not isinstance(info, dict) or not isinstance(info.get("sha256"), str):
                raise TypeError(f"files[{name!r}] has no sha256")
            _int(info, "size")
    except (KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(f"{root}: {META_NAME} is malformed ({exc})", file=META_NAME) from None
    for needed in (*GRAPH_FILES.values(), TOKENIZER_NAME):
        if needed not in files:
            raise IntegrityError(f"{root}: {META_NAME} does not list {needed}", file=needed)
    for name in files:
        path = root / name
        if path.is_symlink() or not path.is_file():
            raise IntegrityError(f"{root}: {name} is listed in {META_NAME} but missing", file=name)
    if verify:
        present = {p.name for p in root.iterdir() if p.name != META_NAME}
        extra = sorted(present - set(files))
        if extra:
            raise IntegrityError(f"{root}: files not listed in {META_NAME}: {', '.join(extra)}", files=extra)
        for name, info in sorted(files.items()):
            path = root / name
            if path.stat().st_size != info["size"] or sha256_file(path) != info["sha256"]:
                raise IntegrityError(
                    f"{root}: {name} does not match its SHA-256 in {META_NAME} (changed or damaged since "
                    "export)",
                    file=name,
                )
    return meta


def refuse_onnx_source(src: Path, role: str = "") -> None:
    """A UsageError when ``src`` is an ONNX export (onnx.json, no manifest.json: what export_onnx or
    quantize_int8 writes) where the PyTorch model it came from is needed. The manifest check read it as a
    damaged save (an IntegrityError saying "no manifest.json"), training's weights check as a directory
    without safetensors. ``role``: e.g. ``teacher``, ``student`` or ``model.pretrained``. Here rather than
    in modelyard.optimize so that modelyard.training can use it without importing the optimizer."""
    if (src / META_NAME).is_file() and not (src / "manifest.json").exists():
        raise UsageError(
            f"{role + ' ' if role else ''}{src} is an ONNX model (export_onnx or quantize_int8 wrote it), "
            "not a PyTorch/transformers model; give the model directory it was exported from (written by "
            "modelyard.training.save_model; for a registered ONNX version, download its PyTorch parent)"
        )
