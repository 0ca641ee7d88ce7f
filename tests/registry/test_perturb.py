"""Robustness perturbations: seeded, each a plausible variant of the same request."""

from __future__ import annotations

import random
import re

import pytest

from modelyard.errors import UsageError
from modelyard.evaluation import PERTURBATIONS, perturb
from modelyard.evaluation._perturb import casing, numbers, punctuation, typos, whitespace
from modelyard.training import make_examples

TEXTS = [r["source"] for r in make_examples(200, seed=5)]


def test_the_same_seed_gives_the_same_variants_and_another_seed_others() -> None:
    kinds = list(PERTURBATIONS)
    assert perturb(TEXTS, kinds, 1) == perturb(TEXTS, kinds, 1)
    assert perturb(TEXTS, kinds, 1) != perturb(TEXTS, kinds, 2)
    assert [k for k, _ in perturb(TEXTS[:10], kinds, 0)] == (kinds * 2)[:10]


def test_most_texts_change_under_every_kind() -> None:
    for name, fn in PERTURBATIONS.items():
        changed = sum(fn(t, random.Random(i)) != t for i, t in enumerate(TEXTS))
        assert changed >= (0.2 if name == "numbers" else 0.5) * len(TEXTS), (name, changed)


def test_each_kind_keeps_the_request_recognisable() -> None:
    for i, text in enumerate(TEXTS):
        rng = random.Random(i)
        assert re.sub(r"\s", "", whitespace(text, rng)) == re.sub(r"\s", "", text)  # only spacing moves
        assert casing(text, rng).casefold() == text.casefold()
        t = typos(text, rng)
        assert abs(len(t) - len(text)) <= 1 and t.split()[0][0] == text.split()[0][0]
        assert re.sub(r"[,.!?]", "", punctuation(text, rng)) == re.sub(r"[,.!?]", "", text)
        # grouping and decimal commas move no digit; a leading zero adds one "0"
        before, after = re.sub(r"\D", "", text), re.sub(r"\D", "", numbers(text, rng))
        assert after.replace("0", "") == before.replace("0", "") and len(after) - len(before) in (0, 1)


def test_number_formats() -> None:
    rng = random.Random(0)
    assert numbers("pay 1,234 now", rng) == "pay 1234 now"
    assert numbers("on 7 May", rng) == "on 07 May"
    assert numbers("total 12.50", rng) == "total 12,50"
    assert {numbers("total 1234.50", random.Random(i)) for i in range(20)} == {
        "total 1,234.50",
        "total 1234,50",
    }
    for fixed in ("in 2013", "Boston MA 02149", "Bergstraße 28, 04439 Leipzig", "on 02.03.2013", "id 0.5"):
        assert numbers(fixed, rng) == fixed
    # postcodes and the groups of an amount written with spaces are left alone, whatever the seed
    for fixed in ("Bristol BS1 9UP", "London SW1 2AA", "4 970,45 GBP", "ref A7"):
        assert {numbers(fixed, random.Random(i)) for i in range(20)} == {fixed}
    # a number that has no other spelling is never the one picked while another has
    assert {numbers("pay 1500 on 7 May", random.Random(i)) for i in range(20)} == {"pay 1500 on 07 May"}


def test_whitespace_changes_spacing_a_tokenizer_keeps() -> None:
    # SentencePiece (T5) collapses runs of spaces: extra spaces between words never reach the model
    for i, text in enumerate(TEXTS):
        varied = whitespace(text, random.Random(i))
        assert varied != text and " ".join(varied.split()) != " ".join(text.split())


def test_unknown_or_no_kinds_are_refused() -> None:
    with pytest.raises(UsageError, match="unknown perturbation 'emoji'"):
        perturb(TEXTS, ["typos", "emoji"], 0)
    with pytest.raises(UsageError, match="at least one"):
        perturb(TEXTS, [], 0)
