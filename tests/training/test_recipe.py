"""The recipe format: both examples parse; every bad recipe fails before any work with an error naming the
problem; params() and with_overrides(); check_data against a real platform; no torch at import."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelyard import data
from modelyard.core import Platform
from modelyard.errors import NotFoundError, UsageError, ValidationError
from modelyard.training import PRESETS, Recipe, check_data, load_recipe, parse_recipe
from modelyard.training._recipe import read_yaml

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "flan-t5"

MINIMAL: dict[str, Any] = {
    "data": {"dataset": "normalise@1", "split": {"train": 0.8, "validation": 0.1, "test": 0.1}},
    "tokenizer": {"train": "sentencepiece", "vocab_size": 256},
    "model": {"init": "scratch", "preset": "tiny"},
    "hyperparameters": {"lr": 1e-3, "max_steps": 10},
}


def recipe(**changes: Any) -> dict[str, Any]:
    """MINIMAL with ``section__key=value`` changes (value ``...`` deletes the key)."""
    out = copy.deepcopy(MINIMAL)
    for dotted, value in changes.items():
        *sections, key = dotted.split("__")
        node = out
        for s in sections:
            node = node.setdefault(s, {})
        if value is ...:
            node.pop(key, None)
        else:
            node[key] = value
    return out


def problems(mapping: Any) -> str:
    with pytest.raises(ValidationError) as info:
        parse_recipe(mapping, source="r.yaml")
    assert info.value.exit_code == 2
    assert info.value.message.startswith("r.yaml: ")
    return info.value.message


# -- the examples -----------------------------------------------------------------------------------------


def test_full_example_parses() -> None:
    r = load_recipe(EXAMPLES / "recipe.yaml")
    assert r.model.pretrained == "google/flan-t5-base"
    assert r.tokenizer.from_ == "model"
    assert r.precision == "auto"
    assert r.hyperparameters.lr == pytest.approx(3e-4)
    assert r.evaluation.beams == 4
    assert r.data.versions() == dict.fromkeys(("train", "validation", "test"), "normalise@1")
    assert r.data.group_field == "locale"
    assert r.search is not None and "hyperparameters.lr" in r.search


def test_tiny_example_parses() -> None:
    r = load_recipe(EXAMPLES / "recipe-tiny.yaml")
    assert r.data.versions() == dict.fromkeys(("train", "validation", "test"), "normalise@1")
    assert r.data.group_field == "locale"
    assert r.model.dims() == PRESETS["tiny"]
    assert r.tokenizer.train == "sentencepiece"
    assert r.precision == "fp32"
    assert r.hyperparameters.max_steps is not None and r.hyperparameters.epochs is None
    assert r.hyperparameters.lr == pytest.approx(3e-3)  # written `3e-3`, which PyYAML alone reads as a string


def test_presets_mirror_flan_t5() -> None:
    small, base = PRESETS["small"], PRESETS["base"]
    assert (small.d_model, small.d_ff, small.num_layers, small.num_heads, small.kv) == (512, 1024, 8, 6, 64)
    assert (base.d_model, base.d_ff, base.num_layers, base.num_heads, base.kv) == (768, 2048, 12, 12, 64)


@pytest.mark.parametrize("text", ["1e-4", "1E-4", "+1e-4", "1.0e-4", "0.0001", ".0001"])
def test_yaml_scientific_floats_are_numbers(tmp_path: Path, text: str) -> None:
    doc = yaml.safe_dump(recipe(hyperparameters__lr=0.5)).replace("lr: 0.5", f"lr: {text}")
    path = tmp_path / "r.yaml"
    path.write_text(doc)
    assert load_recipe(path).hyperparameters.lr == pytest.approx(1e-4)


def test_quoted_number_is_not_silently_coerced() -> None:
    msg = problems(recipe(hyperparameters__lr="1e-4"))
    assert "hyperparameters.lr: must be a valid number (got '1e-4')" in msg


# -- bad recipes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mapping", "expected"),
    [
        (recipe(model__foo=1), "model.foo: unknown key"),
        (recipe(hyperparameters__seed=20240101123456), "hyperparameters.seed"),  # overflowed manual_seed
        (
            recipe(
                model__config={
                    "d_model": 8,
                    "d_ff": 8,
                    "num_layers": 1,
                    "num_heads": 1,
                    "relative_attention_num_buckets": 2,
                }
            ),
            "relative_attention_num_buckets",
        ),
        (recipe(hyperparameters__lrr=1e-3), "hyperparameters.lrr: unknown key (did you mean 'lr'?)"),
        ({**MINIMAL, "hyperparams": {}}, "hyperparams: unknown key (did you mean 'hyperparameters'?)"),
        (
            recipe(train__early_stopping={"metric": "loss", "patiense": 2}),
            "train.early_stopping.patiense: unknown",
        ),
        (  # it judges periodic evaluations; without them it silently never stopped anything
            recipe(train__early_stopping={"metric": "loss", "patience": 2}),
            "train: early_stopping needs eval_every_steps",
        ),
        (
            recipe(model__config={"d_model": 8}, model__preset=...),
            "model.config.d_ff: required key is missing",
        ),
        (recipe(hyperparameters__lr="abc"), "hyperparameters.lr: must be a valid number (got 'abc')"),
        (recipe(hyperparameters__lr=True), "hyperparameters.lr: must be a valid number (got True)"),
        (recipe(hyperparameters__batch_size="8"), "hyperparameters.batch_size: must be a valid integer"),
        (recipe(hyperparameters__batch_size=8.5), "hyperparameters.batch_size: must be a valid integer"),
        (recipe(hyperparameters__lr=-1e-4), "hyperparameters.lr: must be greater than 0"),
        (recipe(hyperparameters__lr=float("nan")), "hyperparameters.lr: must be a finite number"),
        (
            recipe(hyperparameters__batch_size=0),
            "hyperparameters.batch_size: must be greater than or equal to 1",
        ),
        (
            recipe(hyperparameters__label_smoothing=1.0),
            "hyperparameters.label_smoothing: must be less than 1",
        ),
        (recipe(hyperparameters__schedule="step"), "hyperparameters.schedule: must be 'linear', 'cosine' or"),
        (recipe(hyperparameters__epochs=3), "hyperparameters: give exactly one of epochs or max_steps"),
        (recipe(hyperparameters__max_steps=...), "hyperparameters: give exactly one of epochs or max_steps"),
        (
            recipe(hyperparameters__warmup_steps=5, hyperparameters__warmup_ratio=0.1),
            "warmup_steps or warmup_r",
        ),
        (recipe(hyperparameters__lr=...), "hyperparameters.lr: required key is missing"),
        (
            recipe(data__dataset="normalise"),
            "data.dataset: 'normalise' is not a dataset version; expected NAME@",
        ),
        (recipe(data__dataset="normalise@0"), "data.dataset: 'normalise@0' has an invalid version '0'"),
        (recipe(data__dataset="normalise@latest"), "has an invalid version 'latest'"),
        (recipe(data__dataset="../x@1"), "data.dataset: dataset name '../x' is not valid"),
        (
            recipe(data__split={"train": 0.8, "validation": 0.1, "test": 0.2}),
            "data.split: ratios must sum to 1",
        ),
        (
            recipe(data__split={"train": 1.2, "test": -0.2}),
            "data.split.train: must be less than or equal to 1",
        ),
        (recipe(data__train="a@1"), "data: give either dataset (with split ratios) or train/validation/test"),
        (recipe(data__format="xlsx"), "data.format: must be 'auto', 'jsonl', 'csv' or 'parquet'"),
        (recipe(data__file="../etc/passwd"), "data.file: '../etc/passwd' is not a member path"),
        (
            recipe(data__target_field="source"),
            "data: source_field, target_field and group_field must be diff",
        ),
        (recipe(model__pretrained="google/flan-t5-base"), "model: give exactly one of pretrained"),
        (recipe(model__preset="huge"), "model.preset: must be 'tiny', 'small' or 'base'"),
        (recipe(model__config={"d_model": 64, "d_ff": 1, "num_layers": 1, "num_heads": 3}), "not divisible"),
        (  # refused here, not by a MemoryError once the data is read and the tokenizer trained
            recipe(model__config={"d_model": 10**9, "d_ff": 64, "num_layers": 1, "num_heads": 1}),
            "model.config.d_model: must be less than or equal to 65536",
        ),
        (recipe(tokenizer={"from": "model"}), "tokenizer from: model needs a pretrained model"),
        (  # a new vocabulary's ids name other tokens than the ones the pretrained embeddings learnt
            recipe(model={"pretrained": "google/flan-t5-base"}),
            "tokenizer train: sentencepiece with a pretrained model",
        ),
        (recipe(tokenizer__vocab_size=...), "tokenizer: train: sentencepiece needs vocab_size"),
        (recipe(tokenizer__max_unk_rate=2), "tokenizer.max_unk_rate: must be less than or equal to 1"),
        (  # trained fine, then the first evaluation's tokenizer call overflowed
            recipe(tokenizer__max_source_length=10**30),
            "tokenizer.max_source_length: must be less than or equal to 1000000",
        ),
        (recipe(tokenizer__max_target_length=10**7), "tokenizer.max_target_length: must be less than or"),
        (recipe(precision="fp8"), "precision: must be 'auto', 'bf16', 'fp16' or 'fp32'"),
        (recipe(checkpoints__keep_last=0), "checkpoints.keep_last: must be greater than or equal to 1"),
        (recipe(checkpoints__metric="meteor"), "checkpoints.metric: 'meteor' is not computed"),
        (recipe(evaluation__metrics=["bleu", "meteor"]), "evaluation.metrics[1]: must be 'bleu', 'rouge1'"),
        (recipe(evaluation__num_beams=4), "evaluation: num_beams > 1 needs decoding: beam"),
        (recipe(evaluation__num_beams=10**9), "evaluation.num_beams: must be less than or equal to 256"),
        (recipe(evaluation__batch_size=2 * 10**6), "evaluation.batch_size: must be less than or equal"),
        (recipe(evaluation__max_new_tokens=10**30), "evaluation.max_new_tokens: must be less than or equal"),
        (recipe(data="normalise@1"), "data: must be a valid dictionary or instance of DataSection (got 'n"),
    ],
)
def test_bad_recipe_names_the_problem(mapping: dict[str, Any], expected: str) -> None:
    assert expected in problems(mapping)


def test_every_problem_is_listed_in_one_message() -> None:
    msg = problems(recipe(model__foo=1, hyperparameters__lr=-1))
    assert msg.startswith("r.yaml: invalid recipe, 2 problems: ")
    assert "model.foo: unknown key" in msg and "hyperparameters.lr: must be greater than 0" in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        (
            {"hyperparameters.lrr": {"type": "float", "low": 1e-5, "high": 1e-3}},
            "not a recipe field (did you mean",
        ),
        (
            {"nothing.lr": {"type": "float", "low": 1e-5, "high": 1e-3}},
            "search.nothing.lr: not a recipe field",
        ),
        ({"hyperparameters": {"type": "float", "low": 1, "high": 2}}, "cannot set hyperparameters"),
        (
            {"model.preset": {"type": "float", "low": 1, "high": 2}},
            "a float parameter cannot set model.preset",
        ),
        ({"hyperparameters.lr": {"type": "float", "low": -1, "high": 1e-3}}, "the value -1.0 is not valid"),
        (
            {"hyperparameters.lr": {"type": "float", "low": 1e-3, "high": 1e-5}},
            "low (0.001) must be less than",
        ),
        (
            {"hyperparameters.lr": {"type": "float", "low": 0, "high": 1, "log": True}},
            "log scale needs low > 0",
        ),
        ({"hyperparameters.batch_size": {"type": "int", "low": 1.5, "high": 8}}, "needs an integer low"),
        (
            {"model.preset": {"type": "categorical", "choices": ["tiny", "huge"]}},
            "the value 'huge' is not valid",
        ),
        ({"model.preset": {"type": "categorical", "choices": []}}, "non-empty list of choices"),
        ({"hyperparameters.lr": {"type": "grid", "low": 0.1, "high": 1}}, "must be 'float', 'int' or 'categ"),
        ({"search.x": {"type": "float", "low": 0.1, "high": 1}}, "search.search.x: not a recipe field"),
    ],
)
def test_bad_search_space_is_refused(space: dict[str, Any], expected: str) -> None:
    assert expected in problems(recipe(search=space))


def test_good_search_space() -> None:
    space = {
        "hyperparameters.lr": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
        "hyperparameters.batch_size": {"type": "int", "low": 8, "high": 64, "step": 8},
        "hyperparameters.schedule": {"type": "categorical", "choices": ["linear", "cosine"]},
        "model.preset": {"type": "categorical", "choices": ["tiny", "small"]},
    }
    r = parse_recipe(recipe(search=space))
    assert r.search is not None and r.search["hyperparameters.lr"].log


# -- loading files ----------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"recipe '.*nope\.yaml' not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_directory_is_not_a_recipe(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is a directory"):
        load_recipe(tmp_path)


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "", "42\n"])
def test_yaml_that_is_not_a_mapping(tmp_path: Path, text: str) -> None:
    path = tmp_path / "list.yaml"
    path.write_text(text)
    with pytest.raises(ValidationError, match=r"list\.yaml: a recipe must be a mapping of sections"):
        load_recipe(path)


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  dataset: normalise@1\n model: [unclosed\n")
    with pytest.raises(ValidationError, match=r"bad\.yaml: not valid YAML at line 3"):
        load_recipe(path)


def test_a_key_given_twice_is_refused_not_silently_dropped(tmp_path: Path) -> None:
    # PyYAML keeps the last of two equal keys: a second `metrics:` block would drop the first's checks.
    from modelyard.evaluation import load_policy

    path = tmp_path / "gates.yaml"
    path.write_text("metrics: ['rougeL >= 0.5']\nsize: {max_mb: 100}\nmetrics: ['bleu >= 0.0']\n")
    with pytest.raises(
        ValidationError, match=r"gates\.yaml: not valid YAML at line 3.*'metrics' is given twice"
    ):
        load_policy(path)
    path.write_text("base: &b {lr: 0.1}\nhp:\n  <<: *b\n  lr: 0.2\n")  # a merge may still be overridden
    assert read_yaml(path, "x")["hp"] == {"lr": 0.2}
    # a text the platform stored before this check (a run's recipe) still reads as it did
    from modelyard.training._recipe import parse_yaml

    assert parse_yaml("a: 1\na: 2\n", source="run's recipe", stored=True) == {"a": 2}


def test_yaml_cannot_build_python_objects(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("data: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ValidationError, match="not valid YAML"):
        load_recipe(path)


def test_deep_or_huge_yaml_is_refused_before_it_costs_the_process(tmp_path: Path) -> None:
    """Thousands of nested brackets were an 'unexpected RecursionError'; a file of many megabytes was
    read and parsed whole (a job's recipe was already bounded; `yard train` and gate policies were not)."""
    from modelyard.evaluation import load_policy

    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 50_000 + "]" * 50_000)
    with pytest.raises(ValidationError, match=r"deep\.yaml: not valid YAML: it is nested too deeply"):
        load_recipe(deep)
    with pytest.raises(ValidationError, match="nested too deeply"):
        load_policy(deep)
    huge = tmp_path / "huge.yaml"
    huge.write_text("metrics: []\n" + "#" * (1 << 20))
    with pytest.raises(ValidationError, match=r"gate policy '.*huge\.yaml' has more than 1 MiB"):
        load_policy(huge)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe(model__foo=1)))
    with pytest.raises(ValidationError, match=r"r\.yaml: invalid recipe, 1 problem: model\.foo: unknown key"):
        load_recipe(path)


# -- params and overrides ---------------------------------------------------------------------------------


def test_params_are_flat_scalars() -> None:
    r = load_recipe(EXAMPLES / "recipe-tiny.yaml")
    params = r.params()
    assert params["hyperparameters.lr"] == pytest.approx(3e-3)
    assert params["hyperparameters.max_steps"] == 1500
    assert params["data.train"] == params["data.test"] == "normalise@1"
    assert params["model.preset"] == "tiny"
    assert params["tokenizer.train"] == "sentencepiece"
    assert params["checkpoints.keep_best"] == "true"
    assert params["evaluation.metrics"] == "bleu,rouge1,rouge2,rougeL,exact_match,gen_len"
    assert "hyperparameters.epochs" not in params  # None is left out
    assert not any(k.startswith(("search", "description")) for k in params)
    assert all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in params.values())
    assert load_recipe(EXAMPLES / "recipe.yaml").params()["tokenizer.from"] == "model"


def test_with_overrides_returns_a_validated_copy() -> None:
    r = parse_recipe(MINIMAL)
    r2 = r.with_overrides({"hyperparameters.lr": 3e-4, "hyperparameters.warmup_ratio": 0.1})
    assert r2.hyperparameters.lr == pytest.approx(3e-4)
    assert r2.hyperparameters.warmup_ratio == pytest.approx(0.1)
    assert r.hyperparameters.lr == pytest.approx(1e-3)  # the original is unchanged
    assert r2.hyperparameters.max_steps == 10
    r3 = r.with_overrides({"hyperparameters.max_steps": None, "hyperparameters.epochs": 2})
    assert (r3.hyperparameters.epochs, r3.hyperparameters.max_steps) == (2, None)
    r4 = r.with_overrides({"model.preset": "small"})
    assert r4.model.dims() == PRESETS["small"]


def test_cli_set_reads_values_as_the_recipe_file_does(tmp_path: Path) -> None:
    # `yard train R --set hyperparameters.lr=1e-3` (the docs' example): PyYAML alone reads 1e-3 as a string,
    # which the strict recipe then refused.
    from modelyard.cli.training import parse_sets, read_recipe

    assert parse_sets(["hyperparameters.lr=1e-3", "b.c=3E-4", "d.e=true", "f.g=8", "h.i="]) == {
        "hyperparameters.lr": 1e-3,
        "b.c": 3e-4,
        "d.e": True,
        "f.g": 8,
        "h.i": "",
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(MINIMAL), encoding="utf-8")
    assert read_recipe(path, ["hyperparameters.lr=2e-4"])[0].hyperparameters.lr == pytest.approx(2e-4)
    for bad in ("a.b=!!python/object/apply:os.system [id]", "a.b={x: 1, x: 2}", "novalue"):
        with pytest.raises(UsageError):
            parse_sets([bad])


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"hyperparameters.lr": -1.0},
            "overrides: invalid recipe, 1 problem: hyperparameters.lr: must be greater",
        ),
        ({"hyperparameters.lr": "fast"}, "hyperparameters.lr: must be a valid number"),
        ({"hyperparameters.nope": 1}, "hyperparameters.nope: unknown key"),
        ({"hyperparameters.epochs": 2}, "give exactly one of epochs or max_steps"),
        ({"hyperparameters.lr.x": 1}, "override 'hyperparameters.lr.x': hyperparameters.lr is not a section"),
        ({"": 1}, "expected a dotted path"),
    ],
)
def test_with_overrides_rejects_bad_values(overrides: dict[str, Any], expected: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_recipe(MINIMAL).with_overrides(overrides)
    assert expected in info.value.message


def test_recipe_is_frozen() -> None:
    r = parse_recipe(MINIMAL)
    with pytest.raises(Exception, match="frozen"):
        r.hyperparameters.lr = 1.0  # type: ignore[misc]
    assert isinstance(r, Recipe)


# -- against a platform -----------------------------------------------------------------------------------


@pytest.fixture
def normalise(platform: Platform, tmp_path: Path) -> Platform:
    src = tmp_path / "normalise"
    src.mkdir()
    (src / "data.jsonl").write_text('{"source": "3 mars 2024", "target": "2024-03-03", "locale": "fr-FR"}\n')
    data.add_version(platform, platform.context(), src, "normalise")
    return platform


def test_check_data_resolves_every_version(normalise: Platform) -> None:
    found = check_data(normalise, normalise.context(), parse_recipe(recipe(data__file="data.jsonl")))
    assert {role: (v.name, v.version) for role, v in found.items()} == {"dataset": ("normalise", 1)}


def test_check_data_names_the_missing_version(normalise: Platform) -> None:
    r = parse_recipe(recipe(data__dataset="normalise@2"))
    with pytest.raises(NotFoundError, match=r"data\.dataset: normalise@2 not found .*no version 2"):
        check_data(normalise, normalise.context(), r)
    split = {"data": {"train": "normalise@1", "validation": "other@1", "test": "normalise@3"}}
    r = parse_recipe({**recipe(), **split})
    with pytest.raises(NotFoundError) as info:
        check_data(normalise, normalise.context(), r)
    assert "data.validation: other@1 not found" in info.value.message
    assert "data.test: normalise@3 not found" in info.value.message
    assert "data.train" not in info.value.message


def test_check_data_names_a_missing_member(normalise: Platform) -> None:
    r = parse_recipe(recipe(data__file="train.jsonl"))
    with pytest.raises(NotFoundError, match=r"data\.file: 'train\.jsonl' is not a member of normalise@1"):
        check_data(normalise, normalise.context(), r)


# -- import weight ----------------------------------------------------------------------------------------


def test_importing_training_does_not_import_torch() -> None:
    script = textwrap.dedent(
        """
        import sys
        import modelyard.training
        modelyard.training.parse_recipe
        heavy = sorted(m for m in ("torch", "transformers", "sentencepiece", "optuna", "sqlalchemy")
                       if m in sys.modules)
        assert not heavy, f"import modelyard.training pulled in {heavy}"
        print("ok")
        """
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_a_scratch_model_too_large_to_build_is_refused_with_its_size() -> None:
    # Each size is within its own bound; together they make a model of trillions of parameters, which
    # used to be found out only when built, after the data was read and the tokenizer trained.
    huge = {"d_model": 32_768, "d_ff": 131_072, "num_layers": 128, "num_heads": 512}
    msg = problems(recipe(model__preset=..., model__config=huge))
    assert (
        "vocab_size 256 makes a model of about 4,947.8 billion parameters, over the limit of 30 billion"
        in msg
    )


def test_the_largest_flan_t5_sizes_pass_the_size_limit() -> None:
    # google/flan-t5-xxl and google/flan-ul2, from their config.json files (tied: one embedding fewer)
    xxl = {"d_model": 4096, "d_ff": 10240, "num_layers": 24, "num_heads": 64, "d_kv": 64}
    ul2 = {"d_model": 4096, "d_ff": 16384, "num_layers": 32, "num_heads": 16, "d_kv": 256}
    for config, billions in ((xxl, 11.0), (ul2, 19.5)):
        config |= {"tie_word_embeddings": False, "relative_attention_num_buckets": 32}
        r = parse_recipe(recipe(model__preset=..., model__config=config, tokenizer__vocab_size=32128))
        dims = r.model.dims()
        assert dims is not None and round(dims.parameters(32128) / 1e9, 1) == billions
