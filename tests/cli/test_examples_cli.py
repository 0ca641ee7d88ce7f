"""`yard examples make-data` in-process through ``modelyard.cli.main``; the import check in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from modelyard.testing import Yard


def rows(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_make_data_writes_the_splits(yard: Yard, tmp_path: Path) -> None:
    r = yard("examples", "make-data", "ex", "--rows", "300", "--seed", "4", "--locales", "en-US,de-DE")
    assert r.code == 0, r.err
    files = sorted(p.name for p in (tmp_path / "ex").iterdir())
    assert files == ["test.jsonl", "train.jsonl", "validation.jsonl"]
    assert all(f"ex/{name}" in r.err for name in files)
    train = rows(tmp_path / "ex" / "train.jsonl")
    assert len(train) == 240 and len(rows(tmp_path / "ex" / "test.jsonl")) == 30
    assert set(train[0]) == {"source", "target", "locale", "task"}
    assert set(Counter(x["locale"] for x in train)) == {"en-US", "de-DE"}
    # the same command gives the same bytes
    assert (
        yard("examples", "make-data", "ex2", "--rows", "300", "--seed", "4", "--locales", "en-US,de-DE").code
        == 0
    )
    assert (tmp_path / "ex2" / "train.jsonl").read_bytes() == (tmp_path / "ex" / "train.jsonl").read_bytes()


def test_make_data_formats_splits_and_shift(yard: Yard, tmp_path: Path) -> None:
    r = yard("examples", "make-data", "c", "--rows", "100", "--format", "csv", "--splits", "60,20,20")
    assert r.code == 0, r.err
    assert (tmp_path / "c" / "train.csv").read_text(encoding="utf-8").count("\n") == 61  # header + rows
    assert yard("examples", "make-data", "p", "--rows", "50", "-f", "parquet").code == 0
    assert (tmp_path / "p" / "validation.parquet").read_bytes()[:4] == b"PAR1"
    assert yard("examples", "make-data", "s", "--rows", "400", "--shift", "1").code == 0
    assert yard("examples", "make-data", "u", "--rows", "400").code == 0
    shifted, plain = rows(tmp_path / "s" / "train.jsonl"), rows(tmp_path / "u" / "train.jsonl")
    assert sum(len(x["source"]) for x in shifted) > 1.5 * sum(len(x["source"]) for x in plain)


def test_make_data_refuses_a_non_empty_directory(yard: Yard, tmp_path: Path) -> None:
    assert yard("examples", "make-data", "ex", "--rows", "50").code == 0
    before = (tmp_path / "ex" / "train.jsonl").read_bytes()
    r = yard("examples", "make-data", "ex", "--rows", "50", "--seed", "1")
    assert r.code == 2 and "not empty" in r.error
    assert (tmp_path / "ex" / "train.jsonl").read_bytes() == before
    assert yard("examples", "make-data", "ex", "--rows", "50", "--seed", "1", "--overwrite").code == 0
    assert (tmp_path / "ex" / "train.jsonl").read_bytes() != before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rows", "-5"], "rows must be a whole number >= 0"),
        (["--locales", "en-US,xx-XX"], "unknown locale 'xx-XX'; choose from en-US"),
        (["--tasks", "date,poem"], "unknown task 'poem'"),
        (["--shift", "2"], "shift must be a number between 0 and 1"),
        (["--format", "xml"], "unknown format 'xml'; choose from jsonl, csv, parquet"),
        (["--splits", "a,b,c"], "--splits takes three ratios or row counts"),
        (["--splits", "0.5,0.5,0.5"], "add up to 1"),
        (["--rows", "many"], "Invalid value for '--rows'"),
        # held in memory and written out: 10^12 rows ran until the memory or the disk gave out
        (["--rows", "1000000000000"], "Invalid value for '--rows'"),
    ],
)
def test_bad_options_are_usage_errors(yard: Yard, tmp_path: Path, args: list[str], message: str) -> None:
    r = yard("examples", "make-data", "ex", *args)
    assert r.code == 2
    assert message in r.error
    assert not (tmp_path / "ex").exists()


def test_make_data_version_creates_a_dataset_version(yard: Yard, tmp_path: Path) -> None:
    assert yard("init").code == 0
    r = yard("examples", "make-data", "ex", "--rows", "200", "--seed", "2", "--version", "normalise")
    assert r.code == 0, r.err
    assert r.out.strip().splitlines()[-1] == "normalise@1"
    versions = yard("data", "ls", "normalise", "--json").json()
    assert [v["version"] for v in versions] == [1]
    assert versions[0]["files"] == 3 and "--seed 2" in versions[0]["message"]
    # shifted data for a drift test becomes the next version of the same dataset
    r = yard("examples", "make-data", "ex2", "--rows", "200", "--shift", "0.5", "--version", "normalise")
    assert r.code == 0, r.err
    assert r.out.strip().splitlines()[-1] == "normalise@2"


def test_make_data_bad_version_name_writes_nothing(yard: Yard, tmp_path: Path) -> None:
    assert yard("init").code == 0
    r = yard("examples", "make-data", "ex", "--rows", "50", "--version", "bad@name")
    assert r.code == 2 and "dataset name 'bad@name' is not valid" in r.error
    assert not (tmp_path / "ex").exists()  # so the corrected command finds DIR still empty
    assert yard("examples", "make-data", "ex", "--rows", "50", "--version", "good").code == 0


def test_make_data_version_without_a_home_fails_cleanly(yard: Yard, tmp_path: Path) -> None:
    r = yard("examples", "make-data", "ex", "--rows", "20", "--version", "normalise")
    assert r.code == 1 and "run `yard init` first" in r.error
    assert not (tmp_path / "ex").exists()  # nothing written


def test_examples_cli_imports_no_torch_or_pyarrow() -> None:
    script = (
        "import sys, tempfile, os\nfrom modelyard.cli import main\n"
        "try:\n    main(['examples', '--help'])\nexcept SystemExit:\n    pass\n"
        "d = os.path.join(tempfile.mkdtemp(), 'ex')\n"
        "assert main(['examples', 'make-data', d, '--rows', '20']) == 0\n"
        "heavy = [m for m in ('pyarrow', 'torch', 'numpy') if m in sys.modules]\n"
        "assert not heavy, heavy\nprint('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("ok")
