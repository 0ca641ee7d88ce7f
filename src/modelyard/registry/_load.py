"""Loading a registered version into memory, verified first.

``load`` downloads the version's files into a private temp directory (every byte decrypted and checked
against the digest its signed manifest names), loads them, and removes the directory: what runs is what
was signed. ONNX versions load with onnxruntime, tokenizers and numpy only (``modelyard.serving``), so a
serving image needs no torch; safetensors versions load with transformers.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelyard.core._platform import Context, Platform
from modelyard.registry._versions import VersionInfo, download


@dataclass
class LoadedModel:
    """A verified version in memory. ``generate`` is greedy (or beam, for safetensors) seq2seq decoding."""

    info: VersionInfo | None  # None: a local directory, not (yet) a registered version
    backend: str  # "onnx" or "torch"
    model: Any  # OnnxSeq2Seq, or a transformers model
    tokenizer: Any = None  # transformers tokenizer (torch backend)
    max_source_length: int = 512

    @property
    def spec(self) -> str:
        return self.info.spec if self.info is not None else "(local model)"

    def generate(
        self, sources: Sequence[str], *, max_new_tokens: int = 64, batch_size: int = 32, num_beams: int = 1
    ) -> list[str]:
        if self.backend == "onnx":
            if num_beams != 1:
                from modelyard.errors import UsageError

                raise UsageError(f"{self.spec} is an ONNX version: it decodes greedily (num_beams=1)")
            out: list[str] = self.model.generate(
                list(sources),
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
                max_source_length=self.max_source_length,
            )
            return out
        from modelyard.training._eval import generate

        return generate(
            self.model,
            self.tokenizer,
            sources,
            num_beams=num_beams,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            max_source_length=self.max_source_length,
        )


@contextlib.contextmanager
def _acting(platform: Platform | None, ctx: Context | None) -> Iterator[tuple[Platform, Context]]:
    if platform is not None:
        yield platform, ctx or platform.context()
        return
    with Platform() as opened:
        yield opened, ctx or opened.context()


#: torch's thread count when this process first loaded a model: what ``threads=None`` means
_default_threads: int | None = None


def _torch_threads(threads: int | None) -> None:
    """Set torch's (process-wide) thread count for the model being loaded, every time: a count one load
    (a gate's ``latency.threads: 1``) set must not stay behind for a later load without one, or an optimise
    in the same process would time its PyTorch baseline on 1 thread and the ONNX variants on every core."""
    global _default_threads
    import torch

    if _default_threads is None:
        _default_threads = torch.get_num_threads()
    torch.set_num_threads(threads if threads is not None else _default_threads)


def load_dir(
    path: str | os.PathLike[str], info: VersionInfo | None = None, *, threads: int | None = None
) -> LoadedModel:
    """Load a model directory: a downloaded (verified) version, or a local candidate such as an optimised
    variant being measured before it is registered (its files are checked as registration would)."""
    from modelyard.registry._files import model_format, scan_model_dir

    root = Path(path)
    fmt = info.format if info is not None else model_format(scan_model_dir(root))
    if fmt == "onnx":
        from modelyard.serving import OnnxSeq2Seq

        kwargs: dict[str, Any] = {} if threads is None else {"intra_op_threads": threads}
        return LoadedModel(info, "onnx", OnnxSeq2Seq(root, **kwargs))
    import transformers

    from modelyard.training._model import load_model

    _torch_threads(threads)
    # transformers draws a "Loading weights" bar on stderr: noise in a server's log once per worker and
    # version, and in every caller of load(); it is put back as it was.
    hf_logging: Any = transformers.utils.logging
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        if (root / "manifest.json").is_file():
            model = load_model(root)  # a directory save_model wrote: its own manifest is checked too
        else:  # e.g. a checkpoint from the hub; the registry verified every byte already
            model = transformers.AutoModelForSeq2SeqLM.from_pretrained(
                str(root), use_safetensors=True, local_files_only=True, trust_remote_code=False
            )
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(root), local_files_only=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return LoadedModel(info, "torch", model.eval(), tokenizer)


def load(
    spec: str,
    *,
    platform: Platform | None = None,
    ctx: Context | None = None,
    threads: int | None = None,
) -> LoadedModel:
    """The version ``spec`` (``name@3``, ``name@production``, ``name``) in memory, after verifying its
    signature and every file. Uses ``Platform()`` and the acting user (YARD_TOKEN or the OS user) unless
    given."""
    with _acting(platform, ctx) as (p, c), tempfile.TemporaryDirectory(prefix="yard-model-") as tmp:
        info, root = download(p, c, spec, Path(tmp) / "v")
        return load_dir(root, info, threads=threads)
