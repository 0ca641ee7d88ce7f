"""Knowledge distillation of the session's trained T5 (tests/conftest.py: ``trained``) into a smaller student
through the real training loop: the loss function on its own (alpha 0 is plain cross-entropy, identical logits
give no KL), teacher targets for sequence-level KD, a FINISHED student run that records the teacher and the KD
settings and whose loss falls, and bad input refused before anything is recorded."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelyard.core import Platform
from modelyard.errors import IntegrityError, NotFoundError, UsageError, ValidationError
from modelyard.testing import TINY_RECIPE, TrainedModel, make_platform
from modelyard.tracking import Client

torch = pytest.importorskip("torch")

from modelyard.optimize import _distill  # noqa: E402
from modelyard.optimize._distill import DistillWarning, distill, kd_loss, teacher_targets  # noqa: E402
from modelyard.training import Example, load_model, parse_recipe  # noqa: E402

F = torch.nn.functional
STUDENT = {"d_model": 32, "d_ff": 64, "num_layers": 2, "num_heads": 2, "d_kv": 16}


@pytest.fixture(scope="module")
def norm_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """A home of its own with ``norm@1`` (the teacher's training data), for the student runs."""
    from modelyard.data import add_version
    from modelyard.training import write_dataset

    root = tmp_path_factory.mktemp("distill-home")
    platform = make_platform(root / "home")
    files = write_dataset(root / "data", 600, seed=1)
    add_version(platform, platform.context(), files[0].parent, "norm")
    yield platform
    platform.close()


def _student(steps: int = 40, **model: Any) -> Any:
    spec = copy.deepcopy(TINY_RECIPE)
    spec["experiment"] = "distill"
    spec["model"] = {"init": "scratch", "config": {**STUDENT, **model}}
    spec["hyperparameters"].update(max_steps=steps)
    spec["train"].update(log_every_steps=10)
    return parse_recipe(spec)


# -- the loss ------------------------------------------------------------------------------------------


def _batch(seed: int = 0, vocab: int = 11) -> tuple[Any, Any, Any]:
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(3, 5, vocab, generator=g)
    teacher = torch.randn(3, 5, vocab, generator=g) * 2
    labels = torch.randint(0, vocab, (3, 5), generator=g)
    labels[0, 3:] = -100
    labels[2, 1:] = -100
    return student, teacher, labels


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_alpha_0_is_the_loops_cross_entropy(smoothing: float) -> None:
    student, teacher, labels = _batch()
    ce = F.cross_entropy(
        student.reshape(-1, 11),
        labels.reshape(-1),
        ignore_index=-100,
        reduction="sum",
        label_smoothing=smoothing,
    )
    loss = kd_loss(student, teacher, labels, alpha=0.0, temperature=2.0, label_smoothing=smoothing)
    assert torch.equal(loss, ce)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0])
def test_alpha_1_with_identical_logits_is_zero(temperature: float) -> None:
    student, _, labels = _batch()
    loss = kd_loss(student, student.clone(), labels, alpha=1.0, temperature=temperature)
    assert loss.item() == pytest.approx(0.0, abs=1e-5)


def test_soft_term_is_t_squared_kl_over_target_tokens() -> None:
    student, teacher, labels = _batch()
    t = 3.0
    p = F.softmax(teacher / t, dim=-1)
    kl = (p * (p.log() - F.log_softmax(student / t, dim=-1))).sum(-1)  # KL(teacher || student) per token
    expected_kl = t**2 * kl[labels != -100].sum()
    ce = F.cross_entropy(student.reshape(-1, 11), labels.reshape(-1), ignore_index=-100, reduction="sum")
    for alpha in (0.3, 1.0):
        loss = kd_loss(student, teacher, labels, alpha=alpha, temperature=t)
        assert loss.item() == pytest.approx(((1 - alpha) * ce + alpha * expected_kl).item(), rel=1e-5)
    assert expected_kl.item() > 0


def test_padding_positions_and_extra_vocab_rows_do_not_count() -> None:
    student, teacher, labels = _batch()
    base = kd_loss(student, teacher, labels, alpha=0.7, temperature=2.0)
    changed = teacher.clone()
    changed[labels == -100] += torch.randn_like(changed[labels == -100]) * 5
    assert kd_loss(student, changed, labels, alpha=0.7, temperature=2.0).item() == pytest.approx(base.item())
    # flan-t5 pads its output layer past the tokenizer: rows beyond the student's vocabulary are ignored
    padded = torch.cat([teacher, torch.full((3, 5, 5), 30.0)], dim=-1)
    assert kd_loss(student, padded, labels, alpha=0.7, temperature=2.0).item() == pytest.approx(base.item())


def test_gradients_reach_the_student_only() -> None:
    student, teacher, labels = _batch()
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    kd_loss(student, teacher, labels, alpha=0.5, temperature=2.0).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None
    assert torch.all(student.grad[labels == -100] == 0)


# -- sequence-level targets ----------------------------------------------------------------------------


def test_teacher_targets_augment_and_replace(trained: TrainedModel) -> None:
    from transformers import AutoTokenizer

    teacher = load_model(trained.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(trained.model_dir))
    examples = [
        Example("normalise date (en-US): 7/12/2003", "2003-07-12", "en-US"),
        Example("normalise amount (de-DE): 1.234,56 €", "1234.56 EUR", "de-DE"),
        Example("normalise date (en-US): 7/12/2003", "2003-07-12", "en-US"),  # a repeated source
    ]
    recipe = _student()
    counter = _distill._Counter()
    augmented = teacher_targets(teacher, tokenizer, examples, recipe, "augment", counter)
    assert augmented[:3] == examples  # the references stay, teacher outputs are added after them
    assert len(augmented) == 3 + counter.value
    assert all(e.target != examples[0].target for e in augmented[3:] if e.source == examples[0].source)
    replaced = teacher_targets(teacher, tokenizer, examples, recipe, "replace", counter)
    assert sorted(e.source for e in replaced) == sorted(e.source for e in examples)
    assert 0 < counter.value <= 3
    # the same source gets the same output (greedy), and the groups are kept
    by_source: dict[str, set[str]] = {}
    for e in replaced:
        by_source.setdefault(e.source, set()).add(e.target)
        assert e.group in ("en-US", "de-DE")
    assert len(by_source[examples[0].source]) == 1


# -- distillation through the loop ---------------------------------------------------------------------


def test_distill_trains_a_smaller_student_and_records_the_teacher(
    trained: TrainedModel, norm_platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[float, float]] = []
    real = _distill.kd_loss

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append((kwargs["alpha"], kwargs["temperature"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(_distill, "kd_loss", spy)
    with Client(norm_platform) as client:
        result = distill(trained.model_dir, _student(), client=client, alpha=0.6, temperature=3.0)
        info = client.get_run(result.run_id)
        losses = [float(p.value or "nan") for p in client.metric_history(result.run_id, ["loss"])["loss"]]
        student_dir = client.download_artifacts(result.run_id, "model", tmp_path / "student")

    assert info.status == "FINISHED" and result.steps == 40
    assert len(calls) == 40 and set(calls) == {(0.6, 3.0)}  # the soft-target loss trained every step
    params = info.params
    assert params["distill.teacher"] == str(trained.model_dir.resolve())
    assert params["distill.alpha"] == "0.6" and params["distill.temperature"] == "3.0"
    assert params["distill.sequence_level"] == "augment" and params["distill.tokenizer"] == "teacher"
    assert len(params["distill.teacher_manifest_sha256"]) == 64
    assert params["model.config.d_model"] == "32"  # the student recipe itself is recorded as written
    assert int(params["run.train_rows"]) == 480 + result.teacher_targets > 480  # train.jsonl: 480

    assert result.student_params < result.teacher_params
    assert result.size_ratio < 0.5
    assert params["distill.student_params"] == str(result.student_params)
    assert losses[-1] < losses[0]  # the student learns
    assert set(result.metrics) >= {"rougeL", "bleu"}

    student = load_model(student_dir)
    teacher = load_model(trained.model_dir)
    assert sum(p.numel() for p in student.parameters()) == result.student_params
    assert student.config.vocab_size == teacher.config.vocab_size
    assert (student_dir / "tokenizer.json").read_bytes() == (
        trained.model_dir / "tokenizer.json"
    ).read_bytes()


def test_alpha_0_and_no_sequence_kd_is_plain_training(
    trained: TrainedModel, norm_platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_distill, "kd_loss", lambda *a, **k: pytest.fail("no soft targets with alpha 0"))
    with Client(norm_platform) as client:
        result = distill(trained.model_dir, _student(3), client=client, alpha=0.0, sequence_level="off")
        params = client.get_run(result.run_id).params
    assert result.teacher_targets == 0 and params["run.train_rows"] == "480"
    assert params["distill.alpha"] == "0.0" and params["distill.sequence_level"] == "off"


# -- bad input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": -0.1}, "alpha"),
        ({"alpha": 1.5}, "alpha"),
        ({"alpha": math.nan}, "alpha"),
        ({"alpha": True}, "alpha"),
        ({"temperature": 0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": math.inf}, "temperature"),
        ({"sequence_level": "sometimes"}, "sequence_level"),
    ],
)
def test_bad_settings_are_refused_before_anything_is_recorded(
    trained: TrainedModel, norm_platform: Platform, kwargs: dict[str, Any], match: str
) -> None:
    with Client(norm_platform) as client:
        before = len(client.search_runs("distill"))
        with pytest.raises(ValidationError, match=match):
            distill(trained.model_dir, _student(), client=client, **kwargs)
        assert len(client.search_runs("distill")) == before


def test_missing_teacher(norm_platform: Platform, tmp_path: Path) -> None:
    with Client(norm_platform) as client, pytest.raises(NotFoundError, match="teacher"):
        distill(tmp_path / "nope", _student(), client=client)


def test_pickle_in_the_teacher_directory_is_refused(model_dir: Path, norm_platform: Platform) -> None:
    (model_dir / "optimizer.pt").write_bytes(b"\x80\x04K\x01.")
    with Client(norm_platform) as client, pytest.raises(IntegrityError, match=r"optimizer\.pt"):
        distill(model_dir, _student(), client=client)


def test_student_with_another_vocabulary_size_is_refused(
    trained: TrainedModel, norm_platform: Platform
) -> None:
    spec = _student().model_dump(by_alias=True, exclude_unset=True)
    spec["tokenizer"]["vocab_size"] = 128
    with Client(norm_platform) as client:
        before = len(client.search_runs("distill"))
        with pytest.raises(UsageError, match=r"set tokenizer\.vocab_size: 200"):
            distill(trained.model_dir, parse_recipe(spec), client=client)
        assert len(client.search_runs("distill")) == before


def test_pretrained_student_with_another_vocabulary_is_refused(
    trained: TrainedModel, norm_platform: Platform, tmp_path: Path
) -> None:
    from modelyard.training import build_model, build_tokenizer, make_examples, save_model

    rows = [Example(r["source"], r["target"]) for r in make_examples(200, seed=5)]
    own = parse_recipe(
        {
            "data": {"train": "norm@1"},
            "tokenizer": {"train": "sentencepiece", "vocab_size": 150},
            "model": {"init": "scratch", "config": STUDENT},
            "hyperparameters": {"lr": 1e-3, "max_steps": 1},
        }
    )
    tokenizer = build_tokenizer(own, rows, tmp_path / "tok")
    save_model(build_model(own, vocab_size=len(tokenizer)), tokenizer, tmp_path / "other")
    spec = _student().model_dump(by_alias=True, exclude_unset=True)
    spec["model"] = {"pretrained": str(tmp_path / "other")}
    spec["tokenizer"] = {"from": "model", "max_source_length": 64, "max_target_length": 48}
    with Client(norm_platform) as client, pytest.raises(UsageError, match="different vocabulary"):
        distill(trained.model_dir, parse_recipe(spec), client=client)


def test_a_student_as_large_as_the_teacher_is_warned_about(
    trained: TrainedModel, norm_platform: Platform
) -> None:
    spec = _student().model_dump(by_alias=True, exclude_unset=True)
    spec["model"] = {"init": "scratch", "preset": "tiny"}  # the teacher's own size: self-distillation
    spec["data"] = {"train": "absent@1"}  # stops the run right after the checks
    with (
        Client(norm_platform) as client,
        pytest.warns(DistillWarning, match="at least as large"),
        pytest.raises(NotFoundError),
    ):
        distill(trained.model_dir, parse_recipe(spec), client=client)


def test_distillation_resumes_exactly(
    trained: TrainedModel, norm_platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupted after a checkpoint and resumed, a distillation ends with the weights of an uninterrupted
    one: the teacher's targets, tokenizer and soft targets are the same on every call."""
    from safetensors.torch import load_file

    spec = _student(15).model_dump(by_alias=True, exclude_unset=True)
    spec["experiment"] = "distill-resume"
    spec["checkpoints"].update(every_steps=5, keep_best=False)
    recipe = parse_recipe(spec)
    real = _distill.kd_loss
    calls = [0]

    def interrupt_at_step_13(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == 13:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    with Client(norm_platform) as client:
        straight = distill(trained.model_dir, recipe, client=client).run_id
        monkeypatch.setattr(_distill, "kd_loss", interrupt_at_step_13)
        with pytest.raises(KeyboardInterrupt):
            distill(trained.model_dir, recipe, client=client)
        monkeypatch.setattr(_distill, "kd_loss", real)
        (killed,) = [r.id for r in client.search_runs("distill-resume") if r.status == "KILLED"]
        resumed = distill(trained.model_dir, recipe, client=client, resume=killed)
        assert resumed.run_id == killed and resumed.steps == 15
        assert client.get_run(killed).status == "FINISHED"
        with pytest.raises(UsageError, match="different recipe"):  # other KD settings are another recipe
            distill(trained.model_dir, recipe, client=client, resume=straight, alpha=0.9)
        a = client.download_artifacts(straight, "model", tmp_path / "a")
        b = client.download_artifacts(killed, "model", tmp_path / "b")
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for name, tensor in wa.items():
        assert torch.equal(tensor, wb[name]), name
