"""Quality gates measure what they claim: the held-out rows, real gaps, existing aliases, changed inputs.

These tests share the session's home (it holds the evaluation data ``norm@1``); each uses its own model
and dataset names."""

from __future__ import annotations

import copy
import json
import secrets
from collections import Counter
from pathlib import Path

import pytest
import yaml

from modelyard import registry
from modelyard.core import Platform
from modelyard.data import add_version
from modelyard.errors import UsageError, ValidationError
from modelyard.evaluation import check_gates, parse_policy
from modelyard.testing import TrainedModel
from modelyard.testing._fixtures import TINY_RECIPE
from modelyard.tracking import Client
from modelyard.training._data import read_examples, split_examples
from modelyard.training._recipe import parse_recipe

DECODING = {"max_new_tokens": 24}


def one_table(platform: Platform, trained: TrainedModel, tmp_path: Path, files: list[str]) -> str:
    """A new dataset version holding one table: the session's ``files`` of norm@1 concatenated."""
    data, out = trained.home.parent / "data", tmp_path / "one"
    out.mkdir()
    target = out / ("train.jsonl" if files == ["train"] else "data.jsonl")
    target.write_text("".join((data / f"{f}.jsonl").read_text() for f in files), encoding="utf-8")
    name = f"d{secrets.token_hex(3)}"
    add_version(platform, platform.context(), out, name)
    return f"{name}@1"


def test_a_version_the_run_cut_by_ratios_is_evaluated_on_its_test_cut_only(
    trained_platform: Platform, trained: TrainedModel, model_dir: Path, tmp_path: Path, name: str
) -> None:
    p = trained_platform
    spec = one_table(p, trained, tmp_path, ["train", "validation", "test"])
    recipe = copy.deepcopy(TINY_RECIPE) | {"data": {"dataset": spec, "group_field": "locale"}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    with Client(p) as client, client.start_run("cut") as run:  # the session's weights, as if trained on spec
        run.use_dataset(spec)
        run.log_artifact(model_dir, "model")
        run.log_artifact(tmp_path / "recipe.yaml")
        run_id = run.id
    info = registry.register(p, p.context(), run_id, name)

    policy = parse_policy(
        {"data": {"dataset": spec, "max_samples": 10_000}, "decoding": DECODING, "metrics": ["rougeL >= 0"]}
    )
    report = check_gates(p, p.context(), info.spec, policy, attest=False)
    data = parse_recipe(recipe).data
    _, _, test = split_examples(read_examples(tmp_path / "one" / "data.jsonl", data), data)
    assert report.measured["examples"] == len(test)  # not every row, training rows included
    assert report.measured["file"] == "data.jsonl" and "cut" in report.measured["split"]


def test_a_split_no_member_is_named_for_is_refused(
    trained_platform: Platform, trained: TrainedModel, model_dir: Path, tmp_path: Path, name: str
) -> None:
    p = trained_platform
    spec = one_table(p, trained, tmp_path, ["train"])  # holds train.jsonl only
    info = registry.register(p, p.context(), model_dir, name)
    policy = parse_policy({"data": {"dataset": spec}, "decoding": DECODING, "metrics": ["rougeL >= 0"]})
    with pytest.raises(UsageError, match=rf"'test' but {spec}:train.jsonl is not the test split"):
        check_gates(p, p.context(), info.spec, policy, attest=False)
    # naming the member is a choice: it is read whole
    chosen = parse_policy(
        {"data": {"dataset": spec, "file": "train.jsonl", "max_samples": 5}, "metrics": ["rougeL >= 0"]}
    )
    assert check_gates(p, p.context(), info.spec, chosen, attest=False).measured["file"] == "train.jsonl"


def test_a_fairness_gap_needs_two_slices_with_a_group_value(
    trained_platform: Platform, trained: TrainedModel, model_dir: Path, tmp_path: Path, name: str
) -> None:
    p = trained_platform
    info = registry.register(p, p.context(), model_dir, name)
    rows = [json.loads(line) for line in (trained.home.parent / "data" / "test.jsonl").open()]
    sizes = sorted(Counter(r["locale"] for r in rows).values())
    assert sizes[-1] > sizes[-2], "one slice must be the largest for this test to mean anything"
    data = {"dataset": "norm@1", "file": "test.jsonl", "group_field": "locale", "max_samples": 10_000}
    gap = {"metric": "rougeL", "max_gap": 1.0}
    policy = parse_policy(
        {"data": data, "decoding": DECODING, "fairness": [gap, {**gap, "min_examples": sizes[-1]}]}
    )
    several, one = check_gates(p, p.context(), info.spec, policy, attest=False).checks
    assert several.passed and several.value is not None
    assert not one.passed and one.value is None and "needs 2+ slices" in one.note  # not a gap of 0

    nulls = tmp_path / "nulls"
    nulls.mkdir()
    with (nulls / "test.jsonl").open("w") as f:
        f.writelines(json.dumps({**r, "locale": None}) + "\n" for r in rows[:10])
    spec = f"nulls{secrets.token_hex(3)}"
    add_version(p, p.context(), nulls, spec)
    missing = parse_policy(
        {"data": {"dataset": f"{spec}@1", "group_field": "locale"}, "decoding": DECODING, "fairness": [gap]}
    )
    [only] = check_gates(p, p.context(), info.spec, missing, attest=False).checks
    assert not only.passed and "judged: (none)" in only.note  # rows without a group are no group


def test_an_alias_minus_a_number_is_an_offset_and_nan_is_no_alias() -> None:
    for text, offset in (("rougeL >= staging-1", -1.0), ("rougeL >= production-0.01", -0.01)):
        [check] = parse_policy({"data": {"dataset": "norm@1"}, "metrics": [text]}).checks
        assert (check.alias, check.offset) == (text.split()[-1].split("-")[0], offset)
    for text in ("rougeL >= nan", "rougeL <= inf - 1"):
        with pytest.raises(ValidationError, match="is not a bound"):
            parse_policy({"data": {"dataset": "norm@1"}, "metrics": [text]})


def test_a_relative_check_naming_an_alias_the_model_lacks_fails_unless_production_never_was(
    trained_platform: Platform, model_dir: Path, name: str
) -> None:
    p = trained_platform
    info = registry.register(p, p.context(), model_dir, name)
    registry.set_alias(p, p.context(), info.spec, "staging")
    checks = ["rougeL >= production - 0.01", "rougeL >= stagin - 0.01", "rougeL <= staging-1"]
    data = {"dataset": "norm@1", "file": "test.jsonl", "max_samples": 10}
    policy = parse_policy({"data": data, "decoding": DECODING, "metrics": checks})
    first, typo, minus = check_gates(p, p.context(), info.spec, policy, attest=False).checks
    assert first.passed and first.note == f"skipped: nothing at {name}@production yet"
    assert not typo.passed and typo.note == f"{name}@stagin does not exist; did you mean 'staging'?"
    assert not minus.passed and minus.bound == pytest.approx(minus.value - 1)  # staging minus 1


def test_robustness_compares_only_inputs_a_perturbation_changed(
    trained_platform: Platform, model_dir: Path, name: str
) -> None:
    from transformers import AutoTokenizer

    from modelyard.evaluation import perturb
    from modelyard.training import make_examples

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    texts = [r["source"] for r in make_examples(50, seed=2)]
    ids = [tokenizer(t)["input_ids"] for t in texts]
    varied = perturb(texts, ["whitespace"], 0)
    assert all(tokenizer(t)["input_ids"] != i for (_, t), i in zip(varied, ids, strict=True))

    p = trained_platform
    info = registry.register(p, p.context(), model_dir, name)
    data = {"dataset": "norm@1", "file": "test.jsonl", "max_samples": 20}
    robust = {"perturbations": ["numbers", "casing"], "min_ratio": 0.01}
    report = check_gates(
        p, p.context(), info.spec, parse_policy({"data": data, "robustness": robust}), attest=False
    )
    measured = report.measured["robustness"]
    assert measured["unchanged"]["numbers"] > 0 and "casing" not in measured["unchanged"]
    assert measured["examples"] == 20 - measured["unchanged"]["numbers"]
    assert "unchanged examples left out" in report.checks[0].note


def test_robustness_with_a_clean_score_of_zero_fails_and_equal_slices_are_both_named(
    trained_platform: Platform, trained: TrainedModel, model_dir: Path, tmp_path: Path, name: str
) -> None:
    """0 perturbed vs 0 clean is no evidence of robustness (it passed as a ratio of 1); and a fairness gap of
    0 names two slices, not the same one twice."""
    p = trained_platform
    rows = read_examples(trained.home.parent / "data" / "test.jsonl", parse_recipe(TINY_RECIPE).data)
    out = tmp_path / "unanswerable"
    out.mkdir()
    with (out / "test.jsonl").open("w", encoding="utf-8") as f:
        for i, r in enumerate(rows[:16]):
            # References of punctuation only: ROUGE tokenises them to nothing, so every score is 0.
            f.write(json.dumps({"source": r.source, "target": "@@@", "locale": ("a", "b")[i % 2]}) + "\n")
    dataset = f"z{secrets.token_hex(3)}"
    add_version(p, p.context(), out, dataset)
    info = registry.register(p, p.context(), model_dir, name)
    policy = parse_policy(
        {
            "data": {"dataset": f"{dataset}@1", "group_field": "locale"},
            "decoding": DECODING,
            "fairness": [{"metric": "rougeL", "max_gap": 0.1, "min_examples": 2}],
            "robustness": {"perturbations": ["casing"], "min_ratio": 0.5},
        }
    )
    checks = {c.kind: c for c in check_gates(p, p.context(), info.spec, policy, attest=False).checks}
    robust = checks["robustness"]
    assert not robust.passed and robust.value is None and "no ratio to judge" in robust.note
    fair = checks["fairness"]
    assert fair.passed and fair.value == 0 and fair.note.startswith("b 0 vs a 0")


def test_a_fairness_minimum_with_no_slice_holding_a_group_value_fails(
    trained_platform: Platform, trained: TrainedModel, model_dir: Path, tmp_path: Path, name: str
) -> None:
    """A group column null in every row leaves only the "(missing)" slice: the whole set, no group. Judging
    it against the minimum passed a fairness gate that compared no groups at all."""
    p = trained_platform
    info = registry.register(p, p.context(), model_dir, name)
    rows = [json.loads(line) for line in (trained.home.parent / "data" / "test.jsonl").open()]
    nulls = tmp_path / "nulls"
    nulls.mkdir()
    with (nulls / "test.jsonl").open("w") as f:
        f.writelines(json.dumps({**r, "locale": None}) + "\n" for r in rows[:10])
    spec = f"nulls{secrets.token_hex(3)}"
    add_version(p, p.context(), nulls, spec)
    fairness = [{"metric": "rougeL", "min": 0.0, "min_examples": 1}]
    data = {"dataset": f"{spec}@1", "group_field": "locale"}
    policy = parse_policy({"data": data, "decoding": DECODING, "fairness": fairness})
    report = check_gates(p, p.context(), info.spec, policy, attest=False)
    [only] = report.checks
    assert not only.passed and not report.passed
    assert "no slice of 'locale' with a group value" in only.note
