"""Step 3 (the model) and the precision decision of step 5.

* :func:`build_model` builds a seq2seq model from a recipe: ``init: scratch`` gives a seeded
  ``T5ForConditionalGeneration`` with the preset (or explicit) sizes, ``pretrained:`` loads safetensors
  weights with ``AutoModelForSeq2SeqLM`` (pickle weights are refused, never unpickled).
* :func:`resolve_precision` turns ``precision: auto|bf16|fp16|fp32`` into what a device can run;
  :func:`autocast_context` and :func:`make_grad_scaler` are the two objects the training loop needs for it.
* :func:`save_model` writes safetensors + config + generation config (+ tokenizer) and a ``manifest.json``
  with the size and SHA-256 of every file, written last; :func:`load_model` verifies every hash first.

Precision rules (a pure function of the request, the device's capabilities and the model type):

=========  ===========================  ===========================  ===========================
request    CPU                          CUDA with bf16               CUDA without bf16 (pre-Ampere)
=========  ===========================  ===========================  ===========================
auto       fp32 (1)                     bf16                         fp32 for T5 (2), else fp16
bf16       bf16 (CPU autocast) (3)      bf16                         UsageError
fp16       UsageError (4)               fp16 + GradScaler (5)        fp16 + GradScaler (5)
fp32       fp32                         fp32                         fp32
=========  ===========================  ===========================  ===========================

1. bf16 autocast on CPU is slower than fp32 on most CPUs (no AMX/AVX512-BF16), so ``auto`` does not pick it.
2. T5 activations overflow fp16's range (inf/NaN losses), so ``auto`` never picks fp16 for the T5 family.
3. Asked for explicitly, bf16 on CPU is allowed: ``torch.autocast("cpu", dtype=torch.bfloat16)`` works on
   every CPU, and it is how a bf16 run is reproduced without a GPU.
4. fp16 on CPU has no gradient scaler worth the name and no speed benefit; it is refused with a hint.
5. fp16 on a T5 model is allowed when asked for explicitly, with a :class:`PrecisionWarning`.

torch and transformers are imported inside the functions, so importing ``modelyard.training`` stays light.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from modelyard.errors import IntegrityError, NotFoundError, UsageError

if TYPE_CHECKING:
    from modelyard.training._recipe import Recipe

Precision = Literal["bf16", "fp16", "fp32"]

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "modelyard.model/1"
#: file suffixes that hold pickled Python objects; a model directory with any of them is refused.
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib"})
#: model types of the T5 family, whose activations overflow fp16.
T5_FAMILY = frozenset({"t5", "mt5", "umt5", "longt5", "switch_transformers", "t5gemma"})

_CHUNK = 1 << 20


class PrecisionWarning(UserWarning):
    """A precision that runs but is known to be risky (fp16 on a T5 model)."""


# -- the model --------------------------------------------------------------------------------------------


def t5_config(
    dims: Any, vocab_size: int, pad_token_id: int, eos_token_id: int, decoder_start_token_id: int
) -> Any:
    """The ``T5Config`` of a scratch model of ``dims`` (a :class:`T5Dims`)."""
    import transformers

    T5Config: Any = transformers.T5Config
    return T5Config(
        vocab_size=vocab_size,
        d_model=dims.d_model,
        d_kv=dims.kv,
        d_ff=dims.d_ff,
        num_layers=dims.num_layers,
        num_decoder_layers=dims.num_decoder_layers or dims.num_layers,
        num_heads=dims.num_heads,
        relative_attention_num_buckets=dims.relative_attention_num_buckets,
        dropout_rate=dims.dropout_rate,
        feed_forward_proj=dims.feed_forward_proj,
        tie_word_embeddings=dims.tie_word_embeddings,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        decoder_start_token_id=decoder_start_token_id,
        is_encoder_decoder=True,
    )


def build_model(
    recipe: Recipe,
    *,
    vocab_size: int | None,
    pad_token_id: int = 0,
    eos_token_id: int = 1,
    decoder_start_token_id: int = 0,
) -> Any:
    """The recipe's model, in train mode, in fp32, on CPU.

    ``init: scratch``: a ``T5ForConditionalGeneration`` with the preset or explicit sizes and ``vocab_size``
    (the tokenizer's, required) embeddings, initialised under ``hyperparameters.seed`` (two builds are bitwise
    equal; the caller's RNG state is left as it was). The token ids go into the config and the generation
    config.

    ``pretrained:``: ``AutoModelForSeq2SeqLM.from_pretrained(path_or_id, revision=...,
    use_safetensors=True)``. Pickle weights (``pytorch_model.bin`` and friends) are refused. If ``vocab_size``
    is larger than the model's embedding table, the embeddings are resized; a smaller one is left alone
    (flan-t5 pads its 32100 tokens to 32128 rows, and shrinking would only drop unused rows). The token-id
    arguments apply to scratch models only; a pretrained model keeps its own.
    """
    section = recipe.model
    dims = section.dims()
    if dims is not None:
        if vocab_size is None:
            raise UsageError("a scratch model needs vocab_size (the tokenizer's vocabulary size)")
        if vocab_size < 1:
            raise UsageError(f"vocab_size must be at least 1, got {vocab_size}")
        for name, value in (
            ("pad_token_id", pad_token_id),
            ("eos_token_id", eos_token_id),
            ("decoder_start_token_id", decoder_start_token_id),
        ):
            if not 0 <= value < vocab_size:
                raise UsageError(f"{name} {value} is outside the vocabulary (size {vocab_size})")
        import torch
        import transformers

        T5ForConditionalGeneration: Any = transformers.T5ForConditionalGeneration
        config = t5_config(dims, vocab_size, pad_token_id, eos_token_id, decoder_start_token_id)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.hyperparameters.seed)
            model = T5ForConditionalGeneration(config)
    else:
        assert section.pretrained is not None
        model = _load_pretrained(section.pretrained, section.revision)
        if vocab_size is not None and vocab_size > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(vocab_size)
    model.to("cpu")
    model.train()
    return model


def _load_pretrained(path_or_id: str, revision: str | None) -> Any:
    import torch
    import transformers

    AutoModelForSeq2SeqLM: Any = transformers.AutoModelForSeq2SeqLM

    local = Path(path_or_id).expanduser()
    _check_local_source(path_or_id)
    try:
        return AutoModelForSeq2SeqLM.from_pretrained(
            str(local) if local.is_dir() else path_or_id,
            revision=revision,
            use_safetensors=True,
            trust_remote_code=False,
            local_files_only=local.is_dir(),
            dtype=torch.float32,
        )
    except (OSError, ValueError) as exc:
        raise NotFoundError(
            f"model.pretrained {path_or_id!r}"
            + (f" (revision {revision!r})" if revision else "")
            + f" could not be loaded with safetensors weights: {_first_line(exc)}"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_pretrained(recipe: Recipe) -> None:
    """Refuse a local ``model.pretrained`` that cannot be loaded (a file, an ONNX export, pickle-only or no
    weights) before any run, study or job exists: a config mistake, not a FAILED run. Needs no torch. A hub
    id, or a path that is not here (a job's pod), is left to the load."""
    if recipe.model.pretrained is not None:
        _check_local_source(recipe.model.pretrained)


def _check_local_source(path_or_id: str) -> None:
    local = Path(path_or_id).expanduser()
    if local.is_dir():
        _check_local_weights(local)
    elif local.exists():
        raise UsageError(
            f"model.pretrained {path_or_id!r} is a file; give the directory that holds config.json"
        )


def _check_local_weights(path: Path) -> None:
    names = {p.name for p in path.iterdir() if p.is_file()}
    if not any(n.endswith(".safetensors") or n.endswith(".safetensors.index.json") for n in names):
        # An ONNX export has no PyTorch weights: say so and name what to give (it read as "no safetensors").
        # The check lives with the ONNX format (standard library only), not in modelyard.optimize.
        from modelyard.serving._format import refuse_onnx_source

        refuse_onnx_source(path, "model.pretrained")
        pickled = sorted(n for n in names if Path(n).suffix in PICKLE_SUFFIXES)
        if pickled:
            raise UsageError(
                f"model.pretrained {str(path)!r} has only pickle weights ({', '.join(pickled)}); "
                "modelyard never unpickles weights. Convert them to safetensors once in a trusted "
                "environment, e.g. "
                "AutoModelForSeq2SeqLM.from_pretrained(path).save_pretrained(path, safe_serialization=True)"
            )
        raise UsageError(f"model.pretrained {str(path)!r} holds no *.safetensors weights")


# -- precision --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceCaps:
    """What a device can do, as far as the precision decision is concerned. Build one with
    :func:`device_caps`, or by hand in tests to take the CUDA branches without a GPU."""

    type: str  # "cpu", "cuda", ...
    bf16: bool
    fp16: bool


def device_caps(device: Any) -> DeviceCaps:
    """Probe a device (``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a ``torch.device``)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cpu":
        return DeviceCaps("cpu", bf16=True, fp16=False)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device {str(dev)!r} was asked for but CUDA is not available")
        return DeviceCaps("cuda", bf16=bool(torch.cuda.is_bf16_supported()), fp16=True)
    return DeviceCaps(dev.type, bf16=False, fp16=False)


def _caps(device: Any) -> DeviceCaps:
    return device if isinstance(device, DeviceCaps) else device_caps(device)


def resolve_precision(
    recipe_precision: Literal["auto", "bf16", "fp16", "fp32"] | str,
    device: Any,
    model_type: str,
) -> Precision:
    """The precision to train in (see the table in this module's docstring). ``device`` is a
    :class:`DeviceCaps` or anything :func:`device_caps` accepts; ``model_type`` is
    ``model.config.model_type``.
    Raises :class:`~modelyard.errors.UsageError` when the device cannot run the requested precision."""
    caps = _caps(device)
    t5 = model_type.lower() in T5_FAMILY
    if recipe_precision == "fp32":
        return "fp32"
    if recipe_precision == "auto":
        if caps.type == "cpu":
            return "fp32"
        if caps.bf16:
            return "bf16"
        if caps.fp16 and not t5:
            return "fp16"
        return "fp32"
    if recipe_precision == "bf16":
        if not caps.bf16:
            raise UsageError(
                f"precision: bf16 is not supported on this {caps.type} device (CUDA bf16 needs compute "
                "capability 8.0+, e.g. A100/H100); use precision: fp32 or auto"
            )
        return "bf16"
    if recipe_precision == "fp16":
        if not caps.fp16:
            hint = "use bf16 or fp32 on CPU" if caps.type == "cpu" else "use fp32 or auto"
            raise UsageError(f"precision: fp16 needs a CUDA device, not {caps.type}; {hint}")
        if t5:
            warnings.warn(
                f"precision: fp16 on a {model_type} model: T5 activations overflow fp16 (inf/NaN losses); "
                "prefer bf16 or fp32",
                PrecisionWarning,
                stacklevel=2,
            )
        return "fp16"
    raise UsageError(f"precision must be auto, bf16, fp16 or fp32, not {recipe_precision!r}")


def autocast_context(precision: Precision, device: Any) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for bf16/fp16 on ``device``'s type, a no-op context for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    kind = device.type if isinstance(device, DeviceCaps) else torch.device(device).type
    return torch.autocast(device_type=kind, dtype=dtype)


def make_grad_scaler(precision: Precision, device: Any) -> Any:
    """A ``torch.amp.GradScaler``, enabled only for fp16 on CUDA (bf16 and fp32 need no loss scaling). A
    disabled scaler passes losses and optimizer steps through unchanged, so the loop can always use one and a
    checkpoint always has its state."""
    import torch

    kind = device.type if isinstance(device, DeviceCaps) else torch.device(device).type
    enabled = precision == "fp16" and kind == "cuda"
    return torch.amp.GradScaler("cuda" if enabled else "cpu", enabled=enabled)


# -- save and load ----------------------------------------------------------------------------------------


def save_model(model: Any, tokenizer: Any | None, out_dir: str | Path) -> Path:
    """Write ``model`` (safetensors + config.json + generation_config.json) and ``tokenizer`` (when given)
    to ``out_dir``, then ``manifest.json`` listing the relative path, size and SHA-256 of every file, written
    last (temp file + fsync + rename), so a directory without a manifest is an incomplete save. Returns the
    directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # An old manifest must not vouch for a half-rewritten directory.
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    files = _scan(out)
    bad = [rel for rel in files if Path(rel).suffix in PICKLE_SUFFIXES]
    if bad:
        raise UsageError(f"{out}: refusing to write a manifest over pickle files: {', '.join(bad)}")
    entries = [
        {"path": rel, "size": (out / rel).stat().st_size, "sha256": _sha256(out / rel)} for rel in files
    ]
    body = json.dumps({"format": MANIFEST_FORMAT, "files": entries}, indent=2, sort_keys=True) + "\n"
    tmp = out / f".{MANIFEST_NAME}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(body)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, out / MANIFEST_NAME)
    _fsync_dir(out)
    return out


def verify_model_dir(model_dir: str | Path) -> dict[str, Any]:
    """Check a directory written by :func:`save_model`: no pickle files, no symlinks, a manifest, every listed
    file present with its size and SHA-256, and no unlisted files. Returns the manifest.
    Raises :class:`~modelyard.errors.IntegrityError` naming the offending file."""
    root = Path(model_dir)
    if not root.is_dir():
        raise NotFoundError(f"model directory {str(root)!r} not found")
    files = _scan(root, include_manifest=False)
    pickled = [rel for rel in files if Path(rel).suffix in PICKLE_SUFFIXES]
    if pickled:
        raise IntegrityError(
            f"{root}: refusing to load a model directory with pickle files ({', '.join(pickled)}); "
            "weights must be safetensors",
            files=pickled,
        )
    manifest_path = root / MANIFEST_NAME
    if not manifest_path.is_file() or manifest_path.is_symlink():
        raise IntegrityError(
            f"{root}: no {MANIFEST_NAME}; the save is incomplete or was not made by save_model"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        entries = manifest["files"]
        if manifest.get("format") != MANIFEST_FORMAT or not isinstance(entries, list):
            raise ValueError("unknown format")
        listed = {str(e["path"]): (int(e["size"]), str(e["sha256"])) for e in entries}
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"{root}: {MANIFEST_NAME} is malformed ({exc})") from None
    for rel in listed:
        if (
            not rel
            or rel.startswith("/")
            or "\\" in rel
            or "\x00" in rel
            or any(part in ("", ".", "..") for part in rel.split("/"))
        ):
            raise IntegrityError(f"{root}: {MANIFEST_NAME} lists an unsafe path {rel!r}")
    extra = sorted(set(files) - set(listed))
    if extra:
        raise IntegrityError(f"{root}: files not in the manifest: {', '.join(extra)}", files=extra)
    for rel, (size, digest) in sorted(listed.items()):
        path = root / rel
        if rel not in files:
            raise IntegrityError(f"{root}: {rel} is listed in the manifest but missing", file=rel)
        if path.stat().st_size != size or _sha256(path) != digest:
            raise IntegrityError(f"{root}: {rel} does not match its SHA-256 in the manifest", file=rel)
    return dict(manifest)


def load_model(model_dir: str | Path) -> Any:
    """Verify ``model_dir`` (:func:`verify_model_dir`), then load it with safetensors only (eval mode, CPU,
    fp32). The files are re-read by transformers after the check; the directory must not be writable by
    anyone the caller does not trust while loading."""
    import torch
    import transformers

    AutoModelForSeq2SeqLM: Any = transformers.AutoModelForSeq2SeqLM

    root = Path(model_dir)
    verify_model_dir(root)
    return AutoModelForSeq2SeqLM.from_pretrained(
        str(root),
        use_safetensors=True,
        local_files_only=True,
        trust_remote_code=False,
        dtype=torch.float32,
    )


def _scan(root: Path, *, include_manifest: bool = False) -> list[str]:
    """Every regular file under ``root`` as a sorted relative POSIX path (the manifest and its temp file left
    out unless asked). Symlinks are refused: a manifest must describe bytes inside the directory."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        for name in [*dirnames, *filenames]:
            if (here / name).is_symlink():
                raise IntegrityError(f"{root}: {(here / name).relative_to(root).as_posix()} is a symlink")
        for name in filenames:
            rel = (here / name).relative_to(root).as_posix()
            if not include_manifest and rel in (MANIFEST_NAME, f".{MANIFEST_NAME}.tmp"):
                continue
            out.append(rel)
    return sorted(out)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
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
