"""Step 2 of a recipe: the tokenizer, and the checks run on it before training starts.

``build_tokenizer`` returns the pretrained model's AutoTokenizer (``tokenizer: {from: model}``) or trains a
SentencePiece model on the training split (``tokenizer: {train: sentencepiece}``) with T5's special ids
(pad 0, eos 1, unk 2, no bos) and saves it as a T5 tokenizer in ``out_dir`` (reloadable with
``AutoTokenizer.from_pretrained(out_dir)``). ``validate_tokenization`` measures the unknown-token rate, length
percentiles and the share truncated; ``check_tokenization`` refuses to train past the recipe's thresholds.

A trained tokenizer normalises text like SentencePiece does (NFKC, runs of whitespace collapsed to one space,
leading and trailing whitespace dropped), so ``decode(encode(text))`` equals ``" ".join(text.split())`` after
NFKC, not always ``text`` itself. Characters absent from the training corpus become ``<unk>``.

transformers and sentencepiece are imported inside the functions; they are untyped, so tokenizers are ``Any``.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelyard.errors import UsageError, ValidationError

if TYPE_CHECKING:
    from modelyard.training._data import Example
    from modelyard.training._recipe import Recipe

#: T5's special ids, which a trained SentencePiece model reproduces.
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
PERCENTILES = (50, 90, 99)


def build_tokenizer(
    recipe: Recipe, train_examples: Sequence[Example], out_dir: str | Path, *, extra_ids: int = 0
) -> Any:
    """The recipe's tokenizer. ``from: model`` loads ``AutoTokenizer.from_pretrained(model.pretrained)``
    (a local path, or a hub id that transformers may fetch or find in its cache) and saves nothing;
    ``train: sentencepiece`` trains on the sources and targets of ``train_examples`` and saves the T5
    tokenizer in ``out_dir``. ``extra_ids`` adds T5 sentinel tokens ``<extra_id_N>`` after the trained
    vocabulary."""
    tok = recipe.tokenizer
    if tok.from_ == "model":
        from transformers import AutoTokenizer

        pretrained = recipe.model.pretrained
        if pretrained is None:  # the recipe validator already refuses this
            raise UsageError("tokenizer from: model needs model.pretrained")
        # The same place the model is loaded from: a local directory ("~" expanded) before a hub id.
        local = Path(pretrained).expanduser()
        try:
            if local.is_dir():
                return AutoTokenizer.from_pretrained(
                    str(local), revision=recipe.model.revision, local_files_only=True
                )
            return AutoTokenizer.from_pretrained(pretrained, revision=recipe.model.revision)
        except (OSError, ValueError) as exc:
            raise UsageError(
                f"cannot load the tokenizer of {pretrained!r} ({exc}); give a local model directory, "
                f"or train one with tokenizer: {{train: sentencepiece, vocab_size: N}}"
            ) from None
    assert tok.vocab_size is not None
    return train_sentencepiece(
        [t for e in train_examples for t in (e.source, e.target)],
        out_dir,
        vocab_size=tok.vocab_size,
        model_type=tok.model_type or "unigram",
        character_coverage=tok.character_coverage if tok.character_coverage is not None else 1.0,
        extra_ids=extra_ids,
    )


def train_sentencepiece(
    texts: Sequence[str],
    out_dir: str | Path,
    *,
    vocab_size: int,
    model_type: str = "unigram",
    character_coverage: float = 1.0,
    extra_ids: int = 0,
) -> Any:
    """Train a SentencePiece model on ``texts`` and save it as a T5 tokenizer in ``out_dir``.

    ``vocab_size`` counts pad, eos and unk. A corpus too small for the vocabulary is a :class:`UsageError`
    naming the largest size SentencePiece allows. Training uses one thread and the corpus unshuffled, so the
    same texts give the same tokenizer."""
    import sentencepiece as spm
    import transformers

    lines = [" ".join(t.split()) for t in texts]
    lines = [t for t in lines if t]
    if not lines:
        raise UsageError("cannot train a tokenizer: the training split has no text")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="yard-spm-") as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
        stage = Path(tmp) / "stage"
        stage.mkdir()
        try:
            spm.SentencePieceTrainer.train(
                input=str(corpus),
                model_prefix=str(stage / "spiece"),
                vocab_size=vocab_size,
                model_type=model_type,
                character_coverage=character_coverage,
                pad_id=PAD_ID,
                eos_id=EOS_ID,
                unk_id=UNK_ID,
                bos_id=-1,
                pad_piece="<pad>",
                eos_piece="</s>",
                unk_piece="<unk>",
                input_sentence_size=0,
                shuffle_input_sentence=False,
                num_threads=1,
                minloglevel=2,
            )
        except RuntimeError as exc:
            hint = (
                "; lower tokenizer.vocab_size or give more training data"
                if "vocab" in str(exc).lower()
                else ""
            )
            raise UsageError(
                f"SentencePiece could not train a vocabulary of {vocab_size} on {len(lines)} lines "
                f"({exc}){hint}"
            ) from None
        (stage / "spiece.vocab").unlink(missing_ok=True)
        cls = getattr(transformers, "T5TokenizerFast", None) or transformers.T5Tokenizer
        tokenizer = cls.from_pretrained(str(stage), extra_ids=extra_ids)
        tokenizer.save_pretrained(str(out))
        if not (out / "spiece.model").exists():  # keep the SentencePiece model itself with the tokenizer
            shutil.copyfile(stage / "spiece.model", out / "spiece.model")
    return tokenizer


# -- validation --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LengthStats:
    """Token lengths (with the eos token) of one side: nearest-rank percentiles and the maximum."""

    p50: int
    p90: int
    p99: int
    max: int
    limit: int
    truncated: int
    truncated_share: float


@dataclass(frozen=True, slots=True)
class TokenStats:
    examples: int
    tokens: int
    unk_tokens: int
    unk_rate: float
    source: LengthStats
    target: LengthStats

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def metrics(self) -> dict[str, float]:
        """Flat ``tokenizer.*`` numbers for logging to a run."""
        out: dict[str, float] = {"tokenizer.unk_rate": self.unk_rate}
        for side in ("source", "target"):
            s: LengthStats = getattr(self, side)
            out.update(
                {
                    f"tokenizer.{side}_len_p50": float(s.p50),
                    f"tokenizer.{side}_len_p90": float(s.p90),
                    f"tokenizer.{side}_len_p99": float(s.p99),
                    f"tokenizer.{side}_len_max": float(s.max),
                    f"tokenizer.{side}_truncated_share": s.truncated_share,
                }
            )
        return out


def percentile(sorted_values: Sequence[int], p: float) -> int:
    """Nearest-rank percentile of an ascending sequence (0 for an empty one): the smallest value with at
    least ``p`` percent of the values at or below it."""
    if not sorted_values:
        return 0
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return int(sorted_values[min(rank, len(sorted_values)) - 1])


def _lengths(lengths: list[int], limit: int) -> LengthStats:
    ordered = sorted(lengths)
    truncated = sum(1 for n in lengths if n > limit)
    p50, p90, p99 = (percentile(ordered, p) for p in PERCENTILES)
    return LengthStats(
        p50=p50,
        p90=p90,
        p99=p99,
        max=ordered[-1] if ordered else 0,
        limit=limit,
        truncated=truncated,
        truncated_share=truncated / len(lengths) if lengths else 0.0,
    )


def _encode_all(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    ids: list[list[int]] = tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]
    return ids


def validate_tokenization(tokenizer: Any, examples: Sequence[Example], recipe: Recipe) -> TokenStats:
    """Unknown-token rate and length statistics of ``examples`` under ``tokenizer``.

    Lengths count every id the model sees, the eos token included. The unknown-token rate is the share of
    ``unk_token_id`` among the ids of sources and targets with special tokens left out (a tokenizer without an
    unk token has rate 0). An example is truncated on a side when its length exceeds max_source_length or
    max_target_length."""
    sources = _encode_all(tokenizer, [e.source for e in examples])
    targets = _encode_all(tokenizer, [e.target for e in examples])
    unk = tokenizer.unk_token_id
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    special.discard(unk)
    tokens = unks = 0
    for ids in (*sources, *targets):
        for i in ids:
            if i in special:
                continue
            tokens += 1
            unks += i == unk
    cfg = recipe.tokenizer
    return TokenStats(
        examples=len(examples),
        tokens=tokens,
        unk_tokens=unks,
        unk_rate=unks / tokens if tokens else 0.0,
        source=_lengths([len(x) for x in sources], cfg.max_source_length),
        target=_lengths([len(x) for x in targets], cfg.max_target_length),
    )


def check_tokenization(stats: TokenStats, recipe: Recipe) -> None:
    """Refuse to train when the unknown-token rate or a truncated share passes the recipe's thresholds:
    one :class:`ValidationError` listing every problem with its numbers, its threshold and a hint."""
    cfg = recipe.tokenizer
    problems: list[str] = []
    if stats.unk_rate > cfg.max_unk_rate:
        problems.append(
            f"unknown-token rate {stats.unk_rate:.2%} ({stats.unk_tokens} of {stats.tokens} tokens) exceeds "
            f"tokenizer.max_unk_rate {cfg.max_unk_rate:.2%}; enlarge tokenizer.vocab_size, set "
            f"character_coverage to 1.0, or use a tokenizer that covers this text"
        )
    for side, key in (("source", "max_source_length"), ("target", "max_target_length")):
        s: LengthStats = getattr(stats, side)
        if s.truncated_share > cfg.max_truncated_share:
            problems.append(
                f"{s.truncated_share:.2%} of {side}s ({s.truncated} of {stats.examples}) are longer than "
                f"tokenizer.{key} {s.limit} tokens (p50 {s.p50}, p90 {s.p90}, p99 {s.p99}, max {s.max}), "
                f"over tokenizer.max_truncated_share {cfg.max_truncated_share:.2%}; raise tokenizer.{key} "
                f"(to at least {s.p99} for 99%) or enlarge tokenizer.vocab_size"
            )
    if problems:
        raise ValidationError(
            "tokenization check failed, training not started: " + "; ".join(problems),
            problems=problems,
            stats=stats.as_dict(),
        )


def encode_examples(
    tokenizer: Any, examples: Sequence[Example], recipe: Recipe
) -> dict[str, list[list[int]]]:
    """``{"input_ids": [...], "labels": [...]}``: the ids of every source and target with the eos token,
    truncated to max_source_length / max_target_length (the eos token is kept as the last id). No padding:
    the collator pads and masks labels with -100. A row that ended with eos still ends with eos."""
    cfg = recipe.tokenizer
    eos = tokenizer.eos_token_id
    sources = _encode_all(tokenizer, [e.source for e in examples])
    targets = _encode_all(tokenizer, [e.target for e in examples])
    return {
        "input_ids": _truncate(sources, cfg.max_source_length, eos),
        "labels": _truncate(targets, cfg.max_target_length, eos),
    }


def _truncate(rows: list[list[int]], limit: int, eos: int | None) -> list[list[int]]:
    """Cut each row to ``limit`` ids; a row that ended with ``eos`` still ends with it."""
    out: list[list[int]] = []
    for ids in rows:
        if len(ids) > limit:
            ids = [*ids[: limit - 1], eos] if eos is not None and ids[-1] == eos else ids[:limit]
        out.append(list(ids))
    return out


__all__ = [
    "LengthStats",
    "TokenStats",
    "build_tokenizer",
    "check_tokenization",
    "encode_examples",
    "percentile",
    "train_sentencepiece",
    "validate_tokenization",
]
