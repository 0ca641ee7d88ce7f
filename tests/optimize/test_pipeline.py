"""`yard optimize`: variants made from a registered version, measured against it, registered, one picked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from modelyard import registry
from modelyard.config import load_settings
from modelyard.core import Platform
from modelyard.core._models import LineageEdge
from modelyard.errors import UsageError
from modelyard.optimize import Measured, OptimizeReport, optimize, parse_budget
from modelyard.optimize._pipeline import judge, pick
from modelyard.testing import TrainedModel, Yard

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def optimized(trained: TrainedModel) -> Iterator[tuple[Platform, str, OptimizeReport]]:
    """The session's trained run registered as `opt@1` and optimised (ONNX FP32 + INT8)."""
    platform = Platform(load_settings(home=trained.home))
    ctx = platform.context()
    parent = registry.register(platform, ctx, trained.run_id, "opt").spec
    report = optimize(platform, ctx, parent, max_new_tokens=24, latency_samples=5, threads=1)
    yield platform, parent, report
    platform.close()


def test_every_variant_is_measured_registered_and_linked(
    optimized: tuple[Platform, str, OptimizeReport],
) -> None:
    platform, parent, report = optimized
    ctx = platform.context()
    assert (
        report.parent == parent and report.data == "norm@1" and report.examples > 10
    )  # the recipe's test split
    assert [v.variant for v in report.variants] == ["onnx-fp32", "onnx-int8"]
    for v in report.variants:
        info, manifest = registry.read_manifest(platform, ctx, v.spec)
        assert (info.format, info.variant, info.parent) == ("onnx", v.variant, parent)
        bench = manifest["benchmark"]
        assert bench["baseline"] == parent and bench["p95_ms"] >= bench["p50_ms"] > 0 and bench["size_mb"] > 0
        assert bench["delta_rougeL"] == pytest.approx(v.delta["rougeL"], abs=1e-5)
        assert info.metrics["rougeL"] == pytest.approx(v.metrics["rougeL"])
        assert registry.eval_report(platform, ctx, v.spec)["slices"]  # per-locale scores, for cards and gates
        registry.verify(platform, ctx, v.spec)
    fp32, int8 = report.variants
    assert fp32.delta["rougeL"] == pytest.approx(0.0, abs=1e-9)  # ONNX FP32 decodes exactly like PyTorch
    assert int8.size_mb < fp32.size_mb
    assert report.picked is not None and report.picked.within_budget
    assert report.picked.p50_ms == min(v.p50_ms for v in report.variants if v.within_budget)
    with platform.db.read() as s:
        derived = set(s.scalars(select(LineageEdge.dst).where(LineageEdge.src == f"model:{parent}")))
    assert derived == {f"model:{v.spec}" for v in report.variants}
    card = registry.model_card(platform, ctx, parent).markdown()
    assert all(v.spec in card for v in report.variants) and "p50\\_ms" in card  # Markdown-escaped


def test_an_onnx_version_loads_and_generates_without_torch(
    optimized: tuple[Platform, str, OptimizeReport],
) -> None:
    platform, _, report = optimized
    spec = report.variants[1].spec  # INT8
    sources = ["normalise date (de-DE): 02.03.2013", "normalise amount (en-US): $1,234.50"]
    expected = registry.load(spec, platform=platform).generate(sources, max_new_tokens=24)
    script = (
        "import sys, json\n"
        "sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
        "import modelyard.models\n"
        f"m = modelyard.models.load({spec!r})\n"
        f"print(json.dumps([m.backend, m.generate({sources!r}, max_new_tokens=24)]))\n"
        "assert 'torch' not in [k for k, v in sys.modules.items() if v is not None]\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("YARD_")}
    env["YARD_HOME"] = str(platform.settings.home)
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == ["onnx", expected]


def test_a_variant_outside_the_budget_is_registered_but_not_picked(
    optimized: tuple[Platform, str, OptimizeReport],
) -> None:
    platform, parent, _ = optimized
    before = len(registry.list_versions(platform, platform.context(), "opt"))
    report = optimize(
        platform,
        platform.context(),
        parent,
        budget="rougeL=0.5",
        max_new_tokens=24,
        latency_samples=5,
        threads=1,
    )
    assert report.picked is None
    assert all(not v.within_budget and "rougeL" in v.note for v in report.variants)
    assert len(registry.list_versions(platform, platform.context(), "opt")) == before + 2


def test_a_recipe_that_cut_one_version_is_measured_on_its_held_out_cut(
    optimized: tuple[Platform, str, OptimizeReport], trained: TrainedModel, tmp_path: Path
) -> None:
    # `dataset:` + `split:` recipes: the measurement must use the seeded test cut the run held out, not
    # the whole version (which is mostly training rows), with --data or without (helper-19).
    import copy

    import yaml

    from modelyard.core import put_artifact
    from modelyard.data import get
    from modelyard.evaluation import EvalData
    from modelyard.optimize._pipeline import _eval_rows
    from modelyard.testing import TINY_RECIPE
    from modelyard.training import parse_recipe
    from modelyard.training._data import pick_member, read_examples, split_examples

    platform, _, _ = optimized
    ctx = platform.context()
    recipe = copy.deepcopy(TINY_RECIPE)
    recipe["data"] = {
        "dataset": "norm@1",
        "file": "train.jsonl",
        "seed": 5,
        "split": {"train": 0.8, "test": 0.2},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    digest = put_artifact(platform, ctx, tmp_path / "recipe.yaml").digest
    spec = registry.register(platform, ctx, trained.model_dir, "cut", lineage={"recipe": digest}).spec
    d = parse_recipe(recipe).data
    root = get("norm@1", platform=platform, ctx=ctx)
    train, _, test = split_examples(read_examples(root / pick_member(root, d, role=None), d, label="x"), d)

    label, rows = _eval_rows(platform, ctx, spec, None, 100_000)
    assert label == "norm@1 (test cut, seed 5)" and [r.source for r in rows] == [r.source for r in test]
    assert not {r.source for r in rows} & {r.source for r in train}
    _, same = _eval_rows(platform, ctx, spec, EvalData(dataset="norm@1", file="train.jsonl"), 100_000)
    assert [r.source for r in same] == [r.source for r in test]
    _, few = _eval_rows(platform, ctx, spec, None, 7)  # --max-samples applies without --data too
    assert len(few) == 7 and {r.source for r in few} <= {r.source for r in test}


def test_optimize_measures_on_the_split_the_gates_use(trained: TrainedModel, tmp_path: Path) -> None:
    # The member a run cut by ratios is always measured as that cut, however --data names it (a --file
    # the recipe left implicit) and also for a variant registered without a recipe (its parent's run):
    # the gates' rule (read_split), so optimize never scores a model on the rows it trained on.
    import copy
    import shutil

    import yaml

    from modelyard.core import put_artifact
    from modelyard.data import add_version, get
    from modelyard.evaluation import EvalData
    from modelyard.optimize._pipeline import _eval_rows
    from modelyard.testing import TINY_RECIPE
    from modelyard.training import parse_recipe
    from modelyard.training._data import read_examples, split_examples

    platform = Platform(load_settings(home=trained.home))
    ctx = platform.context()
    (tmp_path / "one").mkdir()
    shutil.copy(get("norm@1", platform=platform, ctx=ctx) / "train.jsonl", tmp_path / "one" / "data.jsonl")
    add_version(platform, ctx, tmp_path / "one", "single")  # one table, which the recipe need not name
    recipe = copy.deepcopy(TINY_RECIPE)
    recipe["data"] = {"dataset": "single@1", "seed": 5, "split": {"train": 0.7, "test": 0.3}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    digest = put_artifact(platform, ctx, tmp_path / "recipe.yaml").digest
    spec = registry.register(platform, ctx, trained.model_dir, "single", lineage={"recipe": digest}).spec
    variant = registry.register(
        platform, ctx, trained.model_dir, "single", parent=spec, variant="pruned-u0.5"
    )
    d = parse_recipe(recipe).data
    root = get("single@1", platform=platform, ctx=ctx)
    train, _, test = split_examples(read_examples(root / "data.jsonl", d), d)

    named = EvalData(dataset="single@1", file="data.jsonl", group_field="locale")
    for model, data in ((spec, named), (variant.spec, named), (variant.spec, None)):
        label, rows = _eval_rows(platform, ctx, model, data, 100_000)
        assert label == "single@1 (test cut, seed 5)", (model, data)
        assert [r.source for r in rows] == [r.source for r in test]
        assert not {r.source for r in rows} & {r.source for r in train}
    # --data naming a version whose only table is another split is refused, as the gates refuse it
    (tmp_path / "t").mkdir()
    shutil.copy(root / "data.jsonl", tmp_path / "t" / "train.jsonl")
    add_version(platform, ctx, tmp_path / "t", "trainonly")
    with pytest.raises(UsageError, match="not the test split"):
        _eval_rows(platform, ctx, spec, EvalData(dataset="trainonly@1"), 100_000)
    platform.close()


def test_picking_is_the_fastest_within_the_budget() -> None:
    def m(name: str, p50: float, drop: float) -> Measured:
        v = Measured(name, "onnx", 1.0, p50, p50, 1.0, {"rougeL": 0.5 + drop}, delta={"rougeL": drop})
        judge(v, {"rougeL": -0.01})
        return v

    fast_bad, slow_ok, mid_ok = m("int8", 5, -0.02), m("fp32", 9, 0.0), m("pruned", 7, -0.01)
    assert m("exact", 6, 0.12 - 0.13).within_budget  # -0.010000000000000009: a drop of exactly the budget
    assert not fast_bad.within_budget and "rougeL -0.0200 < budget -0.0100" in fast_bad.note
    assert pick([fast_bad, slow_ok, mid_ok]) is mid_ok
    assert pick([fast_bad]) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rougeL", "METRIC=DELTA"),
        ("accuracy=-0.1", "unknown metric"),
        ("", "give an accuracy budget"),
        ("rougeL=-0.01; DROP TABLE", "METRIC=DELTA"),
        ("rougeL=-0.01,rougeL=-0.5", "given twice"),
        (["rougeL=-0.01", "bleu=-0.1", "rougeL=0"], "given twice"),
    ],
)
def test_bad_budgets(text: str | list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_budget(text)


def test_bad_requests(
    optimized: tuple[Platform, str, OptimizeReport], trained: TrainedModel, tmp_path: Path
) -> None:
    import shutil

    platform, _, report = optimized
    ctx = platform.context()
    plain = Path(shutil.copytree(trained.model_dir, tmp_path / "plain"))
    (plain / "manifest.json").unlink()  # as transformers' save_pretrained writes it
    spec = registry.register(platform, ctx, plain, "plain").spec
    with pytest.raises(UsageError, match="save_model did not write"):
        optimize(platform, ctx, spec)
    with pytest.raises(UsageError, match="is an ONNX model"):
        optimize(platform, ctx, report.variants[0].spec)
    with pytest.raises(UsageError, match="between 0 and 1"):
        optimize(platform, ctx, "opt@1", prune=1.5)
    assert parse_budget("rougeL=-0.01,bleu=-0.02") == {"rougeL": -0.01, "bleu": -0.02}


def test_a_hopeless_prune_or_distillation_is_refused_before_any_export(trained: TrainedModel) -> None:
    # Each was refused by the pruning or distillation itself, after the parent's ONNX export, quantisation
    # and measurement.
    import copy

    from modelyard.testing import TINY_RECIPE
    from modelyard.training import parse_recipe

    platform = Platform(load_settings(home=trained.home))
    try:
        ctx = platform.context()
        spec = registry.register(platform, ctx, trained.run_id, "too-little").spec
        said: list[str] = []
        with pytest.raises(UsageError, match=r"0\.001 of d_ff 128 removes no feed-forward neuron"):
            optimize(platform, ctx, spec, prune=0.001, structured=True, progress=said.append)
        assert said == [f"downloading and verifying {spec}"]  # nothing measured, exported or registered
        # so is a distillation into a student whose vocabulary is not the teacher's
        student = copy.deepcopy(TINY_RECIPE)
        student["tokenizer"]["vocab_size"] = 300
        said.clear()
        with pytest.raises(UsageError, match=r"set tokenizer\.vocab_size: 200"):
            optimize(platform, ctx, spec, distill=parse_recipe(student), progress=said.append)
        assert said == [f"downloading and verifying {spec}"]
        assert [v.spec for v in registry.list_versions(platform, ctx, "too-little")] == [spec]
    finally:
        platform.close()


def test_prune_options_without_a_prune_are_refused(platform: Platform) -> None:
    for options in ({"structured": True}, {"prune_finetune": object()}):
        with pytest.raises(UsageError, match="describe --prune SHARE"):  # not silently ignored
            optimize(platform, platform.context(), "m@1", **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "notaspec"], "--data: 'notaspec' is not a dataset version"),
        (["--data", "a@1", "--file", "../x"], "--file: '../x' is not a member path"),
        (["--data", "a@1", "--group-field", " "], "--group-field: must not be empty"),
        # options of a prune that was not asked for were silently ignored
        (["--structured"], "--structured and --prune-finetune describe --prune"),
        (["--prune-finetune", "r.yaml"], "--structured and --prune-finetune describe --prune"),
    ],
)
def test_bad_data_flags_are_one_line_usage_errors(yard: Yard, args: list[str], message: str) -> None:
    assert yard("init").code == 0
    r = yard("optimize", "m@1", *args)
    assert r.code == 2 and r.error.startswith(f"error: {message}"), r.err  # one line, not pydantic's report


def test_pruned_and_distilled_variants_join_the_table(
    optimized: tuple[Platform, str, OptimizeReport],
) -> None:
    import copy

    from modelyard.testing import TINY_RECIPE
    from modelyard.training import parse_recipe

    platform, parent, _ = optimized
    student = copy.deepcopy(TINY_RECIPE)
    student["experiment"] = "students"
    student["model"] = {
        "init": "scratch",
        "config": {"d_model": 32, "d_ff": 64, "num_layers": 1, "num_heads": 2},
    }
    student["hyperparameters"].update(max_steps=20)
    report = optimize(
        platform,
        platform.context(),
        parent,
        quantize=False,
        prune=0.3,
        structured=True,
        distill=parse_recipe(student),
        max_new_tokens=24,
        latency_samples=5,
        threads=1,
    )
    by_variant = {v.variant: v for v in report.variants}
    assert set(by_variant) == {
        "onnx-fp32",
        "pruned-s0.3",
        "pruned-s0.3-onnx-fp32",
        "distilled",
        "distilled-onnx-fp32",
    }
    assert by_variant["pruned-s0.3"].size_mb < report.baseline.size_mb
    assert by_variant["distilled"].size_mb < by_variant["pruned-s0.3"].size_mb
    for v in report.variants:
        info = registry.show(platform, platform.context(), v.spec)
        # an ONNX export of the pruned or distilled model descends from that version, not the original
        exported_from = v.variant.rsplit("-onnx-", 1)[0] if "-onnx-" in v.variant else None
        expected = by_variant[exported_from].spec if exported_from else parent
        assert info.parent == expected and info.variant == v.variant
        _, manifest = registry.read_manifest(platform, platform.context(), v.spec)
        assert manifest["benchmark"]["baseline"] == parent  # what its speed and quality were measured against
        registry.verify(platform, platform.context(), v.spec)
    # the distilled student's training run is a real, finished run that names its teacher
    from modelyard.tracking import Client

    with Client(platform) as client:
        [run] = client.search_runs("students")
        assert run.status == "FINISHED" and "distill.alpha" in run.params
        assert run.params["distill.teacher"] == parent  # not the temp directory it was downloaded to
    # the student's versions carry that run's lineage (its data and recipe), not just the parent
    for variant, expected in (("distilled", parent), ("distilled-onnx-fp32", by_variant["distilled"].spec)):
        _, manifest = registry.read_manifest(platform, platform.context(), by_variant[variant].spec)
        assert manifest["lineage"]["run"] == run.id and manifest["lineage"]["datasets"] == ["norm@1"]
        assert manifest["lineage"]["recipe"] and manifest["lineage"]["parent"] == expected
    _, pruned = registry.read_manifest(platform, platform.context(), by_variant["pruned-s0.3"].spec)
    assert pruned["lineage"]["run"] is None  # not fine-tuned: no run trained it
    with platform.db.read() as s:
        made = set(s.scalars(select(LineageEdge.dst).where(LineageEdge.src == f"run:{run.id}")))
    assert f"model:{by_variant['distilled'].spec}" in made


def test_data_flags_left_out_are_the_runs_columns(trained: TrainedModel) -> None:
    # `--data V` without --group-field set group_field to None explicitly, so the run's group column was not
    # used: the variants' reports lost their per-slice scores.
    from modelyard.cli.optimize import _evaluation_data
    from modelyard.optimize._pipeline import _eval_rows

    platform = Platform(load_settings(home=trained.home))
    try:
        ctx = platform.context()
        spec = registry.register(platform, ctx, trained.run_id, "flags").spec
        _, rows = _eval_rows(platform, ctx, spec, _evaluation_data("norm@1", None, None, 50), 50)
        assert len(rows) == 50 and all(r.group and "-" in r.group for r in rows)  # the recipe's: locale
        _, rows = _eval_rows(platform, ctx, spec, _evaluation_data("norm@1", "test.jsonl", "task", 50), 50)
        assert all(r.group and "-" not in r.group for r in rows)  # a flag given wins: task
    finally:
        platform.close()
