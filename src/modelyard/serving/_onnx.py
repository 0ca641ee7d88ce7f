"""Seq2seq generation with ONNX Runtime on CPU: the runtime of a directory made by
:func:`modelyard.optimize.export_onnx` or :func:`modelyard.optimize.quantize_int8`.

Imports only numpy, onnxruntime and tokenizers (and the standard library): it serves models where torch and
transformers are not installed.

Decoding is greedy with the KV cache, as ``model.generate(num_beams=1, do_sample=False)`` does it in
transformers: the encoder runs once per batch; the first step (decoder start token) runs ``decoder.onnx``,
which also returns the cross-attention keys and values; every later step feeds one token per row and the
cached keys and values to ``decoder_with_past.onnx``. A row that produced an end-of-sequence token is padded
with the pad token until every row is done or ``max_new_tokens`` is reached; before ``min_new_tokens`` the
end-of-sequence logits are set to minus infinity. Sources are encoded like ``tokenizer(texts,
truncation=True, max_length=max_source_length)`` and batched like :func:`modelyard.training.generate`
(sorted by length, longest first), and outputs are decoded like ``tokenizer.decode(ids,
skip_special_tokens=True)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import tokenizers

from modelyard.errors import IntegrityError, UsageError
from modelyard.serving import _format as fmt

_CACHE_PARTS = (("decoder", "key"), ("decoder", "value"), ("encoder", "key"), ("encoder", "value"))


def clean_up_tokenization(text: str) -> str:
    """transformers' ``clean_up_tokenization`` (spaces before punctuation and English contractions), applied
    when the tokenizer's config asks for it."""
    return (
        text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
    )


def decode_ids(tokenizer: Any, sequences: Sequence[Sequence[int]], *, cleanup: bool) -> list[str]:
    """``tokenizer.decode(ids, skip_special_tokens=True)`` of transformers, with the ``tokenizers`` library
    alone: tokens flagged special in tokenizer.json (pad, eos, unk, sentinels) are dropped and the decoder
    (for T5, Metaspace: "▁" becomes a space, the leading one removed) joins the rest."""
    texts = tokenizer.decode_batch([list(map(int, s)) for s in sequences], skip_special_tokens=True)
    return [clean_up_tokenization(t) if cleanup else str(t) for t in texts]


def _whole(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise UsageError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


class OnnxSeq2Seq:
    """A T5 seq2seq model in ONNX, loaded for CPU inference.

    ``path``: a directory written by :func:`modelyard.optimize.export_onnx` or
    :func:`~modelyard.optimize.quantize_int8`. ``intra_op_threads``: threads ONNX Runtime uses inside one
    operator (default: its own choice, one per physical core). ``verify``: check every file against the
    sizes and SHA-256 digests in onnx.json before loading (on by default; a caller that verified the files
    itself, such as the model registry, may turn it off).

    Raises :class:`~modelyard.errors.NotFoundError` for a missing directory,
    :class:`~modelyard.errors.UsageError` for one that is not an ONNX export, and
    :class:`~modelyard.errors.IntegrityError` when a file is missing, altered, or cannot be loaded.
    An instance is safe to use from several threads."""

    def __init__(self, path: str | Path, *, intra_op_threads: int | None = None, verify: bool = True) -> None:
        root = Path(path)
        if intra_op_threads is not None:
            intra_op_threads = _whole("intra_op_threads", intra_op_threads, 1)
        self.path = root
        self.meta: dict[str, Any] = fmt.read_meta(root, verify=verify)
        config, tokens = self.meta["config"], self.meta["tokens"]
        self.num_layers = int(config["num_decoder_layers"])
        self.vocab_size = int(config["vocab_size"])
        self.pad_token_id = int(tokens["pad_token_id"])
        self.eos_token_ids = [int(e) for e in tokens["eos_token_id"]]
        self.decoder_start_token_id = int(tokens["decoder_start_token_id"])
        self.quantization: str | None = self.meta.get("quantization")
        self._cleanup = bool(self.meta.get("tokenizer", {}).get("clean_up_tokenization_spaces", False))

        options = ort.SessionOptions()
        # ORT_ENABLE_ALL (the default) adds the fusions the exporter left out for portability; they are
        # made for this machine at load time.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        if intra_op_threads is not None:
            options.intra_op_num_threads = intra_op_threads
        options.log_severity_level = 3
        self._sessions: dict[str, Any] = {}
        for name in fmt.GRAPHS:
            graph = self.meta["graphs"][name]
            try:
                session = ort.InferenceSession(
                    str(root / graph["file"]), options, providers=["CPUExecutionProvider"]
                )
            except Exception as exc:  # onnxruntime raises its own pybind11 exception types
                detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise IntegrityError(
                    f"{root}: {graph['file']} cannot be loaded by onnxruntime ({detail})", file=graph["file"]
                ) from None
            inputs = [i.name for i in session.get_inputs()]
            outputs = [o.name for o in session.get_outputs()]
            if inputs != graph["inputs"] or outputs != graph["outputs"]:
                raise IntegrityError(
                    f"{root}: {graph['file']} has inputs {inputs} and outputs {outputs}, not the ones "
                    f"{fmt.META_NAME} lists",
                    file=graph["file"],
                )
            self._sessions[name] = session
        try:
            tokenizer = tokenizers.Tokenizer.from_file(str(root / fmt.TOKENIZER_NAME))
        except Exception as exc:  # tokenizers raises a bare Exception for malformed files
            raise IntegrityError(
                f"{root}: {fmt.TOKENIZER_NAME} cannot be loaded ({exc})", file=fmt.TOKENIZER_NAME
            ) from None
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self._tokenizer = tokenizer
        self._specials = tokenizer.num_special_tokens_to_add(is_pair=False)
        self._past_names = [
            f"past_key_values.{i}.{side}.{kv}" for i in range(self.num_layers) for side, kv in _CACHE_PARTS
        ]

    def __repr__(self) -> str:
        quantized = f", quantization={self.quantization!r}" if self.quantization else ""
        return f"OnnxSeq2Seq({str(self.path)!r}{quantized})"

    # -- public ------------------------------------------------------------------------------------------

    def encode(self, sources: Sequence[str], *, max_source_length: int = 512) -> list[list[int]]:
        """Token ids of each source with the end-of-sequence token, truncated to ``max_source_length`` ids
        as ``tokenizer(sources, truncation=True, max_length=max_source_length)`` does."""
        texts = self._texts(sources)
        limit = _whole("max_source_length", max_source_length, self._specials + 1)
        out: list[list[int]] = []
        for encoding in self._tokenizer.encode_batch(texts, add_special_tokens=False):
            encoding.truncate(limit - self._specials)
            out.append(list(self._tokenizer.post_process(encoding).ids))
        return out

    def decode(self, sequences: Sequence[Sequence[int]]) -> list[str]:
        """``tokenizer.decode(ids, skip_special_tokens=True)`` of each sequence."""
        return decode_ids(self._tokenizer, sequences, cleanup=self._cleanup)

    def generate(
        self,
        sources: Sequence[str],
        *,
        max_new_tokens: int = 128,
        batch_size: int = 32,
        max_source_length: int = 512,
        min_new_tokens: int = 0,
    ) -> list[str]:
        """Greedy decoding of ``sources``; the texts in the order of ``sources``, stripped, as
        :func:`modelyard.training.generate` returns them. ``min_new_tokens`` forbids the end-of-sequence
        token before that many tokens."""
        ids = self.generate_ids(
            sources,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            max_source_length=max_source_length,
            min_new_tokens=min_new_tokens,
        )
        return [text.strip() for text in self.decode(ids)]

    def generate_ids(
        self,
        sources: Sequence[str],
        *,
        max_new_tokens: int = 128,
        batch_size: int = 32,
        max_source_length: int = 512,
        min_new_tokens: int = 0,
    ) -> list[list[int]]:
        """Like :meth:`generate`, the generated token ids (without the decoder start token; rows that ended
        early padded with the pad token to the batch's length)."""
        max_new_tokens = _whole("max_new_tokens", max_new_tokens, 1)
        batch_size = _whole("batch_size", batch_size, 1)
        min_new_tokens = _whole("min_new_tokens", min_new_tokens, 0)
        encoded = self.encode(sources, max_source_length=max_source_length)
        order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i))
        out: list[list[int]] = [[] for _ in encoded]
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            rows = self._generate_batch([encoded[i] for i in idx], max_new_tokens, min_new_tokens)
            for i, row in zip(idx, rows, strict=True):
                out[i] = row
        return out

    # -- internals ---------------------------------------------------------------------------------------

    def _texts(self, sources: Sequence[str]) -> list[str]:
        if isinstance(sources, str):
            raise UsageError("sources must be a sequence of strings, not one string; wrap it in a list")
        texts = list(sources)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise UsageError(f"sources must be strings; item {i} is {type(text).__name__}")
        return texts

    def _generate_batch(
        self, rows: list[list[int]], max_new_tokens: int, min_new_tokens: int
    ) -> list[list[int]]:
        batch = len(rows)
        width = max(len(r) for r in rows)
        input_ids = np.full((batch, width), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((batch, width), dtype=np.int64)
        for r, seq in enumerate(rows):
            input_ids[r, : len(seq)] = seq
            mask[r, : len(seq)] = 1
        hidden = self._sessions["encoder"].run(None, {"input_ids": input_ids, "attention_mask": mask})[0]
        step = np.full((batch, 1), self.decoder_start_token_id, dtype=np.int64)
        outputs = self._sessions["decoder"].run(
            None, {"input_ids": step, "encoder_hidden_states": hidden, "encoder_attention_mask": mask}
        )
        past = dict(zip(self._past_names, outputs[1:], strict=True))
        eos = np.array(self.eos_token_ids, dtype=np.int64)
        done = np.zeros(batch, dtype=bool)
        generated: list[np.ndarray] = []
        with_past = self._sessions["decoder_with_past"]
        for position in range(max_new_tokens):
            logits = outputs[0][:, -1, :]
            if position < min_new_tokens:
                logits = logits.copy()
                logits[:, eos] = -np.inf
            token = np.argmax(logits, axis=-1).astype(np.int64)
            token = np.where(done, self.pad_token_id, token)
            generated.append(token)
            done |= np.isin(token, eos)
            if done.all() or position == max_new_tokens - 1:
                break
            outputs = with_past.run(
                None, {"input_ids": token[:, None], "encoder_attention_mask": mask, **past}
            )
            for i in range(self.num_layers):
                past[f"past_key_values.{i}.decoder.key"] = outputs[1 + 2 * i]
                past[f"past_key_values.{i}.decoder.value"] = outputs[2 + 2 * i]
        tokens = np.stack(generated, axis=1)
        return [list(map(int, row)) for row in tokens]
