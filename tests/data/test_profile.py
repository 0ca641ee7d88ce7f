"""Table profiles: what they may show every viewer (no PII), the types they survive, the bytes they describe
(the ones sealed), and the memory a small Parquet file may make them use."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modelyard import data
from modelyard.core import Platform, list_records
from modelyard.data import _profile
from modelyard.errors import UsageError

MakeTree = Callable[[Path, dict[str, bytes]], Path]
CARDS = ["4111111111111111", "5500005555555559", "4012888888881881"]
EIDS = ["784198012345678", "784199012345674"]


def test_numeric_pii_columns_and_pii_column_names_are_not_copied(
    platform: Platform, tmp_path: Path, make_tree: MakeTree
) -> None:
    """min/max/histogram edges of a column of card numbers or Emirates IDs are the numbers themselves;
    a CSV whose first row is data has its values as column names."""
    pay = "cust,card,eid\n" + "".join(f"{i},{c},{EIDS[i % 2]}\n" for i, c in enumerate(CARDS))
    root = make_tree(tmp_path / "t", {"pay.csv": pay.encode(), "raw.csv": b"eve@example.com,n\nx,1\ny,2\n"})
    info = data.add_version(platform, platform.context(), root, "pay")
    tables = info.profile["tables"]
    cols = tables["pay.csv"]["columns"]
    for name in ("card", "eid"):
        assert cols[name]["count"] == 3 and not {"min", "max", "mean", "histogram"} & set(cols[name])
    assert (cols["cust"]["min"], cols["cust"]["max"]) == (0, 2)  # other columns keep their statistics
    assert list(tables["raw.csv"]["columns"]) == ["<EMAIL>", "n"]
    text = json.dumps(info.profile)
    assert not any(v in text for v in [*CARDS, *EIDS, "eve@example.com"])
    assert "4.111" not in text and "7.84" not in text  # not as floats either


def test_a_csv_column_of_numbers_with_a_leading_zero_is_text_so_phone_numbers_stay_out(
    platform: Platform, tmp_path: Path, make_tree: MakeTree
) -> None:
    """Read as integers, 0501234567 lost its zero: the PII guard saw no phone number and min/max showed the
    numbers; postcodes lost theirs too. Such columns are profiled as the text they hold."""
    phones = ["0501234567", "0559876543", "+971501112233"]
    rows = "".join(f"{i},{p},0{4439 + i},{10 * i},0.{i + 1}\n" for i, p in enumerate(phones))
    root = make_tree(tmp_path / "t", {"contacts.csv": ("id,phone,postcode,amount,rate\n" + rows).encode()})
    info = data.add_version(platform, platform.context(), root, "contacts")
    cols = info.profile["tables"]["contacts.csv"]["columns"]
    assert cols["phone"]["type"] == cols["postcode"]["type"] == "string"
    assert cols["phone"]["count"] == 3 and "top" not in cols["phone"] and "min" not in cols["phone"]
    assert (cols["id"]["type"], cols["id"]["min"], cols["id"]["max"]) == ("int64", 0, 2)  # quantities stay
    assert cols["amount"]["max"] == 20 and (cols["rate"]["type"], cols["rate"]["max"]) == ("double", 0.3)
    text = json.dumps(info.profile)
    assert not any(p.lstrip("+0") in text for p in phones)
    assert "5.01234567" not in text and "9.7150" not in text  # not as floats either


def test_a_skipped_tables_reason_does_not_quote_its_rows(
    platform: Platform, tmp_path: Path, make_tree: MakeTree
) -> None:
    bad = b"name,email\nAlice,alice@example.com\nBob,bob@example.com,4111 1111 1111 1111\n"
    root = make_tree(tmp_path / "t", {"broken.csv": bad})
    info = data.add_version(platform, platform.context(), root, "b")
    assert "cannot read it as csv" in info.profile["skipped"]["broken.csv"]
    shown = json.dumps(info.profile) + "\n".join(info.warnings)
    assert "bob@example.com" not in shown and "4111" not in shown and "Bob" not in shown


def test_a_deeply_nested_json_line_is_skipped_not_a_crash(
    platform: Platform, tmp_path: Path, make_tree: MakeTree
) -> None:
    """pyarrow's JSON reader segfaulted on a 40 KB line of brackets (the whole `yard data add` died);
    brackets inside strings and many sibling lists are not depth."""
    deep = b'{"a": ' + b"[" * 1001 + b"]" * 1001 + b"}\n"
    wide = b'{"a": [' + b",".join([b"[1]"] * 2000) + b'], "t": "' + b"[" * 2000 + b'"}\n'
    root = make_tree(tmp_path / "t", {"deep.jsonl": deep, "wide.jsonl": wide})
    info = data.add_version(platform, platform.context(), root, "j")
    assert "nests deeper than 1000 levels" in info.profile["skipped"]["deep.jsonl"]
    assert info.profile["tables"]["wide.jsonl"]["rows"] == 1
    code = (
        "import io; from modelyard.data import _profile\n"
        "line = b'{\"a\": ' + b'[' * 100000 + b']' * 100000 + b'}\\n'\n"
        "try:\n    _profile.read_table(io.BytesIO(line), 'jsonl')\n"
        "except ValueError as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert (out.returncode, out.stdout.strip()) == (
        0,
        "cannot read it as jsonl: a line nests deeper than 1000 levels",
    ), out.stderr[-500:]


def test_a_json_line_longer_than_the_reader_takes_is_refused_without_reading_it(tmp_path: Path) -> None:
    """The depth check read line by line, so a one-line file was read whole (up to the 512 MiB bound) just
    to be refused by pyarrow, which cannot read a line longer than two of its blocks."""
    path = tmp_path / "one.jsonl"
    path.write_bytes(b'{"a": "' + b"x" * (16 << 20) + b'"}\n')
    with open(path, "rb") as f:
        with pytest.raises(ValueError, match="cannot read it as jsonl"):
            _profile.read_table(f, "jsonl")
        assert f.tell() <= (2 << 20) + 1  # two 1 MiB blocks
    small = b'{"a": "' + b"x" * ((1 << 20) + 10) + b'"}\n{"a": "y"}\n'  # one block and a bit
    assert _profile.read_table(io.BytesIO(small), "jsonl").num_rows == 2


def test_a_column_without_statistics_leaves_the_table_its_others(platform: Platform, tmp_path: Path) -> None:
    """A duration column has no min_max kernel: the add used to fail (and audit nothing)."""
    root = tmp_path / "t"
    root.mkdir()
    elapsed = pa.array([30, 45], pa.duration("s"))
    pq.write_table(pa.table({"trip": [1, 2], "elapsed": elapsed}), root / "trips.parquet")
    info = data.add_version(platform, platform.context(), root, "trips")
    cols = info.profile["tables"]["trips.parquet"]["columns"]
    assert cols["elapsed"] == {"type": "duration[s]", "kind": "temporal", "count": 2, "nulls": 0}
    assert (cols["trip"]["min"], cols["trip"]["max"]) == (1, 2)
    assert info.profile["skipped"] == {}


def test_a_csv_with_repeated_column_names_is_profiled_not_a_crash(
    platform: Platform, tmp_path: Path, make_tree: MakeTree
) -> None:
    """Spreadsheet exports repeat headers ("id,id", "email,email"): the add died with pyarrow's KeyError
    while looking for number columns written as codes, and recorded nothing."""
    root = make_tree(tmp_path / "t", {"dup.csv": b"id,id,email,email\n1,2,a@example.com,b@example.org\n"})
    info = data.add_version(platform, platform.context(), root, "dup")
    cols = info.profile["tables"]["dup.csv"]["columns"]
    assert sorted(cols) == ["email", "email (column 4)", "id", "id (column 2)"]
    assert (cols["id"]["min"], cols["id (column 2)"]["min"]) == (1, 2)
    assert info.profile["skipped"] == {}
    report = data.scan(platform, platform.context(), "dup@1")
    assert report["tables"]["dup.csv"] == {"email": {"email": 2}}


def test_large_integers_keep_exact_bounds_and_a_constant_column_one_bin(
    platform: Platform, tmp_path: Path, make_tree: MakeTree
) -> None:
    root = make_tree(
        tmp_path / "t",
        {
            "a.csv": b"id,ts_ns\n1,1700000000000000001\n2,1700000000000000002\n",
            "b.csv": b"id,flag\n1,10000000000000000\n2,10000000000000000\n",
        },
    )
    info = data.add_version(platform, platform.context(), root, "big")
    assert info.profile["skipped"] == {}
    ts = info.profile["tables"]["a.csv"]["columns"]["ts_ns"]
    assert (ts["min"], ts["max"]) == (1700000000000000001, 1700000000000000002)
    flag = info.profile["tables"]["b.csv"]["columns"]["flag"]
    assert flag["min"] == flag["max"] == 10**16
    assert flag["histogram"] == {"edges": [1e16, 1e16], "counts": [2]}
    _profile.dumps(info.profile)  # still strict JSON


def _sealed_then(
    platform: Platform, monkeypatch: pytest.MonkeyPatch, name: str, swap: Callable[[], None]
) -> None:
    """Run ``swap`` right after the file ``name`` was sealed, before its chunk is recorded and profiled."""
    store = platform.artifacts
    real = store.publish_files

    def publish_files(paths: list[str], **kwargs: Any) -> Any:
        out = real(paths, **kwargs)
        if any(Path(p).name == name for p in paths):
            swap()
        return out

    monkeypatch.setattr(store, "publish_files", publish_files)


@pytest.mark.parametrize("how", ["symlink", "rewrite"])
def test_a_table_swapped_after_sealing_fails_the_add(
    platform: Platform, tmp_path: Path, make_tree: MakeTree, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """The profile used to re-read the path: it described a file swapped in since (or, through a symlink,
    one outside the tree) instead of the sealed bytes."""
    root = make_tree(tmp_path / "t", {"zzz.csv": b"city,n\n" + b"paris,1\n" * 5 + b"rome,2\n" * 5})
    secret = tmp_path / "secret.csv"
    secret.write_text("password\n" + "hunter2\n" * 6 + "letmein\n" * 4)
    table = root / "zzz.csv"

    def swap() -> None:
        os.replace(table, root / "old.bak")
        if how == "symlink":
            table.symlink_to(secret)
        else:
            table.write_bytes(secret.read_bytes())

    _sealed_then(platform, monkeypatch, "zzz.csv", swap)
    ctx = platform.context()
    with pytest.raises(UsageError, match="changed while it was being versioned"):
        data.add_version(platform, ctx, root, "race")
    assert data.list_datasets(platform, ctx) == []
    rec = list_records(platform, ctx)[-1]
    assert rec["action"] == "dataset.write" and rec["outcome"] == "refused"


def test_parquet_statistics_are_bounded_by_the_decoded_size(
    platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A few KB of zstd Parquet decode to MBs (to GBs at scale): the limit is checked on its metadata,
    before reading, not on the file size."""
    monkeypatch.setattr(_profile, "MAX_TABLE_BYTES", 1 << 20)
    root = tmp_path / "t"
    root.mkdir()
    zeros = pa.array([0] * 500_000, pa.int8())
    pq.write_table(pa.table({"x": zeros}), root / "bomb.parquet", compression="zstd")
    pq.write_table(pa.table({"x": zeros[:1000], "s": ["a", "b"] * 500}), root / "ok.parquet")
    assert (root / "bomb.parquet").stat().st_size < 64 << 10
    info = data.add_version(platform, platform.context(), root, "bomb")
    assert "decodes to more than 1 MiB" in info.profile["skipped"]["bomb.parquet"]
    ok = info.profile["tables"]["ok.parquet"]
    # Strings are read dictionary-encoded (bounded by the pages) but reported as what they are.
    assert ok["columns"]["s"]["type"] == "string" and ok["columns"]["s"]["top"] == [["a", 500], ["b", 500]]
    assert ok["rows"] == 1000
