"""Seeded input perturbations for the robustness gate: what real users type differently.

Each perturbation takes a text and a ``random.Random`` and returns a variant that a person would read as
the same request: typos (adjacent swaps, a dropped or doubled letter), casing, spacing around punctuation,
punctuation, and number formats (digit grouping, decimal comma, leading zeros). They change inputs only;
the expected output stays the reference. ``perturb(texts, kinds, seed)`` applies one kind per text,
cycling through ``kinds``, so every kind is measured on a share of the set and the result is the same for
the same seed.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence

from modelyard.errors import UsageError

Perturbation = Callable[[str, random.Random], str]

_WORD = re.compile(r"[^\W\d_]{4,}")  # letters only, long enough to misspell
# A number standing alone: not part of a date (02.03.2013), a postcode (BS1 9UP, 04439), an id (A12), nor a
# group of an amount written with spaces (4 970,45).
_NUMBER = re.compile(
    r"(?<![\w.,])(?<!\d )(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(?![\d.,]*\d)(?!\w)(?! \d{3}(?!\d))"
)
# Where spacing around punctuation can change: a mark after a word (a space can go before it), an opening
# bracket before a word (a space can go after it), a space after a mark (it can go).
_SPACING = re.compile(r"(?<=\w)[:;,)]|(?<=\()(?=\w)|(?<=[:;,]) (?=\S)")


def _pick(rng: random.Random, matches: list[re.Match[str]]) -> re.Match[str] | None:
    return rng.choice(matches) if matches else None


def typos(text: str, rng: random.Random) -> str:
    """One typo in one word of four or more letters: two adjacent letters swapped, one dropped or doubled."""
    m = _pick(rng, list(_WORD.finditer(text)))
    if m is None:
        return text
    word = m.group()
    i = rng.randrange(1, len(word) - 1)  # keep the first letter: people rarely get it wrong
    kind = rng.randrange(3)
    if kind == 0:
        new = word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    elif kind == 1:
        new = word[:i] + word[i + 1 :]
    else:
        new = word[: i + 1] + word[i] + word[i + 1 :]
    return text[: m.start()] + new + text[m.end() :]


def casing(text: str, rng: random.Random) -> str:
    """The whole text in lower case, upper case or title case."""
    return [str.lower, str.upper, str.title][rng.randrange(3)](text)


def whitespace(text: str, rng: random.Random) -> str:
    """Spacing around one punctuation mark: a space added before a mark or inside a bracket
    (``date (en-US) :``, ``( en-US``) or dropped after one (``):Aug``). Extra spaces between words are not
    used: SentencePiece tokenizers (T5's) collapse them, so the model would see the very same input."""
    sites = list(_SPACING.finditer(text))
    if not sites:
        return text
    m = rng.choice(sites)
    if m.group() == " ":
        return text[: m.start()] + text[m.end() :]
    return text[: m.start()] + " " + text[m.start() :]


def punctuation(text: str, rng: random.Random) -> str:
    """Trailing punctuation removed or added, and a comma dropped or added after a word."""
    stripped = text.rstrip(".!?")
    text = stripped if stripped != text else text + rng.choice([".", "!", "?"])
    spaces = [m.start() for m in re.finditer(r"(?<=\w) ", text)]
    commas = [m.start() for m in re.finditer(r",(?= )", text)]
    if commas and rng.random() < 0.5:
        i = rng.choice(commas)
        return text[:i] + text[i + 1 :]
    if spaces:
        i = rng.choice(spaces)
        return text[:i] + "," + text[i:]
    return text


def numbers(text: str, rng: random.Random) -> str:
    """One amount or day written another way: a decimal comma for a decimal point, thousands separators
    added to a decimal amount or removed from a grouped one, or a leading zero on a one-digit number
    (``7 May`` -> ``07 May``). Plain integers of several digits (years, postcodes, house numbers) and
    numbers with a leading zero are left alone: rewriting them would change what they mean."""
    # Only the numbers that have another way to be written: a pick that cannot change would leave the
    # whole text unchanged although another number could.
    m = _pick(rng, [m for m in _NUMBER.finditer(text) if _rewritable(m)])
    if m is None:
        return text
    whole, frac = m.group(1), m.group(2)
    digits = whole.replace(",", "")
    if frac is not None:
        grouped = f"{int(digits):,}.{frac}"
        new = grouped if grouped != m.group() and rng.random() < 0.5 else f"{digits},{frac}"
    elif "," in whole:
        new = digits
    else:
        new = "0" + digits
    return text[: m.start()] + new + text[m.end() :]


def _rewritable(m: re.Match[str]) -> bool:
    whole = m.group(1)
    return not whole.startswith("0") and (m.group(2) is not None or "," in whole or len(whole) == 1)


PERTURBATIONS: dict[str, Perturbation] = {
    "typos": typos,
    "casing": casing,
    "whitespace": whitespace,
    "punctuation": punctuation,
    "numbers": numbers,
}


def perturb(texts: Sequence[str], kinds: Sequence[str], seed: int) -> list[tuple[str, str]]:
    """(kind, perturbed text) for each text: kinds in turn, each text's randomness from ``seed``."""
    unknown = [k for k in kinds if k not in PERTURBATIONS]
    if not kinds or unknown:
        raise UsageError(
            f"unknown perturbation {unknown[0]!r}; expected some of {', '.join(PERTURBATIONS)}"
            if unknown
            else f"name at least one perturbation: {', '.join(PERTURBATIONS)}"
        )
    out: list[tuple[str, str]] = []
    for i, text in enumerate(texts):
        kind = kinds[i % len(kinds)]
        rng = random.Random(f"{seed}:{i}")  # str seeds hash stably (sha512), unlike tuples of ints
        out.append((kind, PERTURBATIONS[kind](text, rng)))
    return out
