"""The example task's generator: correct targets, deterministic files, disjoint splits, measurable shift."""

from __future__ import annotations

import csv
import json
import re
import statistics
from collections import Counter
from datetime import date
from pathlib import Path

import pytest

from modelyard.errors import UsageError
from modelyard.training._exampledata import DEFAULT_LOCALES, LOCALES, make_examples, write_dataset

PROMPT = re.compile(r"^normalise (date|amount|address) \(([a-z]{2}-[A-Z]{2})\): (.+)$")

# An independent reader of what the generator writes, to prove each target is the source's value.
MONTHS = {
    name.lower(): i + 1
    for names in (
        "January February March April May June July August September October November December",
        "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec",
        "Januar Februar März April Mai Juni Juli August September Oktober November Dezember",
        "janvier février mars avril mai juin juillet août septembre octobre novembre décembre",
        "Yanayir Fibrayir Maris Abril Mayu Yunyu Yulyu Aghustus Sibtambir Uktubar Nufimbir Disimbir",
    )
    for i, name in enumerate(names.split())
}
WEEKDAYS = {
    name.lower(): i
    for names in (
        "Monday Tuesday Wednesday Thursday Friday Saturday Sunday",
        "Montag Dienstag Mittwoch Donnerstag Freitag Samstag Sonntag",
        "lundi mardi mercredi jeudi vendredi samedi dimanche",
        "al-Ithnayn al-Thulatha al-Arbi'a al-Khamis al-Jumu'a al-Sabt al-Ahad",
    )
    for i, name in enumerate(names.split())
}
CURRENCIES = {
    "$": "USD", "£": "GBP", "€": "EUR", "Dh": "AED", "¥": "JPY", "円": "JPY", "dollars": "USD",
    "US-Dollar": "USD", "pounds": "GBP", "euros": "EUR", "Euro": "EUR", "dirham": "AED", "dirhams": "AED",
}  # fmt: skip


def parse_date(text: str, locale: str) -> date:
    if m := re.fullmatch(r"(\d{4})年(\d{1,2})月(\d{1,2})日", text):
        return date(int(m[1]), int(m[2]), int(m[3]))
    words = [w.strip(",.").lower() for w in text.split()]
    months = [MONTHS[w] for w in words if w in MONTHS]
    if months:
        numbers = [int(re.sub(r"\D", "", w)) for w in words if re.match(r"^\d", w)]
        year = next(n for n in numbers if n >= 1000)
        day = next(n for n in numbers if n < 1000)
        d = date(year, months[0], day)
        weekday = [WEEKDAYS[w] for w in words if w in WEEKDAYS]
        assert weekday in ([], [d.weekday()]), f"wrong weekday in {text!r}"
        return d
    a, b, c = (int(p) for p in re.split(r"[/.]", text))
    if a >= 1000:
        return date(a, b, c)
    return date(c, a, b) if locale == "en-US" else date(c, b, a)


def parse_amount(text: str, locale: str) -> tuple[int, str]:
    codes = re.findall(r"\b(USD|EUR|GBP|AED|JPY)\b", text)
    currency = codes[0] if codes else next(c for s, c in CURRENCIES.items() if s in text)
    number = re.search(r"\d[\d., ]*", text)
    assert number is not None, text
    digits = number[0].strip()
    if locale in {"de-DE", "fr-FR"}:
        digits = digits.replace(".", "").replace(" ", "").replace(",", ".")
    else:
        digits = digits.replace(",", "")
    whole, _, frac = digits.partition(".")
    return int(whole) * 100 + int(frac or 0), currency


def split_prompt(source: str) -> tuple[str, str, str]:
    m = PROMPT.match(source)
    assert m, source
    return m[1], m[2], m[3]


def test_targets_are_the_canonical_form_of_the_sources() -> None:
    rows = list(make_examples(3000, seed=7, locales=LOCALES))
    assert {r["task"] for r in rows} == {"date", "amount", "address"}
    already_canonical = 0
    for r in rows:
        task, locale, text = split_prompt(r["source"])
        assert (task, locale) == (r["task"], r["locale"])
        assert r["target"] != r["source"], "copying the source is never the answer"
        if r["target"] in r["source"]:  # only an amount like "61.70 USD" may already be canonical
            assert task == "amount", r
            already_canonical += 1
        if task == "date":
            assert r["target"] == parse_date(text, locale).isoformat(), r
        elif task == "amount":
            value, currency = r["target"].split(" ")
            assert re.fullmatch(r"\d+\.\d\d", value), r
            cents, parsed_currency = parse_amount(text, locale)
            assert (cents, parsed_currency) == (round(float(value) * 100), currency), r
        else:
            street, number, postcode, city, country = r["target"].split(" | ")
            assert country == locale[-2:], r
            assert re.search(rf"\b{number}\b", text) and city in text, r
            assert postcode == "-" if locale == "ar-AE" else postcode in text, r
            # the street may be abbreviated in the source ("Hauptstr.", "Park Ave", "av. Jean Jaurès")
            name = re.sub(r"^(avenue|boulevard) |straße$| (Street|Avenue|Drive|Road|Lane)$", "", street)
            assert street in text or name in text, r
    assert already_canonical < 0.02 * len(rows)


def test_sources_are_short_and_varied() -> None:
    rows = list(make_examples(2000, seed=0))
    lengths = [len(r["source"].split()) for r in rows]
    assert max(lengths) <= 24
    assert len({r["source"] for r in rows}) > 1990  # practically no repeats
    # several surface formats per task and locale: e.g. en-GB dates in words and in digits
    gb_dates = [split_prompt(r["source"])[2] for r in rows if (r["task"], r["locale"]) == ("date", "en-GB")]
    assert any("/" in t for t in gb_dates) and any(re.search(r"[A-Za-z]", t) for t in gb_dates)


def test_same_seed_same_rows_other_seed_other_rows() -> None:
    assert list(make_examples(300, seed=1)) == list(make_examples(300, seed=1))
    assert list(make_examples(300, seed=1)) != list(make_examples(300, seed=2))
    # no hidden global state: interleaving two generators changes nothing
    a, b = make_examples(50, seed=1), make_examples(50, seed=2)
    interleaved = [(next(a), next(b)) for _ in range(50)]
    assert [x for x, _ in interleaved] == list(make_examples(50, seed=1))


def test_locale_column_has_every_requested_locale() -> None:
    rows = list(make_examples(1000, seed=3))
    assert set(Counter(r["locale"] for r in rows)) == set(DEFAULT_LOCALES)
    two = list(make_examples(200, seed=3, locales=["de-DE", "ja-JP"], tasks=["date"]))
    assert {r["locale"] for r in two} == {"de-DE", "ja-JP"} and {r["task"] for r in two} == {"date"}


def test_shift_changes_lengths_and_locale_shares() -> None:
    def stats(shift: float) -> tuple[float, float, float]:
        rows = list(make_examples(2000, seed=5, shift=shift))
        words = statistics.mean(len(r["source"].split()) for r in rows)
        chars = statistics.mean(len(r["source"]) for r in rows)
        share = sum(r["locale"] == "ar-AE" for r in rows) / len(rows)
        return words, chars, share

    w0, c0, s0 = stats(0.0)
    w5, c5, s5 = stats(0.5)
    w1, c1, s1 = stats(1.0)
    assert w0 < w5 < w1 and c0 < c5 < c1
    assert w1 > 1.5 * w0 and c1 > 1.5 * c0
    assert s0 < 0.15 and s5 > s0 + 0.15 and s1 > 0.4
    # shifted targets stay well formed
    for r in make_examples(500, seed=5, shift=1.0):
        if r["task"] == "date":
            date.fromisoformat(r["target"])
        elif r["task"] == "amount":
            assert re.fullmatch(r"\d+\.\d\d [A-Z]{3}", r["target"]), r


def read(path: Path) -> list[dict[str, str]]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    import pyarrow.parquet as pq

    return list(pq.read_table(path).to_pylist())


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_write_round_trips_deterministically(tmp_path: Path, fmt: str) -> None:
    paths = write_dataset(tmp_path / "a", 500, seed=11, format=fmt)
    again = write_dataset(tmp_path / "b", 500, seed=11, format=fmt)
    other = write_dataset(tmp_path / "c", 500, seed=12, format=fmt)
    assert [p.name for p in paths] == [f"{s}.{fmt}" for s in ("train", "validation", "test")]
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in again]
    assert paths[0].read_bytes() != other[0].read_bytes()
    splits = [read(p) for p in paths]
    assert [len(s) for s in splits] == [400, 50, 50]
    expected = list({r["source"]: r for r in make_examples(600, seed=11)}.values())[:500]
    assert [r for s in splits for r in s] == expected
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(
        p.name for p in paths
    )  # no temp files


def test_splits_are_disjoint_and_sized(tmp_path: Path) -> None:
    paths = write_dataset(tmp_path / "d", 1000, seed=0, splits=(700, 200, 100), shift=0.3)
    train, validation, test = ({r["source"] for r in read(p)} for p in paths)
    assert (len(train), len(validation), len(test)) == (700, 200, 100)
    assert not train & validation and not train & test and not validation & test


def test_refuses_non_empty_directory_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_dataset(out, 100, seed=0, format="csv")
    (out / "README").write_text("mine")
    with pytest.raises(UsageError, match="not empty"):
        write_dataset(out, 100, seed=1)
    assert (out / "train.csv").exists() and not (out / "train.jsonl").exists()  # nothing changed
    write_dataset(out, 100, seed=1, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [
        "README",
        "test.jsonl",
        "train.jsonl",
        "validation.jsonl",
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": -1}, "rows must be"),
        ({"shift": 1.5}, "shift must be"),
        ({"shift": -0.1}, "shift must be"),
        ({"locales": ["en-US", "xx-XX"]}, "unknown locale 'xx-XX'"),
        ({"locales": []}, "unknown locale"),
        ({"tasks": ["poems"]}, "unknown task 'poems'"),
        ({"format": "xml"}, "unknown format 'xml'"),
        ({"splits": (0.5, 0.1, 0.1)}, "add up to 1"),
        ({"splits": (10, 10, 10)}, "add up to 30"),
        ({"splits": (0.9, 0.1)}, "three|3 sizes"),
    ],
)
def test_bad_arguments_are_usage_errors(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"n": 100, "seed": 0, **kwargs}
    with pytest.raises(UsageError, match=message):
        write_dataset(tmp_path / "x", **args)  # type: ignore[arg-type]
    assert not (tmp_path / "x").exists()
    if set(kwargs) <= {"n", "shift", "locales", "tasks"}:
        with pytest.raises(UsageError, match=message):
            next(make_examples(**args))  # type: ignore[arg-type]


def test_too_few_distinct_rows_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="distinct rows"):
        write_dataset(tmp_path / "x", 40_000, seed=0, locales=["ja-JP"], tasks=["date"])
    assert not (tmp_path / "x").exists()
