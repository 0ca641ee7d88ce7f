"""ONNX export of a T5 seq2seq model directory for CPU inference with ONNX Runtime.

:func:`export_onnx` turns a directory written by :func:`modelyard.training.save_model` into the directory
:class:`modelyard.serving.OnnxSeq2Seq` loads (see :mod:`modelyard.serving._format` for its layout and tensor
names): an encoder graph, a first-step decoder graph and a decoder graph with the KV cache, the tokenizer
files, the model's configs and ``onnx.json``.

How:

1. The model directory is verified (hashes, no pickle) and loaded with :func:`modelyard.training.load_model`;
   only ``model_type: t5`` seq2seq models are accepted.
2. Each graph is a small ``nn.Module`` over the model's own submodules with flat tensor inputs and outputs
   (:mod:`modelyard.optimize._t5graphs`), exported with the TorchScript exporter
   (``torch.onnx.export(..., dynamo=False)``): it needs nothing beyond torch, and tracing these plain modules
   gives static graphs with dynamic batch and sequence axes. (The dynamo exporter needs onnxscript and gives
   the same graphs for these modules; the TorchScript one is what torch 2.13 still ships without extras.)
3. ONNX Runtime optimises each graph offline at the *basic* level (constant folding, redundant node
   elimination, semantics-preserving fusions into standard ONNX ops) and writes it back. Not *extended* or
   *all*: those fuse into ``com.microsoft`` contrib ops (or, for *all*, hardware-specific layouts) that only
   ONNX Runtime, and for *all* only the same kind of CPU, can run, and that the quantiser does not know. The
   basic-level file stays a plain ONNX model; the runtime applies the extended fusions when it loads it.
4. The exported graphs are run on a fixed input and their logits compared with the transformers model's;
   the tokenizer.json is loaded with the ``tokenizers`` library alone and checked to encode and decode like
   the transformers tokenizer. Either mismatch fails the export.
5. Everything is written into a temporary directory next to ``out_dir``, flushed, and renamed to
   ``out_dir`` at the end: a failed export leaves nothing behind.

torch, transformers, onnx and onnxruntime are imported inside the functions.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

from modelyard.errors import AlreadyExistsError, IntegrityError, NotFoundError, UsageError, YardError
from modelyard.serving import _format as fmt
from modelyard.serving._format import refuse_onnx_source

#: opset used when none is given; 14 is the oldest with everything the graphs use, 20 the newest the
#: TorchScript exporter writes.
DEFAULT_OPSET = 17
MIN_OPSET, MAX_OPSET = 14, 20
#: models with more bytes of weights than this are optimised with external data (protobuf caps files at 2 GiB)
EXTERNAL_DATA_THRESHOLD = 1536 << 20
#: the extra that installs each module the ONNX steps import
EXTRAS = {"torch": "train", "transformers": "train", "onnx": "optimize", "onnxruntime": "optimize"}
#: texts the tokenizer check encodes (ASCII, accents, symbols, digits, repeated and edge whitespace)
_TOKENIZER_PROBES = (
    "normalise date (en-US): 7/12/2003",
    "normalise amount (de-DE): 1.234,56 €",
    "  Grüße aus Köln!  Straße 5, 80331 München  ",
    "x , y 's n't ? - ( ) [ ] 東京",
)


def export_onnx(model_dir: str | Path, out_dir: str | Path, *, opset: int | None = None) -> Path:
    """Export the T5 model in ``model_dir`` (written by :func:`modelyard.training.save_model`, tokenizer
    included) to ONNX in ``out_dir``, which must not exist or be an empty directory. Returns ``out_dir``.

    ``opset``: the ONNX opset (default :data:`DEFAULT_OPSET`, 14 to 20).

    Raises :class:`~modelyard.errors.NotFoundError` for a missing ``model_dir``,
    :class:`~modelyard.errors.IntegrityError` for one whose files do not match its manifest (or that holds
    pickle files), :class:`~modelyard.errors.UsageError` for an ONNX export (give the model it was exported
    from), a model that is not a T5 seq2seq model, has no tokenizer, or a bad ``opset``, and
    :class:`~modelyard.errors.AlreadyExistsError` when ``out_dir`` holds files. Nothing is written when it
    fails."""
    from modelyard.training import verify_model_dir

    src = Path(model_dir)
    out = Path(out_dir)
    require("ONNX export", "torch", "transformers", "onnx", "onnxruntime")
    opset = _check_opset(opset)
    check_target(out)
    check_outside(src, out)
    manifest_sha = _verified(src, verify_model_dir)
    config = t5_config(src)
    generation = _read_json(src / "generation_config.json", required=False)
    tokens = token_ids(config, generation)
    _warn_about_decoding_settings(src, generation)

    import torch
    import transformers

    from modelyard.training import load_model

    tmp = make_staging(out)
    try:
        model = load_model(src)
        model.eval()
        model.to(torch.float32)
        _copy_side_files(src, tmp)
        tokenizer = _tokenizer(src, tmp)
        cleanup = _cleanup_flag(tokenizer)
        _check_tokenizer(tokenizer, tmp / fmt.TOKENIZER_NAME, cleanup, int(config["vocab_size"]))
        with tempfile.TemporaryDirectory(prefix="raw-", dir=tmp) as raw_dir:
            raw = Path(raw_dir)
            with torch.no_grad():
                _export_graphs(model, raw, opset)
            large = _weights_size(model) > EXTERNAL_DATA_THRESHOLD
            for name in fmt.GRAPHS:
                optimize_graph(raw / fmt.GRAPH_FILES[name], tmp / fmt.GRAPH_FILES[name], external=large)
        share_weights(tmp)
        _check_against_model(model, tmp, tokens)
        layers = int(model.config.num_decoder_layers)
        meta: dict[str, Any] = {
            "format": fmt.FORMAT,
            "architecture": "t5",
            "config": {
                "num_layers": int(model.config.num_layers),
                "num_decoder_layers": layers,
                "num_heads": int(model.config.num_heads),
                "d_kv": int(model.config.d_kv),
                "d_model": int(model.config.d_model),
                "d_ff": int(model.config.d_ff),
                "vocab_size": int(model.config.vocab_size),
            },
            "tokens": tokens,
            "tokenizer": {"file": fmt.TOKENIZER_NAME, "clean_up_tokenization_spaces": cleanup},
            "graphs": graph_table(layers),
            "opset": opset,
            "exporter": {
                "name": "torch.onnx.export",
                "mode": "torchscript (dynamo=False)",
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "onnx": _version("onnx"),
                "onnxruntime": _version("onnxruntime"),
            },
            "optimization": {"level": "basic", "tool": "onnxruntime"},
            "quantization": None,
            "source": {"model_manifest_sha256": manifest_sha},
        }
        finish(tmp, out, meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# -- checks on the input ------------------------------------------------------------------------------------


def require(what: str, *modules: str) -> None:
    """A UsageError naming the extra to install when one of ``modules`` is not installed, before any work: the
    import, deep inside the step, was an unexpected ModuleNotFoundError (after `yard optimize` had downloaded
    and measured the parent)."""
    import importlib.util

    def installed(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            return False

    missing = [m for m in modules if not installed(m)]
    if missing:
        extras = " ".join(f"'modelyard[{e}]'" for e in sorted({EXTRAS[m] for m in missing}, reverse=True))
        raise UsageError(f"{what} needs {', '.join(missing)} (not installed): pip install {extras}")


def _check_opset(opset: int | None) -> int:
    if opset is None:
        return DEFAULT_OPSET
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise UsageError(f"opset must be a whole number from {MIN_OPSET} to {MAX_OPSET}, got {opset!r}")
    return opset


def check_target(out: Path) -> None:
    """``out`` must not exist, or be an empty directory."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise AlreadyExistsError(f"{out} exists and is not a directory; choose another output directory")
    if out.is_dir() and any(out.iterdir()):
        raise AlreadyExistsError(
            f"output directory {out} is not empty; remove it or choose another one (nothing is overwritten)"
        )


def check_outside(src: Path, out: Path) -> None:
    """``out`` must not be ``src`` or lie inside it (links resolved): the result would be an unlisted file of
    its own source, whose verification then fails."""
    if out.resolve().is_relative_to(src.resolve()):
        raise UsageError(
            f"output directory {out} is inside {src}, the directory being read; choose one outside it"
        )


def _verified(src: Path, verify: Any) -> str:
    if not src.exists():
        raise NotFoundError(f"model directory {str(src)!r} not found")
    if not src.is_dir():
        raise UsageError(
            f"{src} is a file; give the model directory written by modelyard.training.save_model"
        )
    refuse_onnx_source(src)
    verify(src)
    return fmt.sha256_file(src / "manifest.json")


def _read_json(path: Path, *, required: bool = True) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise UsageError(f"{path.parent}: no {path.name}; not a transformers model directory")
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path} does not hold a JSON object")
    return data


def t5_config(src: Path) -> dict[str, Any]:
    """The model's config.json; a :class:`UsageError` unless it is a T5 encoder-decoder."""
    config = _read_json(src / "config.json")
    model_type = config.get("model_type")
    architectures = config.get("architectures") or ["T5ForConditionalGeneration"]
    if model_type != "t5" or "T5ForConditionalGeneration" not in architectures:
        raise UsageError(
            f"{src}: ONNX export supports T5 seq2seq models (model_type 't5', T5ForConditionalGeneration), "
            f"not model_type {model_type!r} ({', '.join(map(str, architectures))})"
        )
    if config.get("is_encoder_decoder") is False:
        raise UsageError(f"{src}: config.json says is_encoder_decoder: false; only seq2seq T5 is exported")
    return config


def token_ids(config: dict[str, Any], generation: dict[str, Any]) -> dict[str, Any]:
    """pad, eos (a list) and decoder-start ids, from generation_config.json first, then config.json."""

    def pick(key: str) -> Any:
        value = generation.get(key)
        return config.get(key) if value is None else value

    pad, eos, start = pick("pad_token_id"), pick("eos_token_id"), pick("decoder_start_token_id")
    if start is None:
        start = pad
    eos_list = eos if isinstance(eos, list) else [eos]
    ids = {"pad_token_id": pad, "decoder_start_token_id": start}
    for key, value in ids.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise UsageError(f"the model's {key} is {value!r}; a seq2seq model needs a token id")
    if not eos_list or any(isinstance(e, bool) or not isinstance(e, int) or e < 0 for e in eos_list):
        raise UsageError(f"the model's eos_token_id is {eos!r}; a seq2seq model needs one")
    return {**ids, "eos_token_id": [int(e) for e in eos_list]}


#: generation_config.json settings under which transformers' greedy decoding differs from plain argmax
#: decoding (the value given is the neutral one)
_DECODING_SETTINGS: dict[str, Any] = {
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "min_length": 0,
    "min_new_tokens": None,
    "exponential_decay_length_penalty": None,
    "sequence_bias": None,
}


def _warn_about_decoding_settings(src: Path, generation: dict[str, Any]) -> None:
    changed = sorted(
        key
        for key, neutral in _DECODING_SETTINGS.items()
        if generation.get(key, neutral) not in (neutral, None, [], {})
    )
    if changed:
        warnings.warn(
            f"{src}/generation_config.json sets {', '.join(changed)}; OnnxSeq2Seq decodes greedily without "
            "them (pass min_new_tokens to generate), so its outputs can differ from model.generate's",
            UserWarning,
            stacklevel=3,
        )


# -- staging and publishing (shared with quantize_int8) ------------------------------------------------------


def make_staging(out: Path) -> Path:
    """A new hidden directory next to ``out`` (same filesystem, so the final rename is atomic)."""
    from modelyard.core._paths import temp_prefix

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=temp_prefix(out.name), suffix=".tmp", dir=out.parent))
    except OSError as exc:  # a file on the way, no permission: was a bare FileExistsError/PermissionError
        raise UsageError(
            f"cannot create the output directory {out}: {exc.strerror or exc} "
            f"({exc.filename or out.parent}); choose another"
        ) from None


def graph_table(layers: int) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for name in fmt.GRAPHS:
        inputs, outputs = fmt.graph_io(name, layers)
        table[name] = {"file": fmt.GRAPH_FILES[name], "inputs": inputs, "outputs": outputs}
    return table


def finish(tmp: Path, out: Path, meta: dict[str, Any]) -> None:
    """List every file of ``tmp`` in ``meta``, write onnx.json, flush, and rename ``tmp`` to ``out``."""
    meta = {**meta, "files": fmt.describe_files(tmp)}
    fmt.write_json(tmp / fmt.META_NAME, meta)
    fmt.read_meta(tmp)  # what a runtime will check, checked before publishing
    fmt.fsync_tree(tmp)
    check_target(out)
    try:
        tmp.rename(out)  # replaces an empty directory; fails on a non-empty one
    except OSError as exc:
        raise AlreadyExistsError(f"cannot create {out}: {exc.strerror}; nothing was written") from None
    fmt.fsync_dir(out.parent)


# -- tokenizer -----------------------------------------------------------------------------------------------


def _copy_side_files(src: Path, dst: Path) -> None:
    for name in fmt.SIDE_FILES:
        path = src / name
        if path.is_file() and not path.is_symlink():
            shutil.copyfile(path, dst / name)


def _tokenizer(src: Path, dst: Path) -> Any:
    """The transformers tokenizer of ``src``; writes ``dst/tokenizer.json`` when ``src`` has none (a slow,
    SentencePiece-only tokenizer is converted by transformers)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(src), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"{src}: the tokenizer could not be loaded ({exc}); save the model with its tokenizer "
            "(modelyard.training.save_model(model, tokenizer, dir))"
        ) from None
    if not (dst / fmt.TOKENIZER_NAME).is_file():
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise UsageError(
                f"{src}: no tokenizer.json and the tokenizer cannot be converted to one; the ONNX runtime "
                "needs a tokenizer the `tokenizers` library loads"
            )
        backend.save(str(dst / fmt.TOKENIZER_NAME))
    return tokenizer


def _cleanup_flag(tokenizer: Any) -> bool:
    """Whether transformers' decode applies clean_up_tokenization to this tokenizer's output."""
    if not getattr(tokenizer, "clean_up_tokenization_spaces", False):
        return False
    backend = getattr(tokenizer, "backend_tokenizer", None)
    bpe = backend is not None and type(backend.model).__name__ == "BPE"
    return not bpe or bool(
        getattr(tokenizer, "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False)
    )


def _check_tokenizer(tokenizer: Any, path: Path, cleanup: bool, vocab_size: int) -> None:
    """``path`` loaded by ``tokenizers`` alone must encode like ``tokenizer`` and decode (special tokens
    skipped) like its ``decode(..., skip_special_tokens=True)``."""
    import tokenizers

    from modelyard.serving._onnx import decode_ids

    try:
        plain = tokenizers.Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for malformed files
        raise UsageError(f"{path.name} cannot be loaded by the tokenizers library ({exc})") from None
    plain.no_padding()
    plain.no_truncation()
    expected = tokenizer(list(_TOKENIZER_PROBES))["input_ids"]
    got = [e.ids for e in plain.encode_batch(list(_TOKENIZER_PROBES))]
    if [list(x) for x in expected] != got:
        raise UsageError(f"{path.name} encodes differently from the model's transformers tokenizer")
    size = min(vocab_size, len(tokenizer))
    sequences = [list(range(i, min(i + 7, size))) for i in range(0, size, 7)]
    sequences += [list(x) for x in expected]
    ours = decode_ids(plain, sequences, cleanup=cleanup)
    theirs = [str(t) for t in tokenizer.batch_decode(sequences, skip_special_tokens=True)]
    bad = [i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b]
    if bad:
        i = bad[0]
        raise UsageError(
            f"{path.name} decodes differently from the model's transformers tokenizer "
            f"(ids {sequences[i]}: {ours[i]!r} vs {theirs[i]!r})"
        )


# -- export --------------------------------------------------------------------------------------------------


def _export_graphs(model: Any, raw: Path, opset: int) -> None:
    import torch

    from modelyard.optimize._t5graphs import DecoderGraph, DecoderWithPastGraph, EncoderGraph

    config = model.config
    layers = int(config.num_decoder_layers)
    heads, d_kv = int(config.num_heads), int(config.d_kv)
    vocab = int(config.vocab_size)
    # distinct sizes for every axis (batch 2, source 5, target 2, past 3), a padded row, ids inside the
    # vocabulary, so no axis is traced as a constant by coincidence
    ids = torch.tensor([[4, 5, 6, 7, 1], [8, 9, 1, 0, 0]], dtype=torch.long) % vocab
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.long)
    target = torch.tensor([[0, 3], [0, 4]], dtype=torch.long) % vocab
    step = target[:, 1:]
    batch, source = ids.shape

    encoder = EncoderGraph(model).eval()
    decoder = DecoderGraph(model).eval()
    with_past = DecoderWithPastGraph(model).eval()
    hidden = encoder(ids, mask)

    def kv(length: int) -> torch.Tensor:
        return torch.randn(batch, heads, length, d_kv, generator=torch.Generator().manual_seed(length))

    past: list[torch.Tensor] = []
    for _ in range(layers):
        past += [kv(3), kv(3), kv(source), kv(source)]

    b, s, t = "batch", "encoder_sequence_length", "decoder_sequence_length"
    enc_in, enc_out = fmt.encoder_io()
    dec_in, dec_out = fmt.decoder_io(layers)
    past_in, past_out = fmt.decoder_with_past_io(layers)

    def axes_of(graph: str, name: str) -> dict[int, str]:
        if name == "input_ids":
            return {0: b, 1: s if graph == "encoder" else t}
        if name in ("attention_mask", "encoder_attention_mask", "last_hidden_state", "encoder_hidden_states"):
            return {0: b, 1: s}
        if name == "logits":
            return {0: b, 1: t}
        if ".encoder." in name:
            return {0: b, 2: s}
        if name.startswith("past_key_values."):
            return {0: b, 2: "past_decoder_sequence_length"}
        return {0: b, 2: t if graph == "decoder" else f"past_decoder_sequence_length + {t}"}

    jobs: list[tuple[str, Any, tuple[Any, ...], list[str], list[str]]] = [
        ("encoder", encoder, (ids, mask), enc_in, enc_out),
        ("decoder", decoder, (target, hidden, mask), dec_in, dec_out),
        ("decoder_with_past", with_past, (step, mask, *past), past_in, past_out),
    ]
    for graph, module, args, inputs, outputs in jobs:
        path = raw / fmt.GRAPH_FILES[graph]
        with warnings.catch_warnings():
            # TracerWarnings about shapes read as Python values: every such value here is a layer count, a
            # head count or a size the dynamic axes below make symbolic
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(
                    module,
                    args,
                    str(path),
                    dynamo=False,
                    opset_version=opset,
                    input_names=inputs,
                    output_names=outputs,
                    dynamic_axes={name: axes_of(graph, name) for name in (*inputs, *outputs)},
                    do_constant_folding=True,
                )
            except Exception as exc:
                raise YardError(f"torch.onnx.export failed for the {graph} graph: {exc}") from exc


def optimize_graph(src: Path, dst: Path, *, external: bool) -> None:
    """ONNX Runtime basic-level graph optimisation of ``src`` written to ``dst`` (with ``external``, the
    weights go to ``dst.name + '.data'`` beside it). Basic keeps standard ONNX ops only; see the module
    docstring."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(dst)
    options.log_severity_level = 3
    if external:
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", dst.name + ".data"
        )
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
        )
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    if not dst.is_file():
        raise YardError(f"onnxruntime did not write the optimised {dst.name}")


def share_weights(root: Path) -> None:
    """Move the weights of the three graphs in ``root`` into one external data file, each distinct tensor
    once (same type, shape and bytes): ``decoder.onnx`` and ``decoder_with_past.onnx`` hold the same weights
    and every graph holds the embedding, so inline weights would store most of the model three times.
    Tensors under 1 KiB stay inline. Each tensor starts on a 4 KiB boundary, so ONNX Runtime can map it.
    Per-graph data files (``<graph>.onnx.data``, written for very large graphs) are folded in and removed.
    Unused domains are dropped from each graph's opset imports."""
    import hashlib

    import onnx

    placed: dict[bytes, tuple[int, int]] = {}
    weights = root / fmt.WEIGHTS_NAME
    with open(weights, "wb") as fh:
        for name in fmt.GRAPHS:
            path = root / fmt.GRAPH_FILES[name]
            model = onnx.load(str(path), load_external_data=True)
            for tensor in model.graph.initializer:
                raw = tensor.raw_data
                if len(raw) < 1024:
                    continue
                key = hashlib.sha256(raw).digest() + repr((tensor.data_type, tuple(tensor.dims))).encode()
                if key not in placed:
                    offset = -(-fh.tell() // 4096) * 4096
                    fh.seek(offset)
                    fh.write(raw)
                    placed[key] = (offset, len(raw))
                offset, length = placed[key]
                tensor.ClearField("raw_data")
                del tensor.external_data[:]
                tensor.data_location = onnx.TensorProto.EXTERNAL
                for field, value in (("location", fmt.WEIGHTS_NAME), ("offset", offset), ("length", length)):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = field, str(value)
            # ONNX Runtime declares every domain it knows in the optimised model; keep the ones nodes use, so
            # other ONNX tools see a standard model
            used = {node.domain for node in model.graph.node} | {""}
            kept = [op for op in model.opset_import if op.domain in used]
            del model.opset_import[:]
            model.opset_import.extend(kept)
            onnx.save_model(model, str(path))
    for path in root.iterdir():
        if path.name.endswith(".onnx.data") and path.name != fmt.WEIGHTS_NAME:
            path.unlink()


def _weights_size(model: Any) -> int:
    """Bytes of the model's parameters (tied ones counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return int(total)


def _check_against_model(model: Any, root: Path, tokens: dict[str, Any]) -> None:
    """Run the exported graphs on a fixed padded batch (encoder, first step, three cached steps) and compare
    the logits with the transformers model's forward pass on the same tokens."""
    import numpy as np
    import onnxruntime as ort
    import torch

    vocab = int(model.config.vocab_size)
    layers = int(model.config.num_decoder_layers)
    ids = np.array([[4, 5, 6, 7, 8, 9, 1], [10, 11, 12, 1, 0, 0, 0]], dtype=np.int64) % vocab
    mask = np.array([[1] * 7, [1, 1, 1, 1, 0, 0, 0]], dtype=np.int64)
    start = tokens["decoder_start_token_id"]
    target = np.array([[start, 3, 5, 7], [start, 6, 8, 9]], dtype=np.int64) % vocab
    with torch.no_grad():
        expected = (
            model(
                input_ids=torch.from_numpy(ids),
                attention_mask=torch.from_numpy(mask),
                decoder_input_ids=torch.from_numpy(target),
            )
            .logits.float()
            .numpy()
        )
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sessions = {
        name: ort.InferenceSession(
            str(root / fmt.GRAPH_FILES[name]), options, providers=["CPUExecutionProvider"]
        )
        for name in fmt.GRAPHS
    }
    hidden = sessions["encoder"].run(None, {"input_ids": ids, "attention_mask": mask})[0]
    out = sessions["decoder"].run(
        None, {"input_ids": target[:, :1], "encoder_hidden_states": hidden, "encoder_attention_mask": mask}
    )
    logits = [out[0]]
    past = {}
    for i in range(layers):
        for j, (side, kv) in enumerate(
            (("decoder", "key"), ("decoder", "value"), ("encoder", "key"), ("encoder", "value"))
        ):
            past[f"past_key_values.{i}.{side}.{kv}"] = out[1 + 4 * i + j]
    for t in range(1, target.shape[1]):
        out = sessions["decoder_with_past"].run(
            None, {"input_ids": target[:, t : t + 1], "encoder_attention_mask": mask, **past}
        )
        logits.append(out[0])
        for i in range(layers):
            past[f"past_key_values.{i}.decoder.key"] = out[1 + 2 * i]
            past[f"past_key_values.{i}.decoder.value"] = out[2 + 2 * i]
    got = np.concatenate(logits, axis=1)
    scale = float(np.abs(expected).max())
    diff = float(np.abs(got - expected).max())
    if not np.isfinite(diff) or diff > 1e-3 * (1.0 + scale):
        raise IntegrityError(
            f"the exported graphs disagree with the PyTorch model: max |logit difference| {diff:.3g} "
            f"(logits up to {scale:.3g}); this transformers version may compute T5 differently"
        )


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None
