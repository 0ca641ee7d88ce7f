"""Step 9: metric values against hand-checked cases, slices, generation order and batch independence, the
report. CPU only, no network: a seeded tiny T5 and a locally trained tokenizer."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from modelyard.errors import UsageError
from modelyard.training import EVAL_METRICS, EvaluationSection, make_examples, parse_recipe
from modelyard.training._data import Example
from modelyard.training._eval import (
    MISSING_GROUP,
    EvalReport,
    Scores,
    evaluate,
    generate,
    normalize_text,
    score,
)

pytest.importorskip("sacrebleu")
pytest.importorskip("rouge_score")

ALL = list(EVAL_METRICS)


# -- metrics ------------------------------------------------------------------------------------------------


def test_identical_texts_score_perfectly() -> None:
    refs = ["2024-03-05", "30.66 EUR", "Maple Avenue | 2474 | 80277 | Denver | US", "x"]
    s = score(refs, refs, ALL)
    assert s.n == 4 and list(s.overall) == ALL
    assert s.overall["bleu"] == pytest.approx(1.0)
    for m in ("rouge1", "rouge2", "rougeL", "exact_match"):
        assert s.overall[m] == 1.0, m
    assert s.overall["gen_len"] == pytest.approx((1 + 2 + 10 + 1) / 4)  # words: '|' is a word here
    assert s.slices == {} and s.slice_sizes == {}


def test_rouge_partial_overlap_by_hand() -> None:
    # prediction "the cat sat" vs reference "the cat sat on the mat":
    # rouge1 P=3/3 R=3/6 F=2/3; rouge2 P=2/2 R=2/5 F=4/7; rougeL LCS=3, F=2/3
    s = score(["the cat sat"], ["the cat sat on the mat"], ["rouge1", "rouge2", "rougeL"])
    assert s.overall == pytest.approx({"rouge1": 2 / 3, "rouge2": 4 / 7, "rougeL": 2 / 3})
    # no stemming: "cats" is not "cat"; lower case and punctuation separate tokens
    assert score(["cats"], ["cat"], ["rouge1"]).overall["rouge1"] == 0.0
    assert score(["Date: 2024-03-05"], ["date 2024 03 05"], ["rouge1"]).overall["rouge1"] == 1.0


def test_rouge_keeps_non_ascii_letters() -> None:
    # rouge-score's default tokenizer would turn both into "m rz" + digits; here März is one token
    s = score(["5. März 2024"], ["5. März 2023"], ["rouge1", "rouge2"])
    assert s.overall == pytest.approx({"rouge1": 2 / 3, "rouge2": 1 / 2})
    assert score(["Straße"], ["Strasse"], ["rouge1"]).overall["rouge1"] == 0.0
    assert score(["東京"], ["東京"], ["rouge1"]).overall["rouge1"] == 1.0


def test_bleu_by_hand() -> None:
    # one differing last token: precisions 5/6, 4/5, 3/4, 2/3, no brevity penalty
    s = score(["a b c d e f"], ["a b c d e g"], ["bleu"])
    assert s.overall["bleu"] == pytest.approx((5 / 6 * 4 / 5 * 3 / 4 * 2 / 3) ** 0.25)
    # a correct but short hypothesis: brevity penalty exp(1 - 8/4)
    s = score(["a b c d"], ["a b c d e f g h"], ["bleu"])
    assert s.overall["bleu"] == pytest.approx(math.exp(-1))
    # corpus-level: n-gram counts are pooled over sentences, not averaged
    pooled = score(["a b c d e f", "x y z w"], ["a b c d e g", "x y z w"], ["bleu"]).overall["bleu"]
    assert pooled == pytest.approx((9 / 10 * 7 / 8 * 5 / 6 * 3 / 4) ** 0.25)
    # short outputs (no 4-grams in the whole corpus) are not 0 with effective order
    assert score(["2024 05"], ["2024 05"], ["bleu"]).overall["bleu"] == pytest.approx(1.0)


def test_exact_match_after_whitespace_and_nfkc_normalisation() -> None:
    preds = ["  2024-03-05 ", "30.66\tEUR", "30.66 eur", "\uff25\uff35\uff32 5"]
    refs = ["2024-03-05", "30.66  EUR", "30.66 EUR", "EUR 5"]
    em = score(preds, refs, ["exact_match"])
    assert em.overall["exact_match"] == 3 / 4  # case is kept: "eur" != "EUR"; full-width folds (NFKC)
    assert score(["  a \n b "], ["a b"], ["exact_match"]).overall["exact_match"] == 1.0
    assert normalize_text(" a\u00a0 b\n") == "a b"


def test_empty_predictions() -> None:
    s = score(["", ""], ["2024-03-05", "30.66 EUR"], ALL)
    assert s.overall == {m: 0.0 for m in ALL}
    both = score([""], ["  "], ALL)
    assert both.overall == {m: 1.0 if m != "gen_len" else 0.0 for m in ALL}


def test_gen_len_is_mean_words_of_the_prediction() -> None:
    s = score(["one", "one two three", ""], ["x", "x", "x"], ["gen_len"])
    assert s.overall == {"gen_len": pytest.approx(4 / 3)}


def test_slices_score_each_group_on_its_own_rows() -> None:
    preds = ["a b c d", "a b c d", "x", "q"]
    refs = ["a b c d", "a b c e", "x", "y"]
    s = score(preds, refs, ["exact_match", "rouge1"], groups=["de-DE", "de-DE", "fr-FR", None])
    assert s.slice_sizes == {MISSING_GROUP: 1, "de-DE": 2, "fr-FR": 1}
    assert s.slices["de-DE"] == pytest.approx({"exact_match": 0.5, "rouge1": (1 + 0.75) / 2})
    assert s.slices["fr-FR"] == {"exact_match": 1.0, "rouge1": 1.0}
    assert s.slices[MISSING_GROUP] == {"exact_match": 0.0, "rouge1": 0.0}
    assert s.overall["exact_match"] == 0.5
    flat = s.flat("val/")
    assert flat["val/exact_match"] == 0.5 and flat["val/slice/de-DE/rouge1"] == pytest.approx(0.875)
    assert flat["val/slice/_missing_/exact_match"] == 0.0  # key-safe group name
    assert Scores.from_dict(json.loads(json.dumps(s.to_dict()))) == s


def test_every_slice_gets_its_own_valid_metric_key() -> None:
    # Names were cut to the characters a metric key allows: 日本 and 中国 (or a/b and a_b) logged to one key,
    # the last overwriting the others, and a group named ".." made the final log_metrics of a run fail.
    from modelyard.tracking._store import check_key

    groups = ["日本", "中国", "a/b", "a_b", "..", "x" * 120, "x" * 120 + "y", "de-DE", None]
    s = score(["a"] * len(groups), ["a"] * len(groups), ["exact_match"], groups=groups)
    keys = [k for k in s.flat() if k.startswith("slice/")]
    assert len(keys) == len(groups)
    for key in keys:
        check_key(key, "metric key")
    assert {"slice/de-DE/exact_match", "slice/a_b/exact_match", "slice/_missing_/exact_match"} <= set(keys)
    alone = score(["a"], ["a"], ["exact_match"], groups=["日本"]).flat()
    assert set(alone) - {"exact_match"} <= set(keys)  # a group's key does not depend on the other groups


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(
        UsageError, match=r"unknown metric 'blue' \(did you mean 'bleu'\?\); choose from bleu"
    ):
        score(["a"], ["a"], ["blue"])
    with pytest.raises(UsageError, match="unknown metric 'meteor'"):
        score(["a"], ["a"], ["bleu", "meteor"])
    with pytest.raises(UsageError, match="no metrics"):
        score(["a"], ["a"], [])
    with pytest.raises(UsageError, match="2 predictions but 1 references"):
        score(["a", "b"], ["a"], ALL)
    with pytest.raises(UsageError, match="nothing to score"):
        score([], [], ALL)
    with pytest.raises(UsageError, match="1 group values but 2 predictions"):
        score(["a", "b"], ["a", "b"], ALL, groups=["g"])
    with pytest.raises(UsageError, match="reference 0 is NoneType"):
        score(["a"], [None], ALL)  # type: ignore[list-item]
    assert list(score(["a"], ["a"], ["rougeL", "bleu", "rougeL"]).overall) == ["rougeL", "bleu"]


# -- generation ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def examples() -> list[Example]:
    return [Example(r["source"], r["target"], r["locale"]) for r in make_examples(200, seed=1)]


@pytest.fixture(scope="module")
def tokenizer(examples: list[Example], tmp_path_factory: pytest.TempPathFactory) -> Any:
    pytest.importorskip("sentencepiece")
    pytest.importorskip("transformers")
    from modelyard.training._tokenize import build_tokenizer

    recipe = parse_recipe(
        {
            "data": {"train": "n@1"},
            "tokenizer": {"train": "sentencepiece", "vocab_size": 200},
            "model": {"init": "scratch", "preset": "tiny"},
            "hyperparameters": {"lr": 1e-3, "max_steps": 10},
        }
    )
    return build_tokenizer(recipe, examples, tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def model(tokenizer: Any) -> Any:
    """A seeded tiny T5 that says something input-dependent without training: an untrained T5 with tied
    embeddings repeats its start token (pad, so nothing), so the pad row is zeroed and the others shrunk."""
    torch = pytest.importorskip("torch")
    from modelyard.training import build_model

    recipe = parse_recipe(
        {
            "data": {"train": "n@1"},
            "tokenizer": {"train": "sentencepiece", "vocab_size": 200},
            "model": {"init": "scratch", "preset": "tiny"},
            "hyperparameters": {"lr": 1e-3, "max_steps": 10, "seed": 4},
        }
    )
    m = build_model(recipe, vocab_size=len(tokenizer))
    with torch.no_grad():
        m.shared.weight[0] = 0
        m.shared.weight[2:] *= 0.3
    return m


def test_generate_keeps_the_order_and_does_not_depend_on_the_batch_size(
    model: Any, tokenizer: Any, examples: list[Example]
) -> None:
    sources = [e.source for e in examples[:40]]
    whole = generate(model, tokenizer, sources, max_new_tokens=10, batch_size=64)
    assert len(whole) == 40 and len(set(whole)) >= 10  # the fixture gives input-dependent outputs
    assert generate(model, tokenizer, sources, max_new_tokens=10, batch_size=3) == whole
    one_by_one = [generate(model, tokenizer, [s], max_new_tokens=10)[0] for s in sources[:8]]
    assert one_by_one == whole[:8]
    reversed_out = generate(model, tokenizer, sources[::-1], max_new_tokens=10, batch_size=7)
    assert reversed_out == whole[::-1]
    assert generate(model, tokenizer, [], max_new_tokens=10) == []


def test_generate_restores_the_mode_and_records_no_gradients(model: Any, tokenizer: Any) -> None:
    model.train()
    model.decoder.eval()  # a mixed state comes back exactly
    generate(model, tokenizer, ["normalise date (en-US): 7/12/2003"], max_new_tokens=4)
    assert model.training and model.encoder.training and not model.decoder.training
    model.eval()
    generate(model, tokenizer, ["x"], max_new_tokens=4)
    assert not model.training
    assert all(p.grad is None for p in model.parameters())


def test_beam_search_and_limits(model: Any, tokenizer: Any, examples: list[Example]) -> None:
    sources = [e.source for e in examples[:6]]
    beams = generate(model, tokenizer, sources, num_beams=3, max_new_tokens=6, batch_size=4)
    assert len(beams) == 6 and all(isinstance(b, str) for b in beams)
    assert beams == generate(model, tokenizer, sources, num_beams=3, max_new_tokens=6, batch_size=1)
    short = generate(model, tokenizer, sources, max_new_tokens=1)
    longer = generate(model, tokenizer, sources, max_new_tokens=6)
    assert all(b.startswith(a) for a, b in zip(short, longer, strict=True))
    assert any(len(a) < len(b) for a, b in zip(short, longer, strict=True))
    for bad in (
        {"num_beams": 0},
        {"batch_size": 0},
        {"max_new_tokens": -1},
        {"max_source_length": 1.5},
        {"max_source_length": 10**30},  # an OverflowError in the tokenizer before
        {"num_beams": 10**9},
    ):
        with pytest.raises(UsageError, match="must be a whole number from 1 to"):
            generate(model, tokenizer, sources, **bad)


def test_evaluate_report(model: Any, tokenizer: Any, examples: list[Example]) -> None:
    section = EvaluationSection(metrics=ALL, max_new_tokens=8, batch_size=16)
    items = examples[:30]
    report = evaluate(
        model, tokenizer, items, section, max_source_length=64, samples=3, info={"group_field": "locale"}
    )
    assert report.n == 30 and report.metrics == ALL
    assert report.decoding == {
        "decoding": "greedy",
        "num_beams": 1,
        "max_new_tokens": 8,
        "batch_size": 16,
        "max_source_length": 64,
    }
    locales = {e.group for e in items}
    assert set(report.slices) == locales and sum(report.model.slice_sizes.values()) == 30
    # the copy baseline is the same scoring of prediction = source
    assert report.baseline == score(
        [e.source for e in items], [e.target for e in items], ALL, groups=[e.group for e in items]
    )
    assert [s["source"] for s in report.samples] == [e.source for e in items[:3]]
    assert "eff:yes" in report.bleu_signature and "tok:13a" in report.bleu_signature
    logged = report.metrics_to_log()
    assert logged["baseline/rougeL"] == report.baseline.overall["rougeL"]
    assert {f"slice/{g}/bleu" for g in locales} <= set(logged)
    data = json.loads(report.to_json())
    assert data["format"] == "modelyard.eval/1" and data["n"] == 30
    assert EvalReport.from_dict(data).to_dict() == data
    md = report.to_markdown()
    assert "| metric | model | copy baseline | difference |" in md and "## Slices (locale)" in md
    assert md.count("## Samples") == 1 and md.count("\n| normalise ") == 3
    addresses = [e for e in items if "|" in e.target][:1]
    cell = evaluate(model, tokenizer, addresses, section, max_source_length=64).to_markdown()
    assert addresses[0].target.replace("|", "\\|") in cell  # '|' escaped inside table cells
    no_base = evaluate(model, tokenizer, items[:4], section, max_source_length=64, baseline=False)
    assert no_base.baseline is None and no_base.slices  # groups present
    plain = [Example(e.source, e.target) for e in items[:4]]
    assert evaluate(model, tokenizer, plain, section, max_source_length=64).slices == {}
    with pytest.raises(UsageError, match="no examples"):
        evaluate(model, tokenizer, [], section, max_source_length=64)


def test_a_saved_and_reloaded_model_generates_the_same(
    model: Any, tokenizer: Any, examples: list[Example], tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    from modelyard.training import load_model, save_model

    save_model(model, tokenizer, tmp_path / "m")
    again = load_model(tmp_path / "m")
    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    sources = [e.source for e in examples[:10]]
    assert generate(again, tok, sources, max_new_tokens=8) == generate(
        model, tokenizer, sources, max_new_tokens=8
    )


def test_hostile_text_in_a_report_stays_text_in_markdown() -> None:
    """A report quotes dataset rows and the model's output: a row or a generation holding HTML, a link, an
    image or a bare URL was written into report.md as Markdown that a viewer renders (a tracking pixel,
    a javascript: link). It renders as the text it is."""
    from markdown_it import MarkdownIt

    from modelyard.training._eval import REPORT_FORMAT, EvalReport

    hostile = [
        '<img src="https://t.example/p.png"> & <script>alert(1)</script>',
        "[click](javascript:alert(1)) ![pixel](https://t.example/p.png)",
        "see https://evil.example/x, www.evil.example or ops@evil.example",
        "*bold* `code` ~~gone~~ a | b",
    ]
    overall = {"rougeL": 0.5}
    report = EvalReport.from_dict(
        {
            "format": REPORT_FORMAT,
            "n": len(hostile),
            "metrics": ["rougeL"],
            "decoding": {"decoding": "greedy"},
            "info": {"dataset": hostile[2], "group_field": hostile[0]},
            "overall": overall,
            "slices": {h: {"n": 1, "metrics": {"rougeL": 0.5}} for h in hostile},
            "baseline": None,
            "samples": [{"source": h, "target": h, "prediction": h} for h in hostile],
        }
    )
    rendered = MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(report.to_markdown())
    for tag in ("<a ", "<img", "<script", "<em>", "<strong>", "<code>", "<s>"):
        assert tag not in rendered, tag
    for h in hostile:  # each shown as typed (HTML-escaped by the renderer), in every cell
        shown = h.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
        assert rendered.count(f"<td>{shown}</td>") >= 3, h
    assert not re.search(r"(?<!\\)://|(?i:www)\.|(?<!\\)@(?=\S*\.)", report.to_markdown())
