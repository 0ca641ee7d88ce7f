"""PII end to end: scan finds planted values in a generated table, anonymise removes them into a new
version whose lineage points at the source; salted hashing is stable within the project."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelyard.core import Platform
from modelyard.data import add_version, anonymize, checkout, scan, show
from modelyard.errors import UsageError
from modelyard.tracking import lineage

EMAILS = ["alice.smith@example.com", "bob.jones@example.org", "carol@example.net"]
CARD = "4111 1111 1111 1111"


def dataset(root: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir()
    rows = 60
    pq.write_table(
        pa.table(
            {
                "id": list(range(rows)),
                "email": [EMAILS[i % 3] if i % 4 == 0 else None for i in range(rows)],
                "note": [f"paid with {CARD}" if i == 7 else "ok" for i in range(rows)],
                "score": [i / 10 for i in range(rows)],
            }
        ),
        root / "customers.parquet",
    )
    (root / "orders.csv").write_text("order,email\n1,alice.smith@example.com\n2,dave@example.com\n")
    (root / "notes.txt").write_text(f"call me at {EMAILS[1]}\nnothing here\n")
    (root / "readme.rst").write_text(f"Maintainer: {EMAILS[2]}\n")  # no known suffix: sniffed as text
    (root / "image.bin").write_bytes(b"\x00\x01 not text")
    return root


def test_scan_anonymize_and_lineage(platform: Platform, tmp_path: Path) -> None:
    ctx = platform.context()
    add_version(platform, ctx, dataset(tmp_path / "src"), "customers")
    report = scan(platform, ctx, "customers@1")
    assert report["tables"]["customers.parquet"]["email"]["email"] == 15
    assert report["tables"]["customers.parquet"]["note"]["credit_card"] == 1
    assert "id" not in report["tables"]["customers.parquet"]
    assert report["tables"]["orders.csv"]["email"]["email"] == 2
    assert report["files"]["notes.txt"]["email"] == 1
    text = json.dumps(report)
    assert not any(e in text for e in EMAILS) and "4111" not in text  # counts, never values

    # Fails closed: a binary member could hold PII, so it is named and nothing is written.
    with pytest.raises(UsageError, match=r"image\.bin \(binary\).*--allow-unprocessed"):
        anonymize(platform, ctx, "customers@1", method="hash")
    assert show(platform, ctx, "customers").version == 1
    new = anonymize(platform, ctx, "customers@1", method="hash", allow_unprocessed=True)
    assert new.version == 2 and new.source == "customers@1"
    after = scan(platform, ctx, "customers@2")
    assert after["tables"] == {} and after["files"] == {}

    out = tmp_path / "out"
    checkout(platform, ctx, "customers@2", out)
    import pyarrow.parquet as pq

    emails = pq.read_table(out / "customers.parquet").column("email").to_pylist()
    orders = (out / "orders.csv").read_text()
    # Salted hashes: the same address gives the same token across tables (joins still work).
    alice = next(e for e in emails if e is not None)
    assert alice.startswith("h:") and alice in orders
    assert not any(e in (out / "notes.txt").read_text() for e in EMAILS)
    assert (out / "readme.rst").read_text() == "Maintainer: <EMAIL>\n"
    assert (out / "image.bin").read_bytes() == b"\x00\x01 not text"
    assert pq.read_table(out / "customers.parquet").column("score").to_pylist()[:2] == [0.0, 0.1]

    up, _ = lineage(platform, ctx, "dataset:customers@2")
    assert [(c.ref, c.relation) for c in up.children] == [("dataset:customers@1", "anonymized")]

    # A second anonymisation with the same project secret yields the same tokens.
    again = anonymize(platform, ctx, "customers@1", columns=["email"], method="hash", allow_unprocessed=True)
    checkout(platform, ctx, f"customers@{again.version}", tmp_path / "again")
    assert pq.read_table(tmp_path / "again" / "customers.parquet").column("email").to_pylist() == emails


def test_anonymize_drop_and_bad_arguments(platform: Platform, tmp_path: Path) -> None:
    ctx = platform.context()
    add_version(platform, ctx, dataset(tmp_path / "src"), "customers")
    with pytest.raises(UsageError, match="method"):
        anonymize(platform, ctx, "customers@1", method="shred")
    with pytest.raises(UsageError, match="nope"):
        anonymize(platform, ctx, "customers@1", columns=["nope"], method="drop")
    assert show(platform, ctx, "customers").version == 1
    new = anonymize(platform, ctx, "customers@1", columns=["email"], method="drop", allow_unprocessed=True)
    cols = new.profile["tables"]["customers.parquet"]["columns"]
    assert "email" not in cols and "id" in cols


def test_anonymize_refuses_unparseable_tables(platform: Platform, tmp_path: Path) -> None:
    ctx = platform.context()
    root = tmp_path / "src"
    root.mkdir()
    (root / "bad.parquet").write_bytes(b"PAR1 this is not parquet, but mentions eve@example.com")
    add_version(platform, ctx, root, "broken")
    with pytest.raises(UsageError, match=r"bad\.parquet \(table could not be parsed\)"):
        anonymize(platform, ctx, "broken@1", method="mask")
    assert show(platform, ctx, "broken").version == 1


def test_profiles_never_list_personal_values(platform: Platform, tmp_path: Path) -> None:
    """Top values make a category column useful for drift, but an e-mail column with repeats is not a
    category: its values must not be copied into the (plain-text) profile."""
    ctx = platform.context()
    root = tmp_path / "src"
    root.mkdir()
    rows = ["customer,plan"] + [f"{EMAILS[i % 3]},{'gold' if i % 2 else 'free'}" for i in range(12)]
    (root / "orders.csv").write_text("\n".join(rows) + "\n")
    info = add_version(platform, ctx, root, "orders")
    cols = info.profile["tables"]["orders.csv"]["columns"]
    assert cols["plan"]["top"] == [["free", 6], ["gold", 6]]
    assert "top" not in cols["customer"] and cols["customer"]["distinct"] == 3
    assert not any(e in json.dumps(info.profile) for e in EMAILS)
