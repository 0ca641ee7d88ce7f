"""Step 1: reading the examples of a recipe from dataset versions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from modelyard import data
from modelyard.core import Platform
from modelyard.errors import UsageError, ValidationError
from modelyard.training import make_examples, parse_recipe, write_dataset
from modelyard.training._data import Example, load_splits, read_examples, split_examples


def _recipe(**data_section: Any) -> Any:
    return parse_recipe(
        {
            "data": data_section,
            "tokenizer": {"train": "sentencepiece", "vocab_size": 256},
            "model": {"init": "scratch", "preset": "tiny"},
            "hyperparameters": {"lr": 1e-3, "max_steps": 10},
        }
    )


def _version(platform: Platform, src: Path, name: str) -> str:
    info = data.add_version(platform, platform.context(), src, name)
    return f"{info.name}@{info.version}"


@pytest.fixture
def generated(platform: Platform, tmp_path: Path) -> str:
    """The example generator's train/validation/test JSONL files as one version (60 rows)."""
    write_dataset(tmp_path / "gen", 60, seed=3, splits=(40, 10, 10))
    return _version(platform, tmp_path / "gen", "normalise")


def _one_file(platform: Platform, tmp_path: Path, name: str, rows: list[dict[str, Any]]) -> str:
    src = tmp_path / name
    src.mkdir()
    (src / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return _version(platform, src, name)


def test_per_split_versions_pick_the_file_named_after_the_split(platform: Platform, generated: str) -> None:
    recipe = _recipe(train=generated, validation=generated, test=generated, group_field="locale")
    splits = load_splits(platform, platform.context(), recipe)
    assert splits.sizes() == {"train": 40, "validation": 10, "test": 10}
    assert splits.versions == {"train": generated, "validation": generated, "test": generated}
    assert splits.files == {"train": "train.jsonl", "validation": "validation.jsonl", "test": "test.jsonl"}
    first = next(iter(make_examples(1, seed=3)))
    assert splits.train[0] == Example(first["source"], first["target"], first["locale"])


def test_train_only(platform: Platform, generated: str) -> None:
    splits = load_splits(platform, platform.context(), _recipe(train=generated))
    assert splits.sizes() == {"train": 40, "validation": 0, "test": 0}
    assert splits.versions == {"train": generated}
    assert all(e.group is None for e in splits.train)


def test_single_version_split_is_deterministic(platform: Platform, tmp_path: Path) -> None:
    rows = list(make_examples(100, seed=1))
    spec = _one_file(platform, tmp_path, "whole", rows)
    recipe = _recipe(dataset=spec, split={"train": 0.7, "validation": 0.2, "test": 0.1}, seed=5)
    a = load_splits(platform, platform.context(), recipe)
    b = load_splits(platform, platform.context(), recipe)
    assert a.sizes() == {"train": 70, "validation": 20, "test": 10}
    assert (a.train, a.validation, a.test) == (b.train, b.validation, b.test)
    assert a.versions == {"dataset": spec}
    assert a.files == {"dataset": "rows.jsonl"}
    # A partition of the rows, shuffled.
    every = sorted(e.source for e in [*a.train, *a.validation, *a.test])
    assert every == sorted(r["source"] for r in rows)
    assert [e.source for e in a.train] != [r["source"] for r in rows[:70]]
    other = load_splits(platform, platform.context(), _recipe(dataset=spec, seed=6))
    assert other.sizes() == {"train": 80, "validation": 10, "test": 10}  # default ratios 0.8/0.1/0.1
    assert other.train != a.train


def test_split_rounding_goes_to_train() -> None:
    rows = [Example(str(i), str(i)) for i in range(7)]
    data_section = _recipe(dataset="x@1", split={"train": 0.5, "validation": 0.25, "test": 0.25}).data
    train, validation, test = split_examples(rows, data_section)
    assert (len(train), len(validation), len(test)) == (5, 1, 1)
    assert split_examples(rows, data_section) == (train, validation, test)


def test_missing_field_names_it_and_the_columns(platform: Platform, generated: str) -> None:
    recipe = _recipe(train=generated, source_field="input")
    with pytest.raises(ValidationError) as info:
        load_splits(platform, platform.context(), recipe)
    msg = info.value.message
    assert "'input'" in msg and "source, target, locale, task" in msg and "train.jsonl" in msg


def test_null_and_non_string_values_are_counted(platform: Platform, tmp_path: Path) -> None:
    rows: list[dict[str, Any]] = [{"source": f"s{i}", "target": f"t{i}"} for i in range(10)]
    rows[2]["target"] = None
    rows[5]["target"] = 7
    rows[6]["source"] = ["x"]
    spec = _one_file(platform, tmp_path, "dirty", rows)
    with pytest.raises(ValidationError) as info:
        load_splits(platform, platform.context(), _recipe(train=spec))
    msg = info.value.message
    assert "2 of 10 rows have a null or non-string 'target' (rows 3, 6)" in msg
    assert "1 of 10 rows have a null or non-string 'source' (rows 7)" in msg


def test_bad_member_lists_the_candidates(platform: Platform, tmp_path: Path) -> None:
    src = tmp_path / "two"
    src.mkdir()
    for name in ("a.jsonl", "b.csv"):
        (src / name).write_text(
            '{"source": "x", "target": "y"}\n' if name.endswith("jsonl") else "source,target\n"
        )
    (src / "README.md").write_text("notes")
    spec = _version(platform, src, "two")
    with pytest.raises(UsageError, match=r"2 table files; choose one with data.file: a.jsonl, b.csv"):
        load_splits(platform, platform.context(), _recipe(train=spec))
    with pytest.raises(UsageError, match=r"'c.jsonl' is not a file .* a.jsonl, b.csv"):
        load_splits(platform, platform.context(), _recipe(train=spec, file="c.jsonl"))
    # data.format narrows the candidates to one; data.file picks one.
    assert load_splits(platform, platform.context(), _recipe(train=spec, format="jsonl")).files == {
        "train": "a.jsonl"
    }
    assert load_splits(platform, platform.context(), _recipe(train=spec, file="a.jsonl")).train == [
        Example("x", "y")
    ]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_csv_and_parquet(platform: Platform, tmp_path: Path, fmt: str) -> None:
    write_dataset(tmp_path / fmt, 30, seed=2, format=fmt, splits=(20, 5, 5))
    spec = _version(platform, tmp_path / fmt, f"gen-{fmt}")
    recipe = _recipe(train=spec, validation=spec, group_field="task")
    splits = load_splits(platform, platform.context(), recipe)
    assert splits.sizes() == {"train": 20, "validation": 5, "test": 0}
    assert splits.files["train"] == f"train.{fmt}"
    jsonl_dir = tmp_path / "jsonl"
    write_dataset(jsonl_dir, 30, seed=2, splits=(20, 5, 5))
    expected = [json.loads(line) for line in (jsonl_dir / "train.jsonl").read_text().splitlines()]
    assert splits.train == [Example(r["source"], r["target"], r["task"]) for r in expected]


def test_csv_keeps_text_as_text(platform: Platform, tmp_path: Path) -> None:
    src = tmp_path / "codes"
    src.mkdir()
    (src / "codes.csv").write_text('source,target\n007,"0.50"\n"a, b",NULL\n')
    spec = _version(platform, src, "codes")
    splits = load_splits(platform, platform.context(), _recipe(train=spec))
    assert splits.train == [Example("007", "0.50"), Example("a, b", "NULL")]


def test_a_deeply_nested_jsonl_line_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"  # was an "unexpected RecursionError"
    path.write_text('{"source": "x", "target": "y"}\n{"source": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    with pytest.raises(ValidationError, match=r"train\.jsonl: line 2 is nested too deeply"):
        read_examples(path, _recipe(train="x@1").data)


@pytest.mark.parametrize(
    ("name", "content", "where"),
    [
        ("train.jsonl", b'{"source": "a", "target": "b"}\n{"source": "caf\xe9", "target": "b"}\n', "line 2"),
        ("train.csv", b"source,target\ncaf\xe9,b\n", "not UTF-8"),
        ("train.csv", b"sou\xe9rce,target\na,b\n", "not UTF-8"),
    ],
)
def test_text_that_is_not_utf8_is_a_clear_error(
    tmp_path: Path, name: str, content: bytes, where: str
) -> None:
    path = tmp_path / name  # Latin-1 bytes were an "unexpected UnicodeDecodeError"
    path.write_bytes(content)
    with pytest.raises(ValidationError, match=rf"{name}: .*not UTF-8") as err:
        read_examples(path, _recipe(train="x@1").data)
    assert where in err.value.message


def test_a_utf8_byte_order_mark_is_read_as_such(tmp_path: Path) -> None:
    # Spreadsheet exports start with one: the CSV's first column was typed by inference (007 -> 7, refused as
    # "non-string") and a JSONL file's first line was "not valid JSON".
    (tmp_path / "t.csv").write_bytes(b"\xef\xbb\xbftarget,source\n007,x\n")
    (tmp_path / "t.jsonl").write_bytes(b'\xef\xbb\xbf{"source": "x", "target": "007"}\n')
    data_section = _recipe(train="x@1").data
    assert read_examples(tmp_path / "t.csv", data_section) == [Example("x", "007")]
    assert read_examples(tmp_path / "t.jsonl", data_section) == [Example("x", "007")]


def test_a_csv_column_named_twice_is_a_clear_error(tmp_path: Path) -> None:
    # It was an "unexpected KeyError" from pyarrow, also for a duplicate column the recipe does not read.
    (tmp_path / "t.csv").write_text("source,target,note,note\na,b,c,d\n")
    with pytest.raises(ValidationError, match=r"t\.csv: the column 'note' is named twice"):
        read_examples(tmp_path / "t.csv", _recipe(train="x@1").data)


def test_a_csv_header_field_past_the_csv_module_limit_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text('"' + "a" * 200_000 + '",target\nx,y\n')  # was "unexpected Error"
    with pytest.raises(ValidationError, match=r"t\.csv: not a readable CSV file"):
        read_examples(tmp_path / "t.csv", _recipe(train="x@1").data)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_empty_and_whitespace_only_texts_are_refused(tmp_path: Path, fmt: str) -> None:
    # Such a pair has nothing to learn: it trained towards end-of-sequence alone, silently.
    rows = [("s0", "t0"), ("s1", ""), ("  \t", "t2"), ("s3", "t3"), ("s4", " ")]
    path = tmp_path / f"rows.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps({"source": s, "target": t}) + "\n" for s, t in rows))
    else:
        path.write_text("source,target\n" + "".join(f"{s},{t}\n" for s, t in rows))
    with pytest.raises(ValidationError) as info:
        read_examples(path, _recipe(train="x@1").data)
    msg = info.value.message
    assert msg.startswith(f"rows.{fmt}: ")
    assert "2 of 5 rows have an empty or whitespace-only 'target' (rows 2, 5)" in msg
    assert "1 of 5 rows have an empty or whitespace-only 'source' (rows 3)" in msg


def test_what_an_older_run_trained_on_is_read_with_its_blank_texts(
    platform: Platform, tmp_path: Path
) -> None:
    """Monitoring reads a model's training split as a drift reference: a model trained before blank texts
    were refused must still have one, with the rows (and so the seeded split) its run had."""
    rows = [{"source": f"s{i}", "target": "" if i % 4 == 0 else f"t{i}"} for i in range(20)]
    recipe = _recipe(dataset=_one_file(platform, tmp_path, "older", rows))
    with pytest.raises(ValidationError, match="empty or whitespace-only 'target'"):
        load_splits(platform, platform.context(), recipe)
    splits = load_splits(platform, platform.context(), recipe, blank_ok=True)
    assert sum(splits.sizes().values()) == 20
    assert sum(1 for e in splits.train + splits.validation + splits.test if e.target == "") == 5
