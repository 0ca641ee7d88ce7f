"""`yard eval` in-process on a real home: a tiny model logged as a run's model/ artifacts, a versioned
generated dataset, the report, the recorded run and its lineage; tampering and bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from modelyard.testing import Yard

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")
pytest.importorskip("sacrebleu")
pytest.importorskip("rouge_score")

RECIPE = """\
data: {train: normalise@1, test: normalise@1, group_field: locale}
tokenizer: {train: sentencepiece, vocab_size: 200, max_source_length: 48}
model: {init: scratch, preset: tiny}
hyperparameters: {lr: 1.0e-3, max_steps: 10, seed: 4}
evaluation: {metrics: [rougeL], max_new_tokens: 6, batch_size: 4}
"""


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded tiny T5 with a tokenizer trained on generated rows, written by save_model."""
    import torch

    from modelyard.training import build_model, load_recipe, make_examples, save_model
    from modelyard.training._data import Example
    from modelyard.training._tokenize import build_tokenizer

    root = tmp_path_factory.mktemp("model")
    (root / "recipe.yaml").write_text(RECIPE)
    recipe = load_recipe(root / "recipe.yaml")
    rows = [Example(r["source"], r["target"], r["locale"]) for r in make_examples(200, seed=1)]
    tokenizer = build_tokenizer(recipe, rows, root / "tok")
    model = build_model(recipe, vocab_size=len(tokenizer))
    with torch.no_grad():  # input-dependent output without training (see tests/training/test_eval.py)
        model.shared.weight[0] = 0
        model.shared.weight[2:] *= 0.3
    return save_model(model, tokenizer, root / "saved")


@pytest.fixture
def home(yard: Yard) -> None:
    assert yard("init").code == 0
    r = yard("examples", "make-data", "ex", "--rows", "80", "--seed", "2", "--version", "normalise")
    assert r.code == 0, r.err
    assert r.out.strip().splitlines()[-1] == "normalise@1"


def log_run(model_dir: Path | None) -> str:
    """A run with ``model_dir`` as its model/ artifacts, and the recipe.yaml beside it if there is one."""
    from modelyard.core import Platform
    from modelyard.tracking import Client

    with Platform() as platform, Client(platform=platform) as client:
        with client.start_run("train", capture=False) as run:
            run.log_dict({"note": "not a model"}, "notes.json")
            if model_dir is not None:
                run.log_artifact(model_dir, "model")
                if (model_dir.parent / "recipe.yaml").is_file():
                    run.log_artifact(model_dir.parent / "recipe.yaml")
        return run.id


def eval_runs(yard: Yard) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = yard("runs", "ls", "--experiment", "eval", "--json").json()
    return runs


def test_eval_of_a_run_uses_its_recipe_and_records_a_run(
    yard: Yard, home: None, saved_model: Path, tmp_path: Path
) -> None:
    run_id = log_run(saved_model)
    r = yard("eval", run_id[:10], "--data", "normalise@1", "--output", "out")
    assert r.code == 0, r.err
    assert "copy baseline" in r.out and "slices by locale" in r.out and "rougeL" in r.out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["n"] == 8  # the test.jsonl of the version (80 rows, 0.8/0.1/0.1)
    # every metric by default; the recipe's decoding and source length
    assert report["metrics"] == ["bleu", "rouge1", "rouge2", "rougeL", "exact_match", "gen_len"]
    assert report["decoding"] == {
        "decoding": "greedy",
        "num_beams": 1,
        "max_new_tokens": 6,
        "batch_size": 4,
        "max_source_length": 48,
    }
    assert report["info"]["evaluated_run"] == run_id and report["info"]["file"] == "test.jsonl"
    assert report["info"]["model"] == f"run:{run_id}/model"
    assert set(report["slices"]) <= {"en-US", "en-GB", "de-DE", "fr-FR", "ar-AE"} and report["slices"]
    assert report["baseline"]["overall"]["rougeL"] < 1.0
    assert "## Slices (locale)" in (tmp_path / "out" / "report.md").read_text()

    (run,) = eval_runs(yard)
    assert report["info"]["eval_run"] == run["id"] and run["id"] in r.out
    assert run["status"] == "FINISHED" and run["tags"]["eval.run"] == run_id
    assert run["tags"]["eval.model"] == f"run:{run_id}/model" and run["params"]["data"] == "normalise@1"
    assert run["metrics"]["rougeL"] == pytest.approx(report["overall"]["rougeL"])
    assert "baseline/rougeL" in run["metrics"] and any(k.startswith("slice/") for k in run["metrics"])
    shown = yard("runs", "show", run["id"], "--json").json()
    assert sorted(a["path"] for a in shown["artifacts"]) == ["eval/report.json", "eval/report.md"]
    lineage = yard("lineage", "show", "normalise@1", "--json").json()
    assert f"run:{run['id']}" in json.dumps(lineage["downstream"])


def test_eval_of_a_model_directory_with_flags(yard: Yard, home: None, saved_model: Path) -> None:
    r = yard(
        "eval",
        str(saved_model),
        "--data",
        "normalise@1",
        "--split",
        "validation",
        "--group-field",
        "locale",
        "--max-samples",
        "5",
        "--num-beams",
        "2",
        "--max-new-tokens",
        "4",
        "--metrics",
        "bleu,exact_match",
        "--experiment",
        "evals-by-hand",
        "--json",
    )
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["n"] == 5 and report["metrics"] == ["bleu", "exact_match"]
    assert report["decoding"]["decoding"] == "beam" and report["decoding"]["num_beams"] == 2
    assert report["decoding"]["max_source_length"] == 512  # no recipe: the default
    assert report["info"]["file"] == "validation.jsonl" and report["info"]["model"] == str(saved_model)
    assert len(report["samples"]) == 5 and report["slices"]
    runs = yard("runs", "ls", "--experiment", "evals-by-hand", "--json").json()
    assert len(runs) == 1 and "eval.run" not in runs[0]["tags"]


def test_a_tampered_model_is_refused(yard: Yard, home: None, saved_model: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad" / "saved"
    shutil.copytree(saved_model, bad)
    config = json.loads((bad / "config.json").read_text())
    config["d_ff"] = 64
    (bad / "config.json").write_text(json.dumps(config))
    r = yard("eval", str(bad), "--data", "normalise@1")
    assert r.code == 1 and "config.json does not match its SHA-256" in r.error
    # the same directory logged as a run's model: the download verifies the bytes, the manifest the model
    run_id = log_run(bad)
    r = yard("eval", run_id, "--data", "normalise@1")
    assert r.code == 1 and "config.json does not match its SHA-256" in r.error
    (bad / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    r = yard("eval", str(bad), "--data", "normalise@1")
    assert r.code == 1 and "pickle" in r.error
    assert eval_runs(yard) == []  # nothing recorded


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["abcdef123456", "--data", "normalise@1"], 1, "run abcdef123456 not found"),
        (["nope", "--data", "normalise@1"], 2, "neither a model directory nor a run id"),
        (["MODEL", "--data", "normalise@9"], 1, "has no version 9"),
        (["MODEL", "--data", "missing@1"], 1, "not found"),
        (["MODEL", "--data", "normalise"], 2, "names no version"),
        (["MODEL", "--data", "normalise@1", "--split", "dev"], 2, "--split must be one of train"),
        (["MODEL", "--data", "normalise@1", "--metrics", "blue"], 2, "did you mean 'bleu'"),
        (
            ["MODEL", "--data", "normalise@1", "--decoding", "greedy", "--num-beams", "3"],
            2,
            "--decoding beam",
        ),
        (["MODEL", "--data", "normalise@1", "--decoding", "sample"], 2, "greedy or beam"),
        (["MODEL", "--data", "normalise@1", "--source-field", "src"], 2, "no field 'src'"),
        (["MODEL", "--data", "normalise@1", "--file", "../x.jsonl"], 2, "--file"),
        (["MODEL", "--data", "normalise@1", "--file", "other.jsonl"], 2, "not a file of the dataset version"),
        (["MODEL", "--data", "normalise@1", "--batch-size", "0"], 2, "--batch-size"),
        # named as the flags, not as the recipe's fields (max_new_tokens: ...)
        (["MODEL", "--data", "normalise@1", "--batch-size", "10000000"], 2, "error: --batch-size: "),
        (["MODEL", "--data", "normalise@1", "--max-new-tokens", "10000000"], 2, "error: --max-new-tokens: "),
    ],
)
def test_bad_input_gives_one_line_errors(
    yard: Yard, home: None, saved_model: Path, args: list[str], code: int, message: str
) -> None:
    args = [str(saved_model) if a == "MODEL" else a for a in args]
    r = yard("eval", *args)
    assert r.code == code, r.err
    assert message in r.error
    assert eval_runs(yard) == []


def test_a_run_without_a_model(yard: Yard, home: None) -> None:
    run_id = log_run(None)
    r = yard("eval", run_id, "--data", "normalise@1")
    assert r.code == 1 and "has no saved model" in r.error


def test_yard_help_and_eval_help_import_no_torch() -> None:
    script = (
        "import sys\nfrom modelyard.cli import main\n"
        "for args in (['--help'], ['eval', '--help']):\n"
        "    try:\n        main(args)\n    except SystemExit:\n        pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'sacrebleu') if m in sys.modules]\n"
        "assert not heavy, heavy\nprint('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("ok")


def test_a_run_cut_from_one_version_is_evaluated_on_its_own_split(
    yard: Yard, home: None, saved_model: Path, tmp_path: Path
) -> None:
    from modelyard.core import Platform
    from modelyard.tracking import Client
    from modelyard.training import load_recipe, make_examples
    from modelyard.training._data import read_examples, split_examples

    single = tmp_path / "single"
    single.mkdir()
    rows = make_examples(40, seed=5)
    (single / "all.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert yard("data", "add", str(single), "--name", "single").code == 0
    recipe_text = RECIPE.replace(
        "data: {train: normalise@1, test: normalise@1, group_field: locale}",
        "data: {dataset: single@1, split: {train: 0.5, validation: 0.25, test: 0.25}, seed: 3}",
    )
    recipe_file = tmp_path / "r" / "recipe.yaml"
    recipe_file.parent.mkdir()
    recipe_file.write_text(recipe_text)
    with (
        Platform() as platform,
        Client(platform=platform) as client,
        client.start_run("train", capture=False) as run,
    ):
        run.log_artifact(saved_model, "model")
        run.log_artifact(recipe_file, "recipe.yaml")  # stored as recipe.yaml/recipe.yaml: also read
    r = yard("eval", run.id, "--data", "single@1", "--split", "validation", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    data = load_recipe(recipe_file).data
    _, validation, _ = split_examples(read_examples(single / "all.jsonl", data), data)
    assert report["n"] == len(validation) == 10
    assert [s["source"] for s in report["samples"]] == [e.source for e in validation[:5]]
    assert "cut as the run did (seed 3)" in report["info"]["selection"]
    # a model directory has no recipe: its only table is not a test split, so it is read whole only when
    # named with --file
    r = yard("eval", str(saved_model), "--data", "single@1", "--max-new-tokens", "2", "--json")
    assert r.code == 2 and "--file" in r.error
    whole = ["--file", "all.jsonl", "--max-new-tokens", "2", "--json"]
    r = yard("eval", str(saved_model), "--data", "single@1", *whole)
    assert r.code == 0, r.err
    assert json.loads(r.out)["n"] == 40


def test_a_version_without_the_split_is_refused_not_scored_on_its_training_rows(
    yard: Yard, home: None, saved_model: Path, tmp_path: Path
) -> None:
    from modelyard.training import make_examples

    only = tmp_path / "only"
    only.mkdir()
    (only / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in make_examples(12, seed=6)))
    assert yard("data", "add", str(only), "--name", "trainonly").code == 0
    model = str(saved_model)
    for args in ([], ["--split", "test"], ["--split", "test", "--file", "train.jsonl"]):
        r = yard("eval", model, "--data", "trainonly@1", *args)
        assert r.code == 2, r.err
        assert "--split is 'test' but trainonly@1:train.jsonl is not the test split" in r.error
        assert "--file" in r.error and "data.file" not in r.error
    assert eval_runs(yard) == []  # nothing scored, nothing recorded
    for args in (["--split", "train"], ["--file", "train.jsonl"]):  # the training rows, asked for by name
        r = yard("eval", model, "--data", "trainonly@1", "--max-new-tokens", "2", "--json", *args)
        assert r.code == 0, r.err
        assert json.loads(r.out)["n"] == 12
