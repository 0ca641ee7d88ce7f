"""Seeded input perturbations for the robustness gate: what real users type differently.

Each perturbation takes a text and a ``random.Random`` and returns a variant that a person would read as
the same request: typos (adjacent swaps, a dropped or doubled letter), casing, extra whitespace,
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
# A number standing alone: not part of a date (02.03.2013), a postcode with a leading zero or an id.
_NUMBER = re.compile(r"(?<![\d.,])(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(?![\d.,]*\d)")


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
    """Extra spaces between some words and around the text."""
    words = text.split(" ")
    out = [w + (" " * rng.randrange(1, 3) if rng.random() < 0.3 else "") for w in words]
    return " " * rng.randrange(0, 3) + " ".join(out) + " " * rng.randrange(0, 3)


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
    m = _pick(rng, [m for m in _NUMBER.finditer(text) if not m.group(1).startswith("0")])
    if m is None:
        return text
    whole, frac = m.group(1), m.group(2)
    digits = whole.replace(",", "")
    if frac is not None:
        grouped = f"{int(digits):,}.{frac}"
        new = grouped if grouped != m.group() and rng.random() < 0.5 else f"{digits},{frac}"
    elif "," in whole:
        new = digits
    elif len(digits) == 1:
        new = "0" + digits
    else:
        return text
    return text[: m.start()] + new + text[m.end() :]


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
