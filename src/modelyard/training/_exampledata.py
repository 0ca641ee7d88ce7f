"""The offline example task: normalise dates, amounts and addresses written in several locales.

A generated but realistic instruction dataset that a tiny T5 learns on CPU in minutes: each row is an
instruction with a locale-formatted input (``source``), its canonical form (``target``), the ``locale``
(a slice column for per-group metrics) and the ``task``. Everything is drawn from one ``random.Random(seed)``,
so a seed always gives the same rows and the same file bytes.

``shift`` in [0, 1] moves the distribution for drift tests: more of the rarest requested locale, longer
inputs (boilerplate around the value), formats the unshifted data never uses, and noise (typos in the
words around the value, extra whitespace, upper case). Targets stay correct under every shift.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
from collections.abc import Callable, Iterator, Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from modelyard.errors import UsageError

__all__ = [
    "DEFAULT_LOCALES",
    "FORMATS",
    "LOCALES",
    "SPLITS",
    "TASKS",
    "make_examples",
    "write_dataset",
]

LOCALES = ("en-US", "en-GB", "de-DE", "fr-FR", "ar-AE", "ja-JP")
DEFAULT_LOCALES = ("en-US", "en-GB", "de-DE", "fr-FR", "ar-AE")
TASKS = ("date", "amount", "address")
FORMATS = ("jsonl", "csv", "parquet")
SPLITS = ("train", "validation", "test")
COLUMNS = ("source", "target", "locale", "task")

# Relative share of each locale in unshifted data; shift moves mass onto the rarest requested one.
_WEIGHTS = {"en-US": 0.3, "en-GB": 0.2, "de-DE": 0.2, "fr-FR": 0.2, "ar-AE": 0.1, "ja-JP": 0.05}

Row = dict[str, str]

# ---------------------------------------------------------------------------------------------- dates


def _words(text: str) -> list[str]:
    return text.split()


_MONTHS = {
    "en": _words("January February March April May June July August September October November December"),
    "de": _words("Januar Februar März April Mai Juni Juli August September Oktober November Dezember"),
    "fr": _words("janvier février mars avril mai juin juillet août septembre octobre novembre décembre"),
    # Gulf Arabic month names, transliterated.
    "ar": _words(
        "Yanayir Fibrayir Maris Abril Mayu Yunyu Yulyu Aghustus Sibtambir Uktubar Nufimbir Disimbir"
    ),
}
_WEEKDAYS = {
    "en": _words("Monday Tuesday Wednesday Thursday Friday Saturday Sunday"),
    "de": _words("Montag Dienstag Mittwoch Donnerstag Freitag Samstag Sonntag"),
    "fr": _words("lundi mardi mercredi jeudi vendredi samedi dimanche"),
    "ar": _words("al-Ithnayn al-Thulatha al-Arbi'a al-Khamis al-Jumu'a al-Sabt al-Ahad"),
}


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


DateFormat = Callable[[date], str]


def _en_month(d: date) -> str:
    return _MONTHS["en"][d.month - 1]


_DATE_FORMATS: dict[str, list[DateFormat]] = {
    "en-US": [
        lambda d: f"{_en_month(d)} {d.day}, {d.year}",
        lambda d: f"{_en_month(d)[:3]} {d.day} {d.year}",
        lambda d: f"{d.month:02d}/{d.day:02d}/{d.year}",
        lambda d: f"{d.month}/{d.day}/{d.year}",
        lambda d: f"{_WEEKDAYS['en'][d.weekday()]}, {_en_month(d)} {_ordinal(d.day)}, {d.year}",
    ],
    "en-GB": [
        lambda d: f"{d.day} {_en_month(d)} {d.year}",
        lambda d: f"{_ordinal(d.day)} of {_en_month(d)} {d.year}",
        lambda d: f"{d.day:02d}/{d.month:02d}/{d.year}",
        lambda d: f"{d.day} {_en_month(d)[:3]} {d.year}",
        lambda d: f"{_WEEKDAYS['en'][d.weekday()]} {d.day} {_en_month(d)} {d.year}",
    ],
    "de-DE": [
        lambda d: f"{d.day}. {_MONTHS['de'][d.month - 1]} {d.year}",
        lambda d: f"{d.day:02d}.{d.month:02d}.{d.year}",
        lambda d: f"{d.day}.{d.month}.{d.year}",
        lambda d: f"{_WEEKDAYS['de'][d.weekday()]}, {d.day}. {_MONTHS['de'][d.month - 1]} {d.year}",
    ],
    "fr-FR": [
        lambda d: f"{'1er' if d.day == 1 else d.day} {_MONTHS['fr'][d.month - 1]} {d.year}",
        lambda d: f"{d.day:02d}/{d.month:02d}/{d.year}",
        lambda d: f"le {'1er' if d.day == 1 else d.day} {_MONTHS['fr'][d.month - 1]} {d.year}",
        lambda d: f"{_WEEKDAYS['fr'][d.weekday()]} {d.day} {_MONTHS['fr'][d.month - 1]} {d.year}",
    ],
    "ar-AE": [
        lambda d: f"{d.day} {_MONTHS['ar'][d.month - 1]} {d.year}",
        lambda d: f"{d.day:02d}/{d.month:02d}/{d.year}",
        lambda d: f"{d.year}/{d.month:02d}/{d.day:02d}",
        lambda d: f"{_WEEKDAYS['ar'][d.weekday()]} {d.day} {_MONTHS['ar'][d.month - 1]} {d.year}",
    ],
    "ja-JP": [
        lambda d: f"{d.year}年{d.month}月{d.day}日",
        lambda d: f"{d.year}/{d.month:02d}/{d.day:02d}",
    ],
}

# Formats that only shifted data uses (unseen in training data).
_SHIFTED_DATE_FORMATS: list[DateFormat] = [
    lambda d: f"{d.year}.{d.month:02d}.{d.day:02d}",
    lambda d: f"{d.day}-{_en_month(d)[:3].upper()}-{d.year}",
    lambda d: f"the {_ordinal(d.day)} day of {_en_month(d)}, {d.year}",
]

_EPOCH = date(1990, 1, 1)
_DAYS = (date(2035, 12, 31) - _EPOCH).days


def _make_date(rng: random.Random, locale: str, shift: float) -> tuple[str, str, dict[str, Any]]:
    # Shifted data also reaches outside the usual years.
    if rng.random() < shift * 0.5:
        d = date(1950, 1, 1) + timedelta(days=rng.randrange((date(2079, 12, 31) - date(1950, 1, 1)).days))
    else:
        d = _EPOCH + timedelta(days=rng.randrange(_DAYS))
    if rng.random() < shift * 0.3:
        text = rng.choice(_SHIFTED_DATE_FORMATS)(d)
    else:
        text = rng.choice(_DATE_FORMATS[locale])(d)
    return text, d.isoformat(), {"date": d}


# --------------------------------------------------------------------------------------------- amounts

_LOCAL_CURRENCY = {
    "en-US": "USD",
    "en-GB": "GBP",
    "de-DE": "EUR",
    "fr-FR": "EUR",
    "ar-AE": "AED",
    "ja-JP": "JPY",
}
_SYMBOL = {"USD": "$", "GBP": "£", "EUR": "€", "AED": "Dh", "JPY": "¥"}
_WORD = {
    ("en", "USD"): "US dollars",
    ("en", "GBP"): "pounds",
    ("en", "EUR"): "euros",
    ("en", "AED"): "dirhams",
    ("de", "EUR"): "Euro",
    ("de", "USD"): "US-Dollar",
    ("fr", "EUR"): "euros",
    ("fr", "USD"): "dollars US",
    ("ar", "AED"): "dirham",
    ("ja", "JPY"): "円",
}


def _group(integer: int, sep: str) -> str:
    return f"{integer:,}".replace(",", sep)


def _number(cents: int, thousands: str, decimal: str, *, drop_zero_cents: bool) -> str:
    integer, frac = divmod(cents, 100)
    head = _group(integer, thousands) if thousands else str(integer)
    if drop_zero_cents and frac == 0:
        return head
    return f"{head}{decimal}{frac:02d}"


def _make_amount(rng: random.Random, locale: str, shift: float) -> tuple[str, str, dict[str, Any]]:
    lang = locale[:2]
    currency = _LOCAL_CURRENCY[locale]
    if locale in {"de-DE", "fr-FR", "en-US", "en-GB"} and rng.random() < 0.15:  # some foreign currency
        currency = rng.choice([c for c in ("USD", "EUR", "GBP") if c != currency])
    magnitude = rng.choice((10, 100, 1_000, 10_000, 100_000, 1_000_000 if shift else 100_000))
    whole = rng.randrange(1, magnitude)
    cents = whole * 100 if currency == "JPY" or rng.random() < 0.35 else whole * 100 + rng.randrange(100)
    drop = rng.random() < 0.5
    sym = _SYMBOL[currency]
    word = _WORD.get((lang, currency))

    def n(thousands: str, decimal: str) -> str:
        return _number(cents, thousands, decimal, drop_zero_cents=drop)

    if lang == "en":
        options = [f"{sym}{n(',', '.')}", f"{currency} {n(',', '.')}", f"{n(',', '.')} {currency}"]
    elif lang == "de":
        options = [f"{n('.', ',')} {sym}", f"{currency} {n('.', ',')}", f"{n('', ',')} {currency}"]
    elif lang == "fr":
        options = [f"{n(' ', ',')} {sym}", f"{currency} {n(' ', ',')}", f"{n(' ', ',')} {currency}"]
    elif lang == "ar":
        options = [f"{currency} {n(',', '.')}", f"{n(',', '.')} {currency}", f"{sym} {n(',', '.')}"]
    else:  # ja
        options = [f"{sym}{n(',', '.')}", f"{n(',', '.')}{word}"]
    if word and lang != "ja":
        options.append(f"{n(',', '.') if lang in {'en', 'ar'} else n('.', ',')} {word}")
    if rng.random() < shift * 0.3:  # unseen formats
        options = [f"{currency}{n('', '.')}", f"{n(chr(39), '.')} {currency}", f"{sym} {n('', '.')}-"]
    text = rng.choice(options)
    value = f"{cents // 100}.{cents % 100:02d}"
    return text, f"{value} {currency}", {"cents": cents, "currency": currency}


# ------------------------------------------------------------------------------------------- addresses

_COUNTRY = {"en-US": "US", "en-GB": "GB", "de-DE": "DE", "fr-FR": "FR", "ar-AE": "AE", "ja-JP": "JP"}
_COUNTRY_NAMES = {
    "en-US": ("USA", "United States"),
    "en-GB": ("UK", "United Kingdom"),
    "de-DE": ("Deutschland", "Germany"),
    "fr-FR": ("France",),
    "ar-AE": ("UAE", "United Arab Emirates"),
    "ja-JP": ("Japan",),
}
_STREETS = {
    "en-US": ("Oak Street", "Maple Avenue", "Main Street", "Elm Street", "Park Avenue", "Lake Drive"),
    "en-GB": ("High Street", "Church Lane", "Station Road", "Victoria Road", "Mill Lane", "Park Road"),
    "de-DE": ("Hauptstraße", "Bahnhofstraße", "Gartenstraße", "Schulstraße", "Lindenweg", "Bergstraße"),
    "fr-FR": ("rue de la Paix", "rue Victor Hugo", "avenue Jean Jaurès", "boulevard Voltaire", "rue Pasteur"),
    "ar-AE": ("Sheikh Zayed Road", "Al Wasl Road", "Jumeirah Street", "Hamdan Street", "Corniche Road"),
    "ja-JP": ("Chuo-dori", "Meiji-dori", "Aoyama-dori", "Yasukuni-dori"),
}
# city -> (region shown in some formats, postcode prefix)
_CITIES = {
    "en-US": {
        "Springfield": ("IL", "627"),
        "Portland": ("OR", "972"),
        "Austin": ("TX", "787"),
        "Boston": ("MA", "021"),
        "Denver": ("CO", "802"),
    },
    "en-GB": {
        "London": ("", "SW"),
        "Leeds": ("", "LS"),
        "Bristol": ("", "BS"),
        "Oxford": ("", "OX"),
        "Manchester": ("", "M"),
    },
    "de-DE": {
        "Berlin": ("", "10"),
        "München": ("", "80"),
        "Hamburg": ("", "20"),
        "Köln": ("", "50"),
        "Leipzig": ("", "04"),
    },
    "fr-FR": {
        "Paris": ("", "75"),
        "Lyon": ("", "69"),
        "Marseille": ("", "13"),
        "Toulouse": ("", "31"),
        "Nantes": ("", "44"),
    },
    "ar-AE": {"Dubai": ("", ""), "Abu Dhabi": ("", ""), "Sharjah": ("", ""), "Ajman": ("", "")},
    "ja-JP": {"Tokyo": ("", "1"), "Osaka": ("", "5"), "Kyoto": ("", "6")},
}
_ABBREVIATIONS = {
    "Street": "St.",
    "Avenue": "Ave",
    "Drive": "Dr.",
    "Road": "Rd",
    "Lane": "Ln",
    "straße": "str.",
    "avenue": "av.",
    "boulevard": "bd",
}


def _abbreviate(street: str) -> str:
    for word, short in _ABBREVIATIONS.items():
        if word in street:
            return street.replace(word, short)
    return street


def _make_address(rng: random.Random, locale: str, shift: float) -> tuple[str, str, dict[str, Any]]:
    street = rng.choice(_STREETS[locale])
    city = rng.choice(sorted(_CITIES[locale]))
    region, prefix = _CITIES[locale][city]
    number = str(rng.randrange(1, 300 if locale != "en-US" else 3000))
    shown_street = _abbreviate(street) if rng.random() < 0.3 else street
    country = f", {rng.choice(_COUNTRY_NAMES[locale])}" if rng.random() < 0.3 else ""
    if locale == "en-US":
        postcode = prefix + f"{rng.randrange(100):02d}"
        options = [
            f"{number} {shown_street}, {city}, {region} {postcode}{country}",
            f"{number} {shown_street}, {city} {region} {postcode}",
        ]
    elif locale == "en-GB":
        letters = "ABDEFGHJLNPQRSTUWXYZ"
        postcode = (
            f"{prefix}{rng.randrange(1, 20)} {rng.randrange(10)}{rng.choice(letters)}{rng.choice(letters)}"
        )
        options = [
            f"{number} {shown_street}, {city} {postcode}{country}",
            f"{number} {shown_street}, {city}, {postcode}",
        ]
    elif locale == "de-DE":
        postcode = prefix + f"{rng.randrange(1000):03d}"
        options = [
            f"{shown_street} {number}, {postcode} {city}{country}",
            f"{shown_street} {number}, D-{postcode} {city}",
        ]
    elif locale == "fr-FR":
        postcode = prefix + f"{rng.randrange(1000):03d}"
        options = [
            f"{number} {shown_street}, {postcode} {city}{country}",
            f"{number}, {shown_street} {postcode} {city}",
        ]
    elif locale == "ar-AE":
        postcode = "-"
        kind = rng.choice(("Villa", "Building", "Office"))
        options = [
            f"{kind} {number}, {shown_street}, {city}{country}",
            f"{shown_street}, {kind} {number}, {city}",
        ]
    else:  # ja-JP
        postcode = f"{prefix}{rng.randrange(10, 100)}-{rng.randrange(10000):04d}"
        options = [
            f"〒{postcode} {city}, {shown_street} {number}",
            f"{number} {shown_street}, {city} {postcode}",
        ]
    if rng.random() < shift * 0.3:  # unseen: reversed order, no commas
        options = [f"{city} {postcode if postcode != '-' else ''} {shown_street} {number}".replace("  ", " ")]
    text = rng.choice(options)
    target = " | ".join((street, number, postcode, city, _COUNTRY[locale]))
    return text, target, {"street": street, "number": number, "postcode": postcode, "city": city}


# ------------------------------------------------------------------------------------------ assembling

_MAKERS = {"date": _make_date, "amount": _make_amount, "address": _make_address}
_PREAMBLES = (
    "customer wrote:",
    "from the scanned form, field 3:",
    "please check this entry from the old system:",
    "copied from an email, ref 4471:",
)
_SUFFIXES = ("(see attachment)", "thanks", "- urgent, please confirm", "as discussed on the phone")


def _typo(rng: random.Random, word: str) -> str:
    if len(word) < 4 or not word.isalpha():
        return word
    i = rng.randrange(len(word) - 1)
    return word[:i] + word[i + 1] + word[i] + word[i + 2 :]


def _noisy(rng: random.Random, text: str, shift: float) -> str:
    """Longer inputs, typos in the words around the value, odd whitespace and case, each with odds ~shift."""
    if rng.random() < shift:
        text = f"{rng.choice(_PREAMBLES)} {text}"
        if rng.random() < 0.5:
            text = f"{text} {rng.choice(_SUFFIXES)}"
    if rng.random() < shift * 0.5:
        text = text.upper()
    if rng.random() < shift * 0.5:
        text = "  ".join(text.split(" ")) + " "
    return text


def _locale_weights(locales: Sequence[str], shift: float) -> list[float]:
    weights = [_WEIGHTS[loc] for loc in locales]
    if len(locales) > 1 and shift > 0:
        total = sum(weights)
        rare = min(range(len(locales)), key=lambda i: (weights[i], i))
        # At shift 1 the rarest locale takes half of all rows.
        weights = [w / total * (1 - shift / 2) for w in weights]
        weights[rare] += shift / 2
    return weights


def _check(
    n: int, locales: Sequence[str] | None, tasks: Sequence[str] | None, shift: float
) -> tuple[list[str], list[str]]:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise UsageError(f"the number of rows must be a whole number >= 0, got {n!r}")
    if isinstance(shift, bool) or not isinstance(shift, int | float) or not 0.0 <= shift <= 1.0:
        raise UsageError(f"shift must be a number between 0 and 1, got {shift!r}")
    locs = list(DEFAULT_LOCALES if locales is None else locales)
    bad = [x for x in locs if x not in LOCALES]
    if bad or not locs:
        raise UsageError(
            f"unknown locale {', '.join(map(repr, bad)) or '(none given)'}; choose from {', '.join(LOCALES)}"
        )
    tks = list(TASKS if tasks is None else tasks)
    bad = [x for x in tks if x not in TASKS]
    if bad or not tks:
        raise UsageError(
            f"unknown task {', '.join(map(repr, bad)) or '(none given)'}; choose from {', '.join(TASKS)}"
        )
    return list(dict.fromkeys(locs)), list(dict.fromkeys(tks))


def _rows(
    rng: random.Random, locales: list[str], tasks: list[str], shift: float
) -> Iterator[tuple[Row, dict[str, Any]]]:
    weights = _locale_weights(locales, shift)
    while True:
        locale = rng.choices(locales, weights)[0]
        task = rng.choice(tasks)
        text, target, meta = _MAKERS[task](rng, locale, shift)
        instruction = f"normalise {task} ({locale}):"
        if rng.random() < shift * 0.3:
            instruction = " ".join(_typo(rng, w) for w in instruction.split(" "))
        source = _noisy(rng, f"{instruction} {text}", shift)
        yield {"source": source, "target": target, "locale": locale, "task": task}, meta


def make_examples(
    n: int,
    *,
    seed: int,
    locales: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
    shift: float = 0.0,
) -> Iterator[Row]:
    """``n`` rows ``{"source", "target", "locale", "task"}``, the same ones for the same arguments.

    Rows may repeat (the value space is large, so rarely); :func:`write_dataset` drops repeats. Bad
    arguments raise :class:`UsageError` at the call, not at the first row."""
    locs, tks = _check(n, locales, tasks, shift)
    rows = _rows(random.Random(seed), locs, tks, float(shift))
    return (next(rows)[0] for _ in range(n))


# ---------------------------------------------------------------------------------------------- files


def _split_sizes(n: int, splits: Sequence[float]) -> list[int]:
    if len(splits) != len(SPLITS):
        raise UsageError(
            f"splits must give {len(SPLITS)} sizes or ratios (train, validation, test), got {splits!r}"
        )
    if any(isinstance(s, bool) or not isinstance(s, int | float) or s < 0 for s in splits):
        raise UsageError(f"split sizes and ratios must be numbers >= 0, got {splits!r}")
    if all(isinstance(s, int) for s in splits):
        if sum(splits) != n:
            raise UsageError(
                f"split sizes {tuple(splits)} add up to {sum(splits)}, not to the {n} rows asked for"
            )
        return [int(s) for s in splits]
    if not math.isclose(sum(splits), 1.0, abs_tol=1e-6):
        raise UsageError(f"split ratios must add up to 1, got {tuple(splits)} (sum {sum(splits):g})")
    sizes = [int(n * s) for s in splits]
    sizes[0] += n - sum(sizes)  # rounding goes to train
    return sizes


def _encode(rows: list[Row], fmt: str) -> bytes:
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue().encode()
    import pyarrow as pa  # lazily: only Parquet needs it
    import pyarrow.parquet as pq

    table = pa.table({c: pa.array([r[c] for r in rows], type=pa.string()) for c in COLUMNS})
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def write_dataset(
    directory: str | os.PathLike[str],
    n: int,
    *,
    seed: int,
    format: str = "jsonl",
    splits: Sequence[float] = (0.8, 0.1, 0.1),
    shift: float = 0.0,
    locales: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``n`` distinct rows as ``train``, ``validation`` and ``test`` files in ``directory``.

    ``splits`` are three row counts adding up to ``n`` or three ratios adding up to 1. No source occurs in
    two splits (nor twice in one). Each file is written to a temporary name and renamed into place. A
    non-empty ``directory`` is refused unless ``overwrite``, which replaces the split files of every
    format and leaves other files alone. Returns the paths written, in split order."""
    fmt = format.lower() if isinstance(format, str) else format
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {format!r}; choose from {', '.join(FORMATS)}")
    locs, tks = _check(n, locales, tasks, shift)
    sizes = _split_sizes(n, splits)
    root = Path(directory)
    if root.exists() and not root.is_dir():
        raise UsageError(f"{root} is not a directory; give a new or empty directory for the dataset")
    if root.is_dir() and any(root.iterdir()) and not overwrite:
        raise UsageError(f"{root} is not empty; give a new or empty directory, or overwrite it")

    rows: list[Row] = []
    seen: set[str] = set()
    stream = _rows(random.Random(seed), locs, tks, float(shift))
    misses = 0
    while len(rows) < n:
        if misses > n + 1000:  # the space of distinct rows for these locales and tasks is nearly used up
            raise UsageError(
                f"could not make {n} distinct rows for locales {locs} and tasks {tks}; ask for fewer rows"
            )
        row = next(stream)[0]
        if row["source"] in seen:
            misses += 1
        else:
            seen.add(row["source"])
            rows.append(row)

    root.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for name in SPLITS:
            for ext in FORMATS:
                if ext != fmt:
                    (root / f"{name}.{ext}").unlink(missing_ok=True)
    paths: list[Path] = []
    start = 0
    from modelyard.core._paths import write_file  # lazily: modelyard.training stays light to import

    for name, size in zip(SPLITS, sizes, strict=True):
        path = root / f"{name}.{fmt}"
        write_file(path, _encode(rows[start : start + size], fmt))  # temp file + rename: never half
        paths.append(path)
        start += size
    return paths
