"""The training loop: the nine steps of a recipe, run by one process or by each rank of a torchrun job.

Exactness rules (what makes ``--resume`` end bitwise equal to an uninterrupted run on CPU):

* The order of examples is a permutation seeded by ``(seed, epoch)``; micro-batch ``i`` of an epoch is a fixed
  slice of it, and rank ``r`` takes its fixed share. Resuming skips the batches already consumed by index, it
  does not replay them.
* Nothing but the model's dropout draws from the global RNG: the DataLoader gets its own generator, and every
  rank's RNG state goes into the checkpoint.
* Evaluation and checkpointing happen after an optimizer step, in that order, so the checkpoint holds the
  state the uninterrupted run continues from.

``hyperparameters.batch_size`` is the global micro-batch: with N processes each takes batch_size / N rows. The
loss is the sum of token losses over the global micro-batch divided by its global token count, so N processes
compute the same gradients as one process with the same batch (up to float summation order).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelyard.core._checkpoints import LOCK, run_checkpoints
from modelyard.core._paths import private_dirs, write_file
from modelyard.errors import BackendError, IntegrityError, NotFoundError, UsageError
from modelyard.training import _checkpoint as ck
from modelyard.training import _dist
from modelyard.training._data import Example

if TYPE_CHECKING:
    from rich.console import Console

    from modelyard.tracking import Client, Run
    from modelyard.training._recipe import Hyperparameters, Recipe

EvalHook = Callable[[int, dict[str, float]], None]
#: ``loss(logits, batch) -> summed token loss``: ``logits`` are the model's fp32 logits of a micro-batch;
#: ``batch`` holds ``input_ids``, ``attention_mask``, ``labels`` (-100 where padded), ``decoder_input_ids``.
LossHook = Callable[[Any, dict[str, Any]], Any]


@dataclass(frozen=True)
class TrainHooks:
    """Extension points for callers that train a variant of a recipe through this loop rather than a copy of
    it (the pruning fine-tune and distillation of :mod:`modelyard.optimize`). Every field is optional. A
    resumed run calls them again, so each must give the same result every time (exact resume depends on it).

    * ``params``: extra run params (``distill.alpha``, ...) logged with the recipe's; resuming compares them
      like recipe values, and a key the recipe already has is refused.
    * ``tokenizer_dir``: a directory holding only a saved tokenizer (``AutoTokenizer`` loads it), used instead
      of the recipe's tokenizer origin (``from``/``train``); the recipe's lengths and checks still apply.
      Rank 0 reads it and shares it with the other ranks, as a trained tokenizer.
    * ``train_examples``: rank 0, once the data is read: the training examples -> the examples to train on
      (e.g. targets added by a teacher). Validation and test examples are left alone.
    * ``model``: every rank, the freshly built bare model, changed in place before the optimizer, DDP or a
      checkpoint restore see it (e.g. pruning masks re-applied with ``torch.nn.utils.prune``; such
      reparametrisations are made permanent before the final model is saved, so the saved weights are plain
      tensors).
    * ``loss``: every rank, the training loss of a micro-batch (see :data:`LossHook`) instead of the summed
      token cross-entropy; the loop still divides it by the global number of target tokens. Validation loss
      stays the plain cross-entropy, so ``val_loss`` compares across runs.
    """

    params: Mapping[str, str | int | float] = field(default_factory=dict)
    tokenizer_dir: str | Path | None = None
    train_examples: Callable[[list[Example]], list[Example]] | None = None
    model: Callable[[Any], None] | None = None
    loss: LossHook | None = None


class Pruned(Exception):
    """Raised by an ``on_eval`` hook to stop a trial early (HPO pruning); the run ends KILLED."""


@dataclass
class TrainResult:
    run_id: str
    steps: int
    stopped_early: bool
    best: dict[str, Any]
    #: final evaluation of the saved model on the test split (validation when there is no test split)
    metrics: dict[str, float] = field(default_factory=dict)
    baseline: dict[str, float] = field(default_factory=dict)
    last_eval: dict[str, float] = field(default_factory=dict)


def checkpoint_root(client: Client, run_id: str) -> Path:
    return run_checkpoints(client.platform.settings.home, run_id)


# -- data -------------------------------------------------------------------------------------------------


def _collate(rows: Sequence[tuple[list[int], list[int]]], pad: int) -> dict[str, Any]:
    import torch

    n = len(rows)
    src_len = max(len(s) for s, _ in rows)
    tgt_len = max(len(t) for _, t in rows)
    input_ids = torch.full((n, src_len), pad, dtype=torch.long)
    mask = torch.zeros((n, src_len), dtype=torch.long)
    labels = torch.full((n, tgt_len), -100, dtype=torch.long)
    for i, (s, t) in enumerate(rows):
        input_ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        labels[i, : len(t)] = torch.tensor(t)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


class _Rows:
    """A map-style dataset over encoded pairs (the DataLoader's workers index it)."""

    def __init__(self, sources: list[list[int]], targets: list[list[int]]) -> None:
        self.sources, self.targets = sources, targets

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> tuple[list[int], list[int]]:
        return self.sources[i], self.targets[i]


def epoch_batches(n: int, batch: int, seed: int, epoch: int) -> list[list[int]]:
    """The global micro-batches of ``epoch``: a seeded permutation cut into full batches (rest dropped)."""
    import torch

    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    return [order[i : i + batch] for i in range(0, n - batch + 1, batch)]


# -- the loop ---------------------------------------------------------------------------------------------


@dataclass
class _Setup:
    recipe: Recipe
    dist: _dist.Dist
    device: Any
    precision: str
    model: Any  # DDP-wrapped when distributed
    core: Any  # the bare model
    tokenizer: Any
    optimizer: Any
    scheduler: Any
    scaler: Any
    total_steps: int
    steps_per_epoch: int
    train_rows: _Rows
    val: list[Example]
    test: list[Example]
    has_test: bool
    loss_hook: LossHook | None = None


def _lr_scheduler(recipe: Recipe, optimizer: Any, total: int) -> Any:
    import transformers

    tf: Any = transformers  # untyped functions
    hp = recipe.hyperparameters
    warmup = hp.warmup_steps if hp.warmup_steps is not None else int((hp.warmup_ratio or 0.0) * total)
    if hp.schedule == "linear":
        return tf.get_linear_schedule_with_warmup(optimizer, warmup, total)
    if hp.schedule == "cosine":
        return tf.get_cosine_schedule_with_warmup(optimizer, warmup, total)
    return tf.get_constant_schedule_with_warmup(optimizer, warmup)


def _optimizer(recipe: Recipe, model: Any) -> Any:
    import torch

    hp = recipe.hyperparameters
    decay: list[Any] = []
    no_decay: list[Any] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if "layer_norm" in name or name.endswith("bias") else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": hp.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if hp.optimizer == "adafactor":
        from transformers import optimization

        Adafactor: Any = optimization.Adafactor
        return Adafactor(groups, lr=hp.lr, scale_parameter=False, relative_step=False, warmup_init=False)
    return torch.optim.AdamW(groups, lr=hp.lr)


def _loader(setup: _Setup, epoch: int, start: int) -> Iterator[dict[str, Any]]:
    """Rank's micro-batches of ``epoch`` from global batch ``start`` on."""
    import torch

    recipe, dist = setup.recipe, setup.dist
    local = recipe.hyperparameters.batch_size // dist.world
    batches = epoch_batches(
        len(setup.train_rows), recipe.hyperparameters.batch_size, recipe.hyperparameters.seed, epoch
    )
    # Whole optimizer steps only: micro-batches left over at the end of an epoch (fewer than
    # gradient_accumulation) would otherwise add their gradients to the next epoch's first step.
    batches = batches[: setup.steps_per_epoch * recipe.hyperparameters.gradient_accumulation]
    mine = [b[dist.rank * local : (dist.rank + 1) * local] for b in batches[start:]]
    pad = setup.tokenizer.pad_token_id
    pin = recipe.distributed.pin_memory
    workers = recipe.distributed.dataloader_workers
    loader: Any = torch.utils.data.DataLoader(
        setup.train_rows,  # type: ignore[arg-type]
        batch_sampler=mine,
        collate_fn=functools.partial(_collate, pad=pad),  # picklable for worker processes
        num_workers=workers,
        pin_memory=(setup.device.type == "cuda") if pin == "auto" else bool(pin),
        generator=torch.Generator(),  # keeps the global RNG (dropout) untouched by worker seeding
        persistent_workers=False,
    )
    yield from loader


def _token_losses(
    setup: _Setup,
    model: Any,
    batch: dict[str, Any],
    loss_hook: LossHook | None = None,
    *,
    smoothing: bool = True,
) -> tuple[Any, int]:
    """Sum of the token cross-entropies of ``batch`` (or ``loss_hook``'s loss) and its number of target
    tokens. ``smoothing``: apply the recipe's label smoothing (the training loss); off for validation."""
    import torch.nn.functional as F

    from modelyard.training._model import autocast_context

    labels = batch["labels"]
    decoder_input_ids = setup.core.prepare_decoder_input_ids_from_labels(labels=labels)
    with autocast_context(setup.precision, setup.device):  # type: ignore[arg-type]
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            decoder_input_ids=decoder_input_ids,
        ).logits
    if loss_hook is not None:
        loss = loss_hook(logits.float(), {**batch, "decoder_input_ids": decoder_input_ids})
        return loss, int((labels != -100).sum())
    loss = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=-100,
        reduction="sum",
        label_smoothing=setup.recipe.hyperparameters.label_smoothing if smoothing else 0.0,
    )
    return loss, int((labels != -100).sum())


def validation_loss(setup: _Setup, examples: Sequence[Example]) -> float:
    import torch

    from modelyard.training._tokenize import encode_examples

    if not examples:
        return math.nan
    enc = encode_examples(setup.tokenizer, examples, setup.recipe)
    rows = list(zip(enc["input_ids"], enc["labels"], strict=True))
    size = setup.recipe.evaluation.batch_size
    total, tokens = 0.0, 0
    was_training = setup.core.training
    setup.core.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(rows), size):
                batch = {k: v.to(setup.device) for k, v in _collate(rows[i : i + size], 0).items()}
                batch["input_ids"][batch["attention_mask"] == 0] = setup.tokenizer.pad_token_id
                # Plain cross-entropy: a smoothed val_loss would not compare across label_smoothing values.
                loss, n = _token_losses(setup, setup.core, batch, smoothing=False)
                total, tokens = total + float(loss), tokens + n
    finally:
        setup.core.train(was_training)
    return total / max(tokens, 1)


def _periodic_eval(setup: _Setup) -> dict[str, float]:
    """Validation loss and generation metrics on up to ``train.eval_max_samples`` validation rows."""
    from modelyard.training._eval import generate, score

    recipe = setup.recipe
    rows = setup.val[: recipe.train.eval_max_samples] if recipe.train.eval_max_samples else setup.val
    out = {"loss": validation_loss(setup, rows)}
    gen = recipe.train.generation
    preds = generate(
        setup.core,
        setup.tokenizer,
        [e.source for e in rows],
        num_beams=gen.num_beams,
        max_new_tokens=gen.max_new_tokens,
        batch_size=recipe.evaluation.batch_size,
        max_source_length=recipe.tokenizer.max_source_length,
        device=setup.device,
    )
    scores = score(preds, [e.target for e in rows], recipe.evaluation.metrics)
    out.update({k: float(v) for k, v in scores.overall.items()})
    return out


def _better(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value < best - min_delta if mode == "min" else value > best + min_delta


# -- entry point ------------------------------------------------------------------------------------------


def train(
    recipe: Recipe,
    *,
    client: Client | None = None,
    recipe_text: str | None = None,
    resume: str | None = None,
    device: str = "auto",
    nested: bool = False,
    parent_id: str | None = None,
    tags: dict[str, Any] | None = None,
    run_name: str | None = None,
    on_eval: EvalHook | None = None,
    on_start: Callable[[str], None] | None = None,
    progress: bool = True,
    final_eval: bool = True,
    hooks: TrainHooks | None = None,
) -> TrainResult:
    """Run ``recipe`` (every rank of a torchrun job calls this; rank 0 needs ``client``). ``resume`` is a run
    id or ``latest``. ``on_start(run_id)`` is called on rank 0 as soon as the run is open (so a caller can
    name the run of an attempt that fails). ``on_eval(step, metrics)`` is called on rank 0 after each
    periodic evaluation; raising :class:`Pruned` there ends the run KILLED. ``hooks``: see
    :class:`TrainHooks`. Returns the run's result (on every rank)."""
    import torch

    from modelyard.training._data import load_splits
    from modelyard.training._model import build_model, check_pretrained, make_grad_scaler, resolve_precision

    dist = _dist.from_env()
    dev = _dist.pick_device(device, dist)
    hp = recipe.hyperparameters
    if hp.batch_size % dist.world:
        raise UsageError(
            f"hyperparameters.batch_size {hp.batch_size} (the global batch) must be divisible by the "
            f"number of processes ({dist.world})"
        )
    if dist.main and client is None:
        raise UsageError("rank 0 needs a tracking client")
    check_pretrained(recipe)  # a config mistake, refused before it leaves a FAILED run
    hooks = hooks or TrainHooks()
    clash = sorted(set(hooks.params) & set(recipe.params()))
    if clash:
        raise UsageError(f"extra run params {', '.join(clash)} would overwrite recipe values")
    _dist.init_group(dist, recipe.distributed.backend, dev)
    run: Run | None = None
    try:
        # -- steps 1 and 2: data and tokenizer, on rank 0, shared with the other ranks ------------------
        run_id, ckpt_path, splits, tok_files = None, None, None, None
        if dist.main:
            assert client is not None
            run, ckpt_path = _open_run(
                client, recipe, resume, run_name, dist, nested, parent_id, tags, hooks.params, dev.type
            )
            run_id = run.id
            if on_start is not None:
                on_start(run_id)
            splits = load_splits(client.platform, client.ctx, recipe)
            if not splits.train:
                raise UsageError("the training split is empty")
            if recipe.train.eval_every_steps is not None and not splits.validation:  # before any training
                raise UsageError(
                    "train.eval_every_steps evaluates on the validation split, which is empty: give "
                    "data.validation (or a data.split validation share that leaves rows), or drop "
                    "eval_every_steps"
                )
            for spec in dict.fromkeys(splits.versions.values()):
                run.use_dataset(spec)
            if hooks.train_examples is not None:
                splits = replace(splits, train=hooks.train_examples(list(splits.train)))
                if not splits.train:
                    raise UsageError("the training split is empty")
            _steps_per_epoch(len(splits.train), hp)  # before the tokenizer is trained: minutes on a corpus
            if hooks.tokenizer_dir is not None:
                tok_files = _read_tokenizer_dir(Path(hooks.tokenizer_dir))
            else:
                tok_files = _tokenizer_files(recipe, splits.train, checkpoint_root(client, run.id))
        run_id, ckpt_path, splits, tok_files = _dist.broadcast(dist, (run_id, ckpt_path, splits, tok_files))
        assert splits is not None and run_id is not None
        with tempfile.TemporaryDirectory(prefix="yard-tok-") as tmp:
            tokenizer = _load_tokenizer(recipe, tok_files, Path(tmp))
        if dist.main and run is not None:
            _check_tokens(recipe, tokenizer, splits.train, run)

        # -- step 3 and 4: model, optimizer, schedule ----------------------------------------------------
        from modelyard.training._tokenize import encode_examples

        enc = encode_examples(tokenizer, splits.train, recipe)
        rows = _Rows(enc["input_ids"], enc["labels"])
        per_epoch = _steps_per_epoch(len(rows), hp)
        total = hp.max_steps if hp.max_steps is not None else per_epoch * (hp.epochs or 1)
        core = build_model(
            recipe,
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )
        if hooks.model is not None:
            hooks.model(core)
        torch.manual_seed(hp.seed + 7919 * dist.rank)  # dropout: seeded, different per rank
        precision = resolve_precision(recipe.precision, dev, core.config.model_type)
        if dist.main and resume is not None and client is not None:
            was = client.get_run(run_id).params.get("run.precision")
            if was is not None and was != precision:  # e.g. auto: bf16 on an A100, fp32 on a V100
                raise UsageError(
                    f"run {run_id[:8]} trained in {was}, which precision: {recipe.precision} resolves to "
                    f"{precision} on this device; resume it on a device that runs {was}"
                )
        core.to(dev)
        model = core
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(core, device_ids=[dev.index] if dev.type == "cuda" else None)
        optimizer = _optimizer(recipe, core)
        setup = _Setup(
            recipe,
            dist,
            dev,
            precision,
            model,
            core,
            tokenizer,
            optimizer,
            _lr_scheduler(recipe, optimizer, total),
            make_grad_scaler(precision, dev),
            total,
            per_epoch,
            rows,
            splits.validation,
            splits.test or splits.validation,
            bool(splits.test),
            hooks.loss,
        )
        state = ck.TrainerState(world_size=dist.world)
        if ckpt_path is not None:
            state = _restore(setup, Path(ckpt_path))
        if dist.main and run is not None:
            run.log_params(
                {
                    "run.world_size": dist.world,
                    "run.device": dev.type,
                    "run.precision": precision,
                    "run.total_steps": total,
                    "run.train_rows": len(rows),
                }
            )
        # -- steps 5-7: the loop -------------------------------------------------------------------------
        _loop(setup, state, run, client, on_eval, progress)
        # -- step 9: final model, evaluation and artifacts -----------------------------------------------
        result = TrainResult(
            run_id=run_id,
            steps=state.step,
            stopped_early=state.stopped_early,
            best={"value": state.best_value, "step": state.best_step, "metric": recipe.checkpoints.metric},
            last_eval=dict(state.last_eval),
        )
        if dist.main and run is not None and client is not None:
            _finish(setup, state, run, client, recipe_text, result, final_eval)
            run.end("FINISHED")
        _dist.barrier(dist)  # every rank is done with the checkpoint directory
        if dist.main and run is not None and client is not None:
            _drop_checkpoints(checkpoint_root(client, run.id), run.id)
        return result
    except BaseException as exc:
        if run is not None and run.status == "RUNNING":
            status = "KILLED" if isinstance(exc, Pruned | KeyboardInterrupt) else "FAILED"
            with contextlib.suppress(Exception):
                run.end(status, f"{type(exc).__name__}: {exc}"[:2000])
        raise
    finally:
        _release_run(run.id if run is not None else None)
        _dist.close_group(dist)


def _drop_checkpoints(root: Path, run_id: str) -> None:
    """Rank 0, once the run is FINISHED with its model stored: delete its checkpoints. They are plain files
    (weights, optimizer state, the tokenizer trained on the user's data) kept only for exact resume, which
    a FINISHED run refuses. A FAILED or KILLED run keeps them. Failing to delete is a warning, not a failure
    of a run that is already FINISHED."""
    import shutil

    try:
        shutil.rmtree(root)
    except FileNotFoundError:
        pass
    except OSError as exc:
        warnings.warn(
            f"run {run_id[:8]} FINISHED but its checkpoints could not be deleted ({exc}); delete {root}",
            stacklevel=3,
        )


def _steps_per_epoch(rows: int, hp: Hyperparameters) -> int:
    """Whole optimizer steps in an epoch of ``rows`` examples; UsageError when there is not one."""
    per_epoch = (rows // hp.batch_size) // hp.gradient_accumulation
    if per_epoch == 0:
        raise UsageError(
            f"{rows} training rows are fewer than one optimizer step "
            f"(batch_size {hp.batch_size} x gradient_accumulation {hp.gradient_accumulation})"
        )
    return per_epoch


def _open_run(
    client: Client,
    recipe: Recipe,
    resume: str | None,
    name: str | None,
    dist: _dist.Dist,
    nested: bool = False,
    parent_id: str | None = None,
    tags: dict[str, Any] | None = None,
    extra_params: Mapping[str, str | int | float] | None = None,
    device_type: str = "cpu",
) -> tuple[Run, str | None]:
    """Rank 0: a new run, or the resumed one and its newest complete checkpoint."""
    from modelyard.tracking import _store

    experiment = recipe.experiment or "default"
    params: dict[str, Any] = {**recipe.params(), **(extra_params or {})}
    if resume is None:
        run = client.start_run(
            experiment, name=name, params=params, tags=tags, nested=nested, parent_id=parent_id
        )
        try:
            _hold_run(checkpoint_root(client, run.id), run.id)
            _attach_job(client, run.id)
        except BaseException:
            _release_run(run.id)
            run.end("FAILED", "could not start")
            raise
        return run, None
    run_id = _resolve_resume(client, experiment, resume)
    info = _store.get_run(client.platform, client.ctx, run_id)
    stored = info.params
    changed = sorted(k for k in set(stored) | set(params) if _differs(k, stored, params))
    if changed:
        raise UsageError(
            f"run {run_id[:8]} was trained with a different recipe ({', '.join(changed[:5])}); "
            "resume it with the same recipe, or start a new run"
        )
    if info.status == "FINISHED":
        raise UsageError(f"run {run_id[:8]} has FINISHED; there is nothing to resume (start a new run)")
    # The run.* params are logged again below and cannot change: say so now, not after the setup.
    was_device, was_world = stored.get("run.device"), stored.get("run.world_size")
    if was_device is not None and was_device != device_type:
        raise UsageError(
            f"run {run_id[:8]} trained on {was_device}; resume it on {was_device} (--device {was_device}): "
            "its checkpoints continue exactly only on the kind of device that wrote them"
        )
    if was_world is not None and was_world != str(dist.world):
        raise UsageError(
            f"run {run_id[:8]} trained with {was_world} processes; resume it with --nproc {was_world} "
            "(the data order and RNG streams depend on it)"
        )
    root = checkpoint_root(client, run_id)
    _hold_run(root, run_id)
    try:
        path = ck.latest_checkpoint(root)
        run = client.start_run(run_id=run_id)
        _attach_job(client, run.id)
        if path is None:
            warnings.warn(
                f"run {run_id[:8]} has no complete checkpoint; starting it from step 0", stacklevel=2
            )
            return run, None
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))["trainer"]
        if state["world_size"] != dist.world:
            raise UsageError(
                f"checkpoint {path.name} was written by {state['world_size']} processes; resume with "
                f"--nproc {state['world_size']} (the data order and RNG streams depend on it)"
            )
        return run, str(path)
    except BaseException:  # train() releases it only once it holds the run
        _release_run(run_id)
        raise


_HELD: dict[str, int] = {}  # run id -> the descriptor holding its lock, for as long as this process trains it


def _hold_run(root: Path, run_id: str) -> None:
    """Lock the run's checkpoint directory for this process (flock, released when it exits however it
    ends): a second `--resume` of a run that is still training would write and prune the same checkpoints."""
    import fcntl

    private_dirs(root)  # $YARD_HOME/checkpoints/RUN: weights and optimizer state of the user's data
    fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UsageError(
            f"run {run_id[:8]} is being trained by another process right now; wait for it to end or stop it"
        ) from None
    _HELD[run_id] = fd


def _release_run(run_id: str | None) -> None:
    fd = _HELD.pop(run_id, None) if run_id is not None else None
    if fd is not None:
        os.close(fd)


def _differs(key: str, stored: dict[str, str], params: dict[str, Any]) -> bool:
    if key.startswith("run."):
        return False  # derived at run time, not part of the recipe
    new = params.get(key)
    return stored.get(key) != (None if new is None else _param_text(new))


def _param_text(value: Any) -> str:
    from modelyard.tracking._store import check_pairs

    return check_pairs("param", {"v": value}, 10**6)["v"]


#: how many unfinished runs one look-up of ``--resume latest`` reads at a time
_RESUME_PAGE = 200


def _resolve_resume(client: Client, experiment: str, resume: str) -> str:
    from modelyard.tracking import _store

    if resume != "latest":
        return _store.resolve_run_id(client.platform, client.ctx, resume)
    # Unfinished runs, newest first, filtered in the store and read a page at a time: the newest resumable
    # run is found however many runs came after it (it was looked for among the 200 newest only).
    unfinished = "attributes.status != 'FINISHED'"
    query, seen = unfinished, set()
    while True:
        page = client.search_runs(
            experiment, filter=query, order_by=["start_time DESC"], max_results=_RESUME_PAGE
        )
        fresh = [info for info in page if info.id not in seen]
        for info in fresh:
            seen.add(info.id)
            root = checkpoint_root(client, info.id)
            if info.parent_id is None and root.is_dir() and any(root.glob("step-*/manifest.json")):
                return info.id
        if len(page) < _RESUME_PAGE:
            raise NotFoundError(f"no run of experiment {experiment!r} has a checkpoint to resume")
        oldest = min(info.start_time for info in page).timestamp() * 1000
        # Runs started at the oldest one's instant may be on the next page, so it is included again (with a
        # millisecond of slack for the float); a whole page of one instant is stepped past.
        query = (
            f"{unfinished} and attributes.start_time <= {oldest + 1!r}"
            if fresh
            else f"{unfinished} and attributes.start_time < {oldest!r}"
        )


def _attach_job(client: Client, run_id: str) -> None:
    job = os.environ.get("YARD_JOB_ID")
    if not job:
        return
    from modelyard.training import _jobs

    _jobs.attach_run(client.platform, client.ctx, job, run_id)


def _tokenizer_files(recipe: Recipe, train: list[Example], root: Path) -> dict[str, bytes] | None:
    """Rank 0: the trained tokenizer's files (trained once per run and kept beside its checkpoints, so a
    resumed run uses the very same vocabulary). None for a pretrained model's tokenizer."""
    from modelyard.training._tokenize import build_tokenizer

    if recipe.tokenizer.train is None:
        return None
    import hashlib

    tok_dir = root / "tokenizer"
    done = tok_dir / "done"

    def kept() -> dict[str, bytes]:
        # Hidden names are temp files of an interrupted write (of done, below), not the tokenizer's.
        return {
            p.name: p.read_bytes()
            for p in sorted(tok_dir.iterdir())
            if p.is_file() and not p.is_symlink() and p.name != "done" and not p.name.startswith(".")
        }

    if not done.is_file():
        private_dirs(root)
        build_tokenizer(recipe, train, tok_dir)
        files = kept()
        # The digests of what a resume must find again: the checkpoints' weights mean nothing with another
        # vocabulary, and the step directories are verified the same way. Temp file + rename: a crash
        # leaves no done (the tokenizer is trained again, the same) rather than half of one.
        digests = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
        write_file(done, json.dumps(digests, indent=1, sort_keys=True) + "\n")
        return files
    files = kept()
    text = done.read_text(encoding="utf-8", errors="replace")
    if text.strip() != "ok":  # "ok": a run from before the digests were kept
        try:
            expected = json.loads(text)
        except ValueError:
            expected = None
        if not isinstance(expected, dict) or not all(isinstance(v, str) for v in expected.values()):
            raise IntegrityError(
                f"{done}: not a record of the tokenizer's files (it was changed after the run wrote it); "
                "the run cannot be resumed with a vocabulary it can vouch for"
            )
        found = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
        bad = sorted(n for n in set(expected) | set(found) if expected.get(n) != found.get(n))
        if bad:
            raise IntegrityError(
                f"{tok_dir}: {', '.join(bad)} changed since the run trained its tokenizer; a resume with "
                "another vocabulary would train the weights on different token ids"
            )
    return files


def _read_tokenizer_dir(path: Path) -> dict[str, bytes]:
    """Rank 0: the files of a saved tokenizer (``TrainHooks.tokenizer_dir``)."""
    if not path.is_dir():
        raise NotFoundError(f"tokenizer directory {str(path)!r} not found")
    files = {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file() and not p.is_symlink()}
    if not files:
        raise UsageError(f"tokenizer directory {str(path)!r} is empty")
    return files


def _load_tokenizer(recipe: Recipe, files: dict[str, bytes] | None, tmp: Path) -> Any:
    from modelyard.training._tokenize import build_tokenizer

    if files is None:
        return build_tokenizer(recipe, [], tmp)
    from transformers import AutoTokenizer

    for name, data in files.items():
        (tmp / name).write_bytes(data)
    return AutoTokenizer.from_pretrained(str(tmp), local_files_only=True)


def _check_tokens(recipe: Recipe, tokenizer: Any, train: list[Example], run: Run) -> None:
    from modelyard.training._tokenize import check_tokenization, validate_tokenization

    stats = validate_tokenization(tokenizer, train, recipe)
    run.log_metrics(stats.metrics(), step=0)
    check_tokenization(stats, recipe)


def _restore(setup: _Setup, path: Path) -> ck.TrainerState:
    """Every rank: load rank 0's checkpoint (weights, optimizer, schedule, scaler) and its own RNG state."""
    data = None
    if setup.dist.main:
        loaded = ck.load_checkpoint(path, setup.core)
        data = (loaded, {k: v.cpu() for k, v in setup.core.state_dict().items()})
    loaded, weights = _dist.broadcast(setup.dist, data)
    if not setup.dist.main:
        setup.core.load_state_dict(weights)
    setup.optimizer.load_state_dict(loaded.optimizer)
    setup.scheduler.load_state_dict(loaded.scheduler)
    if loaded.scaler:
        setup.scaler.load_state_dict(loaded.scaler)
    ck.set_rng_state(loaded.rng[setup.dist.rank])
    restored: ck.TrainerState = loaded.state
    return restored


def _save(setup: _Setup, state: ck.TrainerState, client: Client | None, run: Run | None) -> None:
    rngs = _dist.gather(setup.dist, ck.rng_state())
    if setup.dist.main and client is not None and run is not None:
        # The metrics of the steps this checkpoint covers are made durable first: a resume starts after
        # them, so metrics still buffered when the process is killed would be gone for good.
        try:
            run.flush()
        except BackendError as exc:  # a store outage must not stop training; they stay buffered
            warnings.warn(
                f"checkpoint at step {state.step}: metrics not yet durable ({exc.message})", stacklevel=2
            )
        root = checkpoint_root(client, run.id)
        ck.save_checkpoint(
            root,
            state,
            model=setup.core,
            optimizer=setup.optimizer,
            scheduler=setup.scheduler,
            scaler=setup.scaler,
            rng=rngs,
        )
        cfg = setup.recipe.checkpoints
        ck.prune_checkpoints(root, keep_last=cfg.keep_last, keep=state.best_step if cfg.keep_best else None)


def _loop(
    setup: _Setup,
    state: ck.TrainerState,
    run: Run | None,
    client: Client | None,
    on_eval: EvalHook | None,
    show_progress: bool,
) -> None:

    recipe, dist, hp = setup.recipe, setup.dist, setup.recipe.hyperparameters
    accum = hp.gradient_accumulation
    log_every = recipe.train.log_every_steps
    eval_every = recipe.train.eval_every_steps
    ckpt_every = recipe.checkpoints.every_steps
    window = [0.0, 0.0, 0.0, 0.0]  # loss sum, target tokens, all tokens, samples since the last log
    t_window = time.perf_counter()
    if state.log_window and dist.main:  # resumed between two logs: the window so far, summed over ranks
        window, t_window = state.log_window[:4], t_window - state.log_window[4]
    setup.model.train()
    bar = _progress(show_progress and dist.main, setup.total_steps, state.step)
    with bar:
        while state.step < setup.total_steps and not state.stopped_early:
            micro = 0
            for batch in _loader(setup, state.epoch, state.batch_in_epoch):
                batch = {k: v.to(setup.device, non_blocking=True) for k, v in batch.items()}
                # Global token count first, so every rank normalises by the same number.
                local_tokens = int((batch["labels"] != -100).sum())
                global_tokens = (
                    _dist.all_sum(dist, [float(local_tokens)])[0] if dist.enabled else local_tokens
                )
                last_micro = (micro + 1) % accum == 0
                sync = setup.model.no_sync() if dist.enabled and not last_micro else contextlib.nullcontext()
                with sync:
                    loss_sum, _ = _token_losses(setup, setup.model, batch, setup.loss_hook)
                    loss = loss_sum / max(global_tokens, 1) * dist.world / accum
                    setup.scaler.scale(loss).backward()
                window[0] += float(loss_sum.detach())
                window[1] += local_tokens
                window[2] += local_tokens + int(batch["attention_mask"].sum())
                window[3] += batch["input_ids"].shape[0]
                state.batch_in_epoch += 1
                micro += 1
                if not last_micro:
                    continue
                _optimizer_step(setup)
                state.step += 1
                state.samples += hp.batch_size * accum
                bar.advance()
                if state.step % log_every == 0 or state.step == setup.total_steps:
                    t_window, logged = _log_train(setup, state, run, window, t_window)
                    bar.report(state.step, setup.total_steps, logged)
                new_best = False
                if eval_every and (state.step % eval_every == 0 or state.step == setup.total_steps):
                    new_best = _evaluate_step(setup, state, run, on_eval)
                # keep_best keeps the best evaluation's weights, so they are checkpointed even between
                # every_steps (otherwise the final model silently falls back to the last step's).
                keep = new_best and recipe.checkpoints.keep_best
                if (ckpt_every and state.step % ckpt_every == 0) or state.step == setup.total_steps or keep:
                    state.log_window = [*_dist.all_sum(dist, list(window)), time.perf_counter() - t_window]
                    _save(setup, state, client, run)
                if state.step >= setup.total_steps or state.stopped_early:
                    break
            else:
                state.epoch += 1
                state.batch_in_epoch = 0
                continue
            break


def _optimizer_step(setup: _Setup) -> None:
    import torch

    max_norm = setup.recipe.hyperparameters.max_grad_norm
    if max_norm is not None:
        setup.scaler.unscale_(setup.optimizer)
        torch.nn.utils.clip_grad_norm_(setup.core.parameters(), max_norm)
    setup.scaler.step(setup.optimizer)
    setup.scaler.update()
    setup.scheduler.step()
    setup.optimizer.zero_grad(set_to_none=True)


def _log_train(
    setup: _Setup, state: ck.TrainerState, run: Run | None, window: list[float], since: float
) -> tuple[float, dict[str, float]]:
    """Log the window's global mean token loss, learning rate and throughput; reset the window."""
    loss_sum, labels, tokens, samples = _dist.all_sum(setup.dist, list(window))
    now = time.perf_counter()
    state.tokens += int(tokens)
    elapsed = max(now - since, 1e-9)
    metrics = {
        "loss": loss_sum / max(labels, 1),
        "lr": float(setup.scheduler.get_last_lr()[0]),
        "tokens_per_s": tokens / elapsed,
        "samples_per_s": samples / elapsed,
        "epoch": state.epoch + state.batch_in_epoch / max(setup.steps_per_epoch * _accum(setup), 1),
    }
    if run is not None:
        run.log_metrics(_loggable(metrics), step=state.step)
    window[:] = [0.0] * len(window)
    return now, metrics


def _loggable(metrics: dict[str, float]) -> dict[str, float]:
    """``metrics`` with an infinite value as NaN (a gap): the tracking store refuses infinities, and one
    overflowing step (fp16, whose gradient scaler skips it) must not end the run."""
    return {k: v if not math.isinf(v) else math.nan for k, v in metrics.items()}


def _accum(setup: _Setup) -> int:
    return setup.recipe.hyperparameters.gradient_accumulation


def _evaluate_step(setup: _Setup, state: ck.TrainerState, run: Run | None, on_eval: EvalHook | None) -> bool:
    """Rank 0 evaluates while the others wait; the early-stopping decision is shared. Returns (on every rank)
    whether this evaluation is a new best of ``checkpoints.metric``."""
    recipe = setup.recipe
    stop = new_best = False
    if setup.dist.main:
        metrics = _periodic_eval(setup)
        state.last_eval = metrics
        if run is not None:
            run.log_metrics(_loggable({f"val_{k}": v for k, v in metrics.items()}), step=state.step)
        cfg = recipe.checkpoints
        value = metrics.get(cfg.metric)
        if value is not None and _better(value, state.best_value, cfg.direction, 0.0):
            state.best_value, state.best_step = value, state.step
            new_best = True
        es = recipe.train.early_stopping
        if es is not None:
            current = metrics.get(es.metric)
            if current is not None and _better(current, state.es_best, es.direction, es.min_delta):
                state.es_best, state.bad_evals = current, 0
            else:
                state.bad_evals += 1
            stop = state.bad_evals >= es.patience
        if on_eval is not None:
            on_eval(state.step, dict(metrics))
    stop, new_best = _dist.broadcast(setup.dist, (stop, new_best))
    state.stopped_early = bool(stop)
    return bool(new_best)


class _NoBar:
    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def advance(self) -> None:
        return None

    def report(self, step: int, total: int, metrics: dict[str, float]) -> None:
        return None


class _Lines(_NoBar):
    """Where stderr is not a terminal (a job's log, a pod's, a CI step's), a plain line per log step instead
    of a bar, which Rich would not draw there: the log shows the training going on."""

    def report(self, step: int, total: int, metrics: dict[str, float]) -> None:
        if sys.stderr is None:
            return
        print(
            f"training: step {step}/{total}  loss {metrics['loss']:.4f}  lr {metrics['lr']:.2e}  "
            f"{metrics['samples_per_s']:.1f} samples/s",
            file=sys.stderr,
            flush=True,
        )


class _Bar(_NoBar):
    """A Rich progress bar with ETA, on stderr."""

    def __init__(self, total: int, done: int, console: Console) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("training"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._task = self._progress.add_task("train", total=total, completed=done)

    def __enter__(self) -> _Bar:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def advance(self) -> None:
        self._progress.advance(self._task)


def _progress(show: bool, total: int, done: int) -> _NoBar:
    if not show:
        return _NoBar()
    from rich.console import Console

    err = Console(stderr=True)  # Rich knows terminals and notebooks (and a stderr that is None or closed)
    return _Bar(total, done, err) if err.is_terminal or err.is_jupyter else _Lines()


def _finish(
    setup: _Setup,
    state: ck.TrainerState,
    run: Run,
    client: Client,
    recipe_text: str | None,
    result: TrainResult,
    final_eval: bool,
) -> None:
    """Rank 0: store the model (the best checkpoint's weights when kept), the recipe and the evaluation."""
    from modelyard.training._eval import evaluate
    from modelyard.training._model import save_model

    recipe = setup.recipe
    root = checkpoint_root(client, run.id)
    model_step = state.step
    if recipe.checkpoints.keep_best and state.best_step is not None and state.best_step != state.step:
        best = ck.step_dir(root, state.best_step)
        if (best / ck.MANIFEST).is_file():
            ck.load_checkpoint(best, setup.core)  # verified; only the weights are used
            model_step = state.best_step
    run.set_tags({"model_step": model_step, "stopped_early": str(state.stopped_early).lower()})
    _make_pruning_permanent(setup.core)
    with tempfile.TemporaryDirectory(prefix="yard-model-") as tmp:
        out = save_model(setup.core, setup.tokenizer, Path(tmp) / "model")
        run.log_artifact(out, "model")
        text = recipe_text if recipe_text is not None else _recipe_yaml(recipe)
        (Path(tmp) / "recipe.yaml").write_text(text, encoding="utf-8")
        run.log_artifact(Path(tmp) / "recipe.yaml")
        if final_eval and setup.test:
            ev = recipe.evaluation
            report = evaluate(
                setup.core,
                setup.tokenizer,
                setup.test,
                ev,
                max_source_length=recipe.tokenizer.max_source_length,
                baseline=True,
                device=setup.device,
            )
            result.metrics = dict(report.overall)
            result.baseline = dict(report.baseline.overall) if report.baseline is not None else {}
            report.info.update({"run": run.id, "split": "test" if setup.has_test else "validation"})
            run.log_metrics(report.metrics_to_log(), step=state.step)
            (Path(tmp) / "report.json").write_text(report.to_json(), encoding="utf-8")
            (Path(tmp) / "report.md").write_text(report.to_markdown(), encoding="utf-8")
            run.log_artifact(Path(tmp) / "report.json", "eval")
            run.log_artifact(Path(tmp) / "report.md", "eval")
        elif final_eval:  # say why the run has no BLEU/ROUGE and no eval/ report
            run.set_tags({"final_eval": "skipped: no test or validation split"})
            warnings.warn(
                "no test or validation split: the final evaluation (metrics and eval/report.json) is "
                "skipped; give data.test or data.validation, or evaluate the model later with yard eval",
                stacklevel=2,
            )


def _make_pruning_permanent(model: Any) -> None:
    """Fold ``torch.nn.utils.prune`` reparametrisations (``weight_orig`` * ``weight_mask``, which a
    ``TrainHooks.model`` may have added) into plain weights, so the saved model loads as a normal one."""
    from torch.nn.utils import prune as prune_module

    prune: Any = prune_module  # untyped
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(module, hook._tensor_name)


def _recipe_yaml(recipe: Recipe) -> str:
    import yaml

    return yaml.safe_dump(recipe.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False)


__all__ = ["LossHook", "Pruned", "TrainHooks", "TrainResult", "checkpoint_root", "epoch_batches", "train"]
