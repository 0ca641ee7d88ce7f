"""Knowledge distillation of a T5 seq2seq teacher into a smaller student, through the training loop.

:func:`distill` trains the student described by a normal training recipe (``student.yaml``: its ``data``
names the dataset versions, its ``model`` the student's size, its ``hyperparameters`` the schedule) with the
real loop (:func:`modelyard.training._train.train`), so the result is a normal FINISHED run with checkpoints,
exact resume, periodic and final evaluation, and the student's model directory as its ``model/`` artifacts.
Three :class:`~modelyard.training._train.TrainHooks` make it a distillation:

* **One vocabulary.** The student is built with the teacher's tokenizer (``TrainHooks.tokenizer_dir``), so
  both predict distributions over the same tokens. A scratch student's recipe must say
  ``tokenizer: {train: sentencepiece, vocab_size: N}`` with N the teacher's vocabulary size (the recipe then
  records what the student really has; any other N is refused, naming the right one); a pretrained student
  (``model.pretrained``) must have a tokenizer with exactly the teacher's vocabulary. The recipe's lengths
  and tokenizer checks apply as written.
* **Sequence-level KD** (Kim & Rush, 2016; ``sequence_level``): the teacher's greedy outputs on the training
  sources (:func:`modelyard.training.generate`) become training targets. ``augment`` (the default) adds a
  pair (source, teacher output) wherever the output differs from the reference and keeps every reference
  pair; ``replace`` trains on the teacher's outputs alone (the reference where the teacher says nothing);
  ``off`` leaves the data alone. Augment is the default because a teacher small enough to train in minutes
  is often wrong: replacing caps the student at the teacher's mistakes, while augmenting keeps the ground
  truth as the anchor and adds the teacher's mode, the easier, more consistent target that makes sequence
  KD work. Validation and test stay the reference data, so the run's metrics compare with any other run.
* **Soft targets** (Hinton et al., 2015): the training loss of a micro-batch is
  ``(1 - alpha) * CE(labels) + alpha * T**2 * KL(p_teacher || p_student)`` with both distributions at
  temperature ``T``, summed over the target tokens (the loop divides by the global token count as for plain
  cross-entropy, so DDP and gradient accumulation are unchanged). The teacher runs in eval mode without
  gradients, so it draws no random numbers and exact resume holds. ``T**2`` keeps the soft term's gradients
  on the scale of the hard term's as T changes. See :func:`kd_loss`.

The run's params add ``distill.teacher`` (the teacher: its registered NAME@V, else its directory),
``distill.teacher_manifest_sha256``, ``distill.alpha``, ``distill.temperature``, ``distill.sequence_level``,
``distill.tokenizer`` and the two parameter counts; ``val_loss`` stays the plain cross-entropy on the
reference targets.

A student at least as large as the teacher is allowed (self-distillation can still help) but warned about:
it makes nothing cheaper to serve.

torch and transformers are imported inside the functions.
"""

from __future__ import annotations

import math
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from modelyard.errors import NotFoundError, UsageError, ValidationError
from modelyard.serving._format import refuse_onnx_source

if TYPE_CHECKING:
    from modelyard.tracking import Client
    from modelyard.training import Example, Recipe

SequenceLevel = Literal["augment", "replace", "off"]


class DistillWarning(UserWarning):
    """A distillation that runs but is probably not what was meant (a student as large as its teacher)."""


@dataclass(frozen=True)
class DistillResult:
    """A finished distillation: the student's run and how it compares with the teacher in size."""

    run_id: str
    student_params: int
    teacher_params: int
    steps: int
    #: training pairs whose target is a teacher output (added with ``augment``, replaced with ``replace``)
    teacher_targets: int
    #: the student's final evaluation (test split, validation when there is none)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def size_ratio(self) -> float:
        """Student parameters / teacher parameters."""
        return self.student_params / self.teacher_params


def kd_loss(
    student_logits: Any,
    teacher_logits: Any,
    labels: Any,
    *,
    alpha: float,
    temperature: float,
    label_smoothing: float = 0.0,
) -> Any:
    """The distillation loss of a batch, summed over its target tokens (``labels != -100``):
    ``(1 - alpha) * CE(student, labels) + alpha * T**2 * KL(softmax(teacher / T) || softmax(student / T))``.

    ``student_logits`` and ``teacher_logits`` are ``[batch, length, vocab]``; if their vocabularies differ
    in size (flan-t5 pads its embedding table past the tokenizer's last id), the KL term compares the first
    ``min`` entries, the ids a tokenizer can produce. ``alpha=0`` is exactly the summed cross-entropy the
    training loop uses; identical logits give a KL term of zero."""
    import torch.nn.functional as F

    s = student_logits.float()
    mask = labels != -100
    ce = F.cross_entropy(
        s.reshape(-1, s.shape[-1]),
        labels.reshape(-1),
        ignore_index=-100,
        reduction="sum",
        label_smoothing=label_smoothing,
    )
    if alpha == 0:
        return ce
    vocab = min(s.shape[-1], teacher_logits.shape[-1])
    log_p_student = F.log_softmax(s[..., :vocab] / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits[..., :vocab].float().detach() / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="none", log_target=True).sum(-1)
    kl_sum = (kl * mask).sum()
    return (1.0 - alpha) * ce + alpha * temperature**2 * kl_sum


def distill(
    teacher_dir: str | Path,
    student_recipe: Recipe,
    *,
    client: Client | None,
    alpha: float = 0.5,
    temperature: float = 2.0,
    sequence_level: SequenceLevel = "augment",
    resume: str | None = None,
    run_name: str | None = None,
    tags: dict[str, Any] | None = None,
    device: str = "auto",
    progress: bool = False,
    teacher_name: str | None = None,
) -> DistillResult:
    """Train the student of ``student_recipe`` from the teacher in ``teacher_dir`` (a directory written by
    :func:`modelyard.training.save_model`, tokenizer included), recorded with ``client`` as a normal training
    run; see the module docstring. ``alpha`` in [0, 1] weighs the soft targets against the reference labels,
    ``temperature`` > 0 softens both distributions. ``resume`` continues an unfinished distillation run (a
    run id or ``latest``) with the same teacher and settings. Under torchrun every rank calls this with the
    same arguments (``client`` only on rank 0, None elsewhere, as for ``train``); the teacher decodes the
    training sources on rank 0 and computes soft targets on every rank.

    Raises :class:`~modelyard.errors.ValidationError` for a bad ``alpha``, ``temperature`` or
    ``sequence_level``, :class:`~modelyard.errors.NotFoundError` for a missing teacher,
    :class:`~modelyard.errors.IntegrityError` for one that does not match its manifest or holds pickle
    files, and :class:`~modelyard.errors.UsageError` for a teacher that is not a seq2seq model with a
    tokenizer, a teacher or pretrained student that is an ONNX export (give the model it was exported from),
    or a student whose vocabulary differs from the teacher's. Warns (:class:`DistillWarning`) when
    the student has at least as many parameters as the teacher. Nothing is recorded when a check fails."""
    alpha = _check_unit(alpha, "alpha")
    temperature = _check_temperature(temperature)
    if sequence_level not in ("augment", "replace", "off"):
        raise ValidationError(f"sequence_level must be augment, replace or off, not {sequence_level!r}")
    teacher_path = Path(teacher_dir)
    if not teacher_path.exists():
        raise NotFoundError(f"teacher model directory {str(teacher_path)!r} not found")
    if not teacher_path.is_dir():
        raise UsageError(f"teacher {teacher_path} is a file; give a model directory written by save_model")
    refuse_onnx_source(teacher_path, "teacher")

    import torch

    from modelyard.training import load_model
    from modelyard.training._model import _sha256
    from modelyard.training._train import TrainHooks, train

    teacher = load_model(teacher_path)  # verified against its manifest; pickle files refused
    if not getattr(teacher.config, "is_encoder_decoder", False):
        raise UsageError(f"teacher {teacher_path}: not a seq2seq (encoder-decoder) model")
    teacher.eval()
    teacher.requires_grad_(False)
    tokenizer = _teacher_tokenizer(teacher_path)
    vocab = len(tokenizer)
    if teacher.get_output_embeddings().out_features < vocab:
        raise UsageError(
            f"teacher {teacher_path}: its output layer has {teacher.get_output_embeddings().out_features} "
            f"rows but its tokenizer {vocab} tokens"
        )
    _check_student_vocab(student_recipe, tokenizer)
    teacher_params = _count(teacher)
    student_params = _student_params(student_recipe, vocab, tokenizer)
    if student_params >= teacher_params:
        warnings.warn(
            f"the student has {student_params:,} parameters, the teacher {teacher_params:,}: a student at "
            "least as large as its teacher makes nothing cheaper to serve",
            DistillWarning,
            stacklevel=2,
        )
    params: dict[str, str | int | float] = {
        "distill.teacher": teacher_name or str(teacher_path.resolve()),  # e.g. the registered NAME@V
        "distill.teacher_manifest_sha256": _sha256(teacher_path / "manifest.json"),
        "distill.alpha": alpha,
        "distill.temperature": temperature,
        "distill.sequence_level": sequence_level,
        "distill.tokenizer": "teacher",
        "distill.teacher_params": teacher_params,
        "distill.student_params": student_params,
    }
    counter = _Counter()
    gen_device = _generation_device(device)
    label_smoothing = student_recipe.hyperparameters.label_smoothing

    def relabel(examples: list[Example]) -> list[Example]:
        if sequence_level == "off":
            return examples
        teacher.to(gen_device)
        return teacher_targets(teacher, tokenizer, examples, student_recipe, sequence_level, counter)

    def loss(logits: Any, batch: dict[str, Any]) -> Any:
        if teacher.device != logits.device:
            teacher.to(logits.device)
        with torch.no_grad():
            t_logits = teacher(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                decoder_input_ids=teacher.prepare_decoder_input_ids_from_labels(labels=batch["labels"]),
            ).logits
        return kd_loss(
            logits,
            t_logits,
            batch["labels"],
            alpha=alpha,
            temperature=temperature,
            label_smoothing=label_smoothing,
        )

    with tempfile.TemporaryDirectory(prefix="yard-teacher-tok-") as tok_dir:
        tokenizer.save_pretrained(tok_dir)
        hooks = TrainHooks(
            params=params,
            tokenizer_dir=tok_dir,
            train_examples=relabel,
            loss=loss if alpha > 0 else None,
        )
        result = train(
            student_recipe,
            client=client,
            resume=resume,
            run_name=run_name,
            tags=tags,
            device=device,
            progress=progress,
            hooks=hooks,
        )
    return DistillResult(
        run_id=result.run_id,
        student_params=student_params,
        teacher_params=teacher_params,
        steps=result.steps,
        teacher_targets=counter.value,
        metrics=dict(result.metrics),
    )


# -- sequence-level KD -------------------------------------------------------------------------------------


@dataclass
class _Counter:
    value: int = 0


def teacher_targets(
    teacher: Any,
    tokenizer: Any,
    examples: list[Example],
    recipe: Recipe,
    mode: SequenceLevel,
    counter: _Counter | None = None,
) -> list[Example]:
    """The training examples with the teacher's greedy outputs as targets (``augment``: added where they
    differ from the reference; ``replace``: instead of it, where the teacher outputs anything). Decoded on
    the teacher's device with room for the end-of-sequence token within ``tokenizer.max_target_length``; an
    output that runs into that limit never ended (typically a loop) and is not used as a target."""
    from modelyard.training import Example, generate

    limit = max(recipe.tokenizer.max_target_length - 1, 1)
    sources = list(dict.fromkeys(e.source for e in examples))
    outputs = generate(
        teacher,
        tokenizer,
        sources,
        num_beams=1,
        max_new_tokens=limit,
        batch_size=recipe.evaluation.batch_size,
        max_source_length=recipe.tokenizer.max_source_length,
    )
    lengths = (
        [len(ids) for ids in tokenizer(outputs, add_special_tokens=False)["input_ids"]] if outputs else []
    )
    by_source = {
        src: (" ".join(out.split()) if n < limit else "")
        for src, out, n in zip(sources, outputs, lengths, strict=True)
    }
    kept: list[Example] = []
    taught: list[Example] = []
    for e in examples:
        said = by_source[e.source]
        if mode == "replace" and said:
            taught.append(Example(e.source, said, e.group))
            continue
        kept.append(e)
        if mode == "augment" and said and said != " ".join(e.target.split()):
            taught.append(Example(e.source, said, e.group))
    if counter is not None:
        counter.value = len(taught)
    return kept + taught


# -- checks -----------------------------------------------------------------------------------------------


def _check_unit(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValidationError(f"{name} must be a number from 0 to 1, not {value!r}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValidationError(f"{name} must be from 0 to 1 (the weight of the soft targets), got {value:g}")
    return float(value)


def _check_temperature(value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValidationError(f"temperature must be a number greater than 0 (e.g. 2.0), not {value!r}")
    return float(value)


def _teacher_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"teacher {path}: its tokenizer could not be loaded ({exc}); the student is built with the "
            "teacher's tokenizer, so save the teacher with it (save_model(model, tokenizer, dir))"
        ) from None


def check_student(teacher_dir: str | Path, recipe: Recipe) -> None:
    """The student recipe's vocabulary against the teacher's tokenizer, for a caller with costly work
    before the distillation (the ONNX export of ``yard optimize``) to refuse a mismatch first."""
    _check_student_vocab(recipe, _teacher_tokenizer(Path(teacher_dir)))


def _check_student_vocab(recipe: Recipe, tokenizer: Any) -> None:
    """The student must share the teacher's vocabulary; refuse a recipe that says otherwise."""
    vocab = len(tokenizer)
    if recipe.model.pretrained is None:
        size = recipe.tokenizer.vocab_size
        if size != vocab:
            raise UsageError(
                f"the student recipe's tokenizer.vocab_size is {size}, the teacher's vocabulary has {vocab} "
                f"tokens; a distilled student is built with the teacher's tokenizer (soft targets compare "
                f"distributions over the same tokens): set tokenizer.vocab_size: {vocab}"
            )
        return
    local = Path(recipe.model.pretrained).expanduser()
    if local.is_dir():  # its tokenizer loads and matches, and training from it failed after the checks
        refuse_onnx_source(local, "student")
    from transformers import AutoTokenizer

    try:
        own = AutoTokenizer.from_pretrained(recipe.model.pretrained, revision=recipe.model.revision)
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"the student's tokenizer ({recipe.model.pretrained!r}) could not be loaded: {exc}"
        ) from None
    if own.get_vocab() != tokenizer.get_vocab():
        theirs, mine = set(tokenizer.get_vocab()), set(own.get_vocab())
        raise UsageError(
            f"the student {recipe.model.pretrained!r} has a different vocabulary from the teacher's "
            f"({len(mine)} vs {len(theirs)} tokens, {len(mine ^ theirs)} not in both); "
            "soft targets need one vocabulary: start the student from scratch (init: scratch) or from a "
            "model with the teacher's tokenizer"
        )


def _student_params(recipe: Recipe, vocab: int, tokenizer: Any) -> int:
    """The student's parameter count, from its config on the meta device (no weights are allocated)."""
    import torch
    import transformers

    from modelyard.training._model import t5_config

    dims = recipe.model.dims()
    if dims is not None:
        pad = tokenizer.pad_token_id
        config: Any = t5_config(dims, vocab, pad, tokenizer.eos_token_id, pad)
    else:
        assert recipe.model.pretrained is not None
        AutoConfig: Any = transformers.AutoConfig
        config = AutoConfig.from_pretrained(recipe.model.pretrained, revision=recipe.model.revision)
    AutoModelForSeq2SeqLM: Any = transformers.AutoModelForSeq2SeqLM
    with torch.device("meta"):
        model = AutoModelForSeq2SeqLM.from_config(config)
    return _count(model)


def _count(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())  # a tied tensor is yielded once


def _generation_device(device: str) -> Any:
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    if device == "cuda":
        raise UsageError("device 'cuda' was asked for but CUDA is not available")
    return torch.device("cpu")


__all__ = ["DistillResult", "DistillWarning", "distill", "kd_loss", "teacher_targets"]
