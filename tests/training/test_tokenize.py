"""Step 2: the tokenizer and the checks before training."""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Any

import pytest

from modelyard.errors import UsageError, ValidationError
from modelyard.training import make_examples, parse_recipe
from modelyard.training._data import Example
from modelyard.training._tokenize import (
    build_tokenizer,
    check_tokenization,
    encode_examples,
    percentile,
    validate_tokenization,
)

pytest.importorskip("sentencepiece")
pytest.importorskip("transformers")


def _recipe(**tokenizer: Any) -> Any:
    return parse_recipe(
        {
            "data": {"train": "normalise@1"},
            "tokenizer": {"train": "sentencepiece", "vocab_size": 320, **tokenizer},
            "model": {"init": "scratch", "preset": "tiny"},
            "hyperparameters": {"lr": 1e-3, "max_steps": 10},
        }
    )


@pytest.fixture(scope="module")
def examples() -> list[Example]:
    return [Example(r["source"], r["target"], r["locale"]) for r in make_examples(500, seed=11)]


@pytest.fixture(scope="module")
def trained(examples: list[Example], tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    out = tmp_path_factory.mktemp("tok")
    return build_tokenizer(_recipe(), examples, out), out


def _normalised(text: str) -> str:
    """What a SentencePiece round trip gives back: NFKC, whitespace runs collapsed, ends stripped."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


def test_trained_tokenizer_has_t5_ids_and_reloads(trained: tuple[Any, Path], examples: list[Example]) -> None:
    from transformers import AutoTokenizer

    tok, out = trained
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert len(tok) == 320
    again = AutoTokenizer.from_pretrained(out)
    assert len(again) == 320
    for e in examples[:50]:
        ids = again(e.source)["input_ids"]
        assert ids == tok(e.source)["input_ids"] and ids[-1] == 1
        assert again.decode(ids, skip_special_tokens=True) == _normalised(e.source)
    assert again.decode(again("  two   spaces ")["input_ids"], skip_special_tokens=True) == "two spaces"


def test_stats_on_the_training_data_pass(trained: tuple[Any, Path], examples: list[Example]) -> None:
    tok, _ = trained
    recipe = _recipe()
    stats = validate_tokenization(tok, examples, recipe)
    assert stats.examples == 500 and stats.unk_rate == 0.0
    assert stats.source.truncated == 0 and stats.source.p50 <= stats.source.p90 <= stats.source.max
    check_tokenization(stats, recipe)


def test_unknown_characters_raise_the_unk_rate(trained: tuple[Any, Path]) -> None:
    tok, _ = trained
    recipe = _recipe(max_unk_rate=0.05)
    stats = validate_tokenization(tok, [Example("Привет мир 漢字", "2024-01-01")], recipe)
    assert stats.unk_tokens > 0 and stats.unk_rate > 0.05
    with pytest.raises(ValidationError) as info:
        check_tokenization(stats, recipe)
    msg = info.value.message
    assert f"unknown-token rate {stats.unk_rate:.2%}" in msg and "max_unk_rate 5.00%" in msg
    assert "vocab_size" in msg


class _Toy:
    """A hand-made tokenizer: one id per character (a=5, b=6, ...), '?' is unknown (2), eos 1 appended."""

    unk_token_id = 2
    eos_token_id = 1
    all_special_ids = [0, 1, 2]

    def __call__(self, texts: list[str], **_: Any) -> dict[str, list[list[int]]]:
        return {"input_ids": [[2 if c == "?" else ord(c) - 92 for c in t] + [1] for t in texts]}


def test_stats_by_hand() -> None:
    examples = [Example("ab", "a"), Example("abcd", "a?"), Example("a?c", "ab"), Example("abcdef", "b")]
    recipe = _recipe(max_source_length=4, max_target_length=2)
    stats = validate_tokenization(_Toy(), examples, recipe)
    # sources with eos: 3, 5, 4, 7; targets with eos: 2, 3, 3, 2
    assert (stats.source.p50, stats.source.p90, stats.source.p99, stats.source.max) == (4, 7, 7, 7)
    assert (stats.source.truncated, stats.source.truncated_share) == (2, 0.5)
    assert (stats.target.p50, stats.target.max, stats.target.truncated) == (2, 3, 2)
    # ids without eos: sources 2+4+3+6, targets 1+2+2+1 = 21 tokens, of which 2 are unk ("?")
    assert (stats.tokens, stats.unk_tokens) == (21, 2)
    assert stats.unk_rate == pytest.approx(2 / 21)
    encoded = encode_examples(_Toy(), examples, recipe)
    assert encoded["input_ids"] == [[5, 6, 1], [5, 6, 7, 1], [5, 2, 7, 1], [5, 6, 7, 1]]
    assert encoded["labels"] == [[5, 1], [5, 1], [5, 1], [6, 1]]


def test_percentile_nearest_rank() -> None:
    assert percentile([], 50) == 0
    assert percentile([1, 2, 3, 4], 50) == 2
    assert percentile(list(range(1, 101)), 90) == 90
    assert percentile([7], 99) == 7


def test_truncation_refusal_has_the_numbers(trained: tuple[Any, Path], examples: list[Example]) -> None:
    tok, _ = trained
    recipe = _recipe(max_source_length=4, max_truncated_share=0.1)
    stats = validate_tokenization(tok, examples, recipe)
    with pytest.raises(ValidationError) as info:
        check_tokenization(stats, recipe)
    msg = info.value.message
    assert f"{stats.source.truncated} of 500" in msg and "tokenizer.max_source_length 4 tokens" in msg
    assert "max_truncated_share 10.00%" in msg and f"p99 {stats.source.p99}" in msg
    assert "raise tokenizer.max_source_length" in msg
    assert "target" not in msg.split("; ", 1)[0]
    assert all(len(ids) <= 4 and ids[-1] == 1 for ids in encode_examples(tok, examples, recipe)["input_ids"])


def test_too_large_a_vocabulary_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"lower tokenizer\.vocab_size"):
        build_tokenizer(_recipe(vocab_size=5000), [Example("a b c", "d")], tmp_path / "tok")


def test_from_model_loads_a_local_directory(trained: tuple[Any, Path]) -> None:
    _, out = trained
    recipe = parse_recipe(
        {
            "data": {"train": "normalise@1"},
            "model": {"pretrained": str(out)},
            "hyperparameters": {"lr": 1e-3, "max_steps": 10},
        }
    )
    tok = build_tokenizer(recipe, [], out / "unused")
    assert len(tok) == 320 and not (out / "unused").exists()


def test_from_model_finds_a_local_model_directory_under_the_home_as_the_model_does(
    trained: tuple[Any, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The model loader expands "~"; the tokenizer took "~/models/t5" for a hub id and failed.
    import shutil

    _, saved = trained
    shutil.copytree(saved, tmp_path / "models" / "t5")
    monkeypatch.setenv("HOME", str(tmp_path))
    recipe = parse_recipe(
        {
            "data": {"train": "normalise@1"},
            "tokenizer": {"from": "model"},
            "model": {"pretrained": "~/models/t5"},
            "hyperparameters": {"lr": 1e-3, "max_steps": 10},
        }
    )
    tok = build_tokenizer(recipe, [], tmp_path / "unused")
    assert len(tok) == 320
