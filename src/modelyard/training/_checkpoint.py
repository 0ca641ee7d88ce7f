"""Step 7: checkpoints that resume exactly, with no pickle anywhere.

A checkpoint is a directory ``step-00000120/`` under the run's checkpoint root holding

* ``model.safetensors``: the weights (``safetensors.torch.save_model``, which handles T5's tied tensors);
* ``state.safetensors``: every tensor of the optimizer state and the RNG states of every rank;
* ``state.json``: the rest: trainer position (step, epoch, batches consumed in the epoch), best metric and
  early-stopping counters, scheduler and gradient-scaler state, the optimizer's structure and param groups,
  Python and NumPy RNG states, with references to the tensors;
* ``manifest.json``: size and SHA-256 of each file, written last (temp file + fsync + rename).

Loading never unpickles: tensors come from safetensors, everything else from JSON. A directory without a
readable manifest is incomplete (a crash while writing) and is skipped with a warning; a directory whose
files do not match a well-formed manifest has been altered and is refused with an IntegrityError.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from modelyard.errors import IntegrityError
from modelyard.training._model import _fsync_dir, _scan, _sha256

CKPT_FORMAT = "modelyard.checkpoint/1"
MANIFEST = "manifest.json"
_STEP_DIR = re.compile(r"^step-(\d{8})\Z")
_FILES = ("model.safetensors", "state.safetensors", "state.json")


class CheckpointWarning(UserWarning):
    """An incomplete checkpoint directory was skipped."""


@dataclass
class TrainerState:
    """Where training is: enough, with the model/optimizer/scheduler/RNG states, to continue bitwise."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # the epoch in progress
    batch_in_epoch: int = 0  # global micro-batches of this epoch already consumed
    samples: int = 0
    tokens: int = 0
    world_size: int = 1
    best_value: float | None = None
    best_step: int | None = None
    es_best: float | None = None  # best value of the early-stopping metric
    bad_evals: int = 0  # evaluations in a row without improvement (early stopping)
    stopped_early: bool = False
    last_eval: dict[str, float] = field(default_factory=dict)
    # What the steps since the last train log added, summed over ranks (loss, target tokens, tokens,
    # samples, seconds): a resume logs the loss and throughput the uninterrupted run logs.
    log_window: list[float] = field(default_factory=list)


@dataclass
class Checkpoint:
    path: Path
    state: TrainerState
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any]
    rng: list[dict[str, Any]]  # one per rank


# -- (de)serialising nested states without pickle -----------------------------------------------------------


def _encode(obj: Any, key: str, tensors: dict[str, Any]) -> Any:
    """JSON-able form of a nested state; tensors are moved into ``tensors`` and replaced by a reference.
    Tuples and dicts with non-string keys are tagged so they come back as they were."""
    import torch

    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {"__dict__": {k: _encode(v, f"{key}.{k}", tensors) for k, v in obj.items()}}
        return {"__items__": [[k, _encode(v, f"{key}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{key}.{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__} at {key}")


def _decode(obj: Any, tensors: dict[str, Any]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {k: _decode(v, tensors) for k, v in obj["__dict__"].items()}
        if "__items__" in obj:
            return {k: _decode(v, tensors) for k, v in obj["__items__"]}
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        raise ValueError(f"unknown state entry {sorted(obj)}")
    return obj


def rng_state() -> dict[str, Any]:
    """This process's RNG states (torch CPU and CUDA, Python, NumPy)."""
    import random

    import numpy as np
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [kind, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


# -- writing ---------------------------------------------------------------------------------------------


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:08d}"


def save_checkpoint(
    root: Path,
    state: TrainerState,
    *,
    model: Any,
    optimizer: Any,
    scheduler: Any,
    scaler: Any,
    rng: list[dict[str, Any]],
) -> Path:
    """Write a checkpoint of ``state.step`` under ``root`` (``rng`` holds the state of every rank)."""
    from safetensors.torch import save_file
    from safetensors.torch import save_model as save_weights

    out = step_dir(root, state.step)
    if out.exists():  # a leftover of a crash at this very step: it has no valid manifest, or it is ours
        shutil.rmtree(out)
    tmp = root / f".{out.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True, mode=0o700)
    save_weights(model, str(tmp / "model.safetensors"))
    tensors: dict[str, Any] = {}
    body = {
        "format": CKPT_FORMAT,
        "trainer": asdict(state),
        "optimizer": _encode(optimizer.state_dict(), "optimizer", tensors),
        "scheduler": _encode(scheduler.state_dict(), "scheduler", tensors),
        "scaler": _encode(scaler.state_dict(), "scaler", tensors),
        "rng": _encode(rng, "rng", tensors),
    }
    save_file(tensors, str(tmp / "state.safetensors"), metadata={"format": CKPT_FORMAT})
    (tmp / "state.json").write_text(json.dumps(body, sort_keys=True), encoding="utf-8")
    for name in _FILES:
        with open(tmp / name, "rb") as fh:
            os.fsync(fh.fileno())
    # Rename the directory into place, then write the manifest last: a directory without one is a crash.
    os.replace(tmp, out)
    entries = [{"path": n, "size": (out / n).stat().st_size, "sha256": _sha256(out / n)} for n in _FILES]
    manifest = json.dumps({"format": CKPT_FORMAT, "step": state.step, "files": entries}, indent=2)
    part = out / f".{MANIFEST}.tmp"
    with open(part, "w", encoding="utf-8") as fh:
        fh.write(manifest + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(part, out / MANIFEST)
    _fsync_dir(out)
    _fsync_dir(root)
    return out


def prune_checkpoints(root: Path, *, keep_last: int, keep: int | None = None) -> None:
    """Delete complete checkpoints beyond the newest ``keep_last`` (``keep``, the best step, stays)."""
    steps = sorted(_complete_steps(root), reverse=True)
    for step in steps[keep_last:]:
        if step != keep:
            shutil.rmtree(step_dir(root, step), ignore_errors=True)


# -- reading ---------------------------------------------------------------------------------------------


def _complete_steps(root: Path) -> list[int]:
    if not root.is_dir():
        return []
    return [
        int(m.group(1))
        for p in root.iterdir()
        if (m := _STEP_DIR.match(p.name)) and p.is_dir() and (p / MANIFEST).is_file()
    ]


def _read_manifest(path: Path) -> dict[str, tuple[int, str]] | None:
    """The files listed by a well-formed manifest, or None when it is missing or unreadable (incomplete)."""
    try:
        body = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        if body.get("format") != CKPT_FORMAT:
            return None
        listed = {str(e["path"]): (int(e["size"]), str(e["sha256"])) for e in body["files"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return listed if set(listed) == set(_FILES) else None


def verify_checkpoint(path: Path) -> None:
    """Raise IntegrityError unless every file of ``path`` matches its manifest (and nothing else is there)."""
    listed = _read_manifest(path)
    if listed is None:
        raise IntegrityError(f"checkpoint {path}: no complete {MANIFEST}")
    present = _scan(path)
    extra = sorted(set(present) - set(listed))
    if extra:
        raise IntegrityError(f"checkpoint {path}: files not in the manifest: {', '.join(extra)}")
    for name, (size, digest) in sorted(listed.items()):
        p = path / name
        if not p.is_file() or p.stat().st_size != size or _sha256(p) != digest:
            raise IntegrityError(
                f"checkpoint {path}: {name} does not match its SHA-256 in the manifest; refusing to resume "
                "from a modified checkpoint (delete the directory to fall back to an older one)"
            )


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root``, verified. Directories without a valid manifest are
    skipped with a :class:`CheckpointWarning`; a complete one that fails verification raises."""
    if not root.is_dir():
        return None
    candidates = sorted(
        (int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()
    )
    for _step, path in reversed(candidates):
        if _read_manifest(path) is None:
            warnings.warn(
                f"skipping incomplete checkpoint {path} (no valid {MANIFEST})",
                CheckpointWarning,
                stacklevel=2,
            )
            continue
        verify_checkpoint(path)
        return path
    return None


def load_checkpoint(path: Path, model: Any) -> Checkpoint:
    """Verify ``path``, load its weights into ``model`` and return the other states."""
    from safetensors.torch import load_file
    from safetensors.torch import load_model as load_weights

    verify_checkpoint(path)
    missing, unexpected = load_weights(model, str(path / "model.safetensors"), strict=False)
    if missing or unexpected:
        raise IntegrityError(
            f"checkpoint {path} does not fit this model (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]}); was the recipe's model changed?"
        )
    tensors = load_file(str(path / "state.safetensors"))
    try:
        body = json.loads((path / "state.json").read_text(encoding="utf-8"))
        state = TrainerState(**body["trainer"])
        return Checkpoint(
            path=path,
            state=state,
            optimizer=_decode(body["optimizer"], tensors),
            scheduler=_decode(body["scheduler"], tensors),
            scaler=_decode(body["scaler"], tensors),
            rng=_decode(body["rng"], tensors),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"checkpoint {path}: state.json is malformed ({exc})") from None


__all__ = [
    "CKPT_FORMAT",
    "Checkpoint",
    "CheckpointWarning",
    "TrainerState",
    "latest_checkpoint",
    "load_checkpoint",
    "prune_checkpoints",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "verify_checkpoint",
]
