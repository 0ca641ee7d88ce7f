"""PII in files as written: numbers that type inference would hide, nested JSON values, CSV headers and
member names are found and anonymised; a parse error never quotes the data; what anonymise has no
reason to change keeps its bytes; PII left outside --columns is named in the result's warnings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelyard.core import Platform
from modelyard.data import add_version, anonymize, checkout, scan

VALUES = [
    "0501234567",
    "+971501234567",
    "4111111111111111",
    "5500005555555559",
    "carol@example.com",
    "+971 50 123 4567",
    "dave@example.com",
    "eve@example.com",
    "+44 7700 900123",
    "frank@example.com",
    "alice.smith@example.com",
]


def _all_bytes(root: Path) -> bytes:
    """Every member's path and content, to look for a value anywhere in a tree or report."""
    return b"\n".join(
        p.relative_to(root).as_posix().encode() + b"\n" + p.read_bytes()
        for p in root.rglob("*")
        if p.is_file()
    )


def _add(platform: Platform, root: Path, name: str) -> None:
    add_version(platform, platform.context(), root, name)


def test_numbers_are_scanned_as_written(platform: Platform, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    ctx = platform.context()
    root = tmp_path / "src"
    root.mkdir()
    # Inferred as int64 and double, these would read 501234567 and 9.71501234567e+11.
    (root / "contacts.csv").write_text("name,mobile,intl\nAlice,0501234567,+971501234567\n")
    # pandas stores a card column as float64 once a value is missing.
    cards = pa.array([4111111111111111.0, 5500005555555559.0, None, 2.5], pa.float64())
    pq.write_table(pa.table({"cust": [1, 2, 3, 4], "card": cards}), root / "cards.parquet")
    _add(platform, root, "nums")
    report = scan(platform, ctx, "nums@1")
    assert report["tables"]["contacts.csv"] == {"mobile": {"phone": 1}, "intl": {"phone": 1}}
    assert report["tables"]["cards.parquet"] == {"card": {"credit_card": 2}}

    anonymize(platform, ctx, "nums@1")
    out = tmp_path / "out"
    checkout(platform, ctx, "nums@2", out)
    assert (out / "contacts.csv").read_text() == "name,mobile,intl\nAlice,<PHONE>,<PHONE>\n"
    assert pq.read_table(out / "cards.parquet").column("card").to_pylist() == [
        "<CREDIT_CARD>",
        "<CREDIT_CARD>",
        None,
        "***",
    ]


def test_nested_values_headers_and_names_are_scanned_and_anonymised(
    platform: Platform, tmp_path: Path
) -> None:
    ctx = platform.context()
    root = tmp_path / "src"
    root.mkdir()
    event = {
        "id": 1,
        "user": {"email": "carol@example.com", "phone": "+971 50 123 4567"},
        "tags": ["dave@example.com"],
    }
    (root / "events.jsonl").write_text(json.dumps(event) + "\n")
    # No header: the first record is read as one, so it must be scanned and redacted like a row.
    (root / "noheader.csv").write_text("eve@example.com,+44 7700 900123\nfrank@example.com,+44 7700 900456\n")
    (root / "alice.smith@example.com.txt").write_text("hello\n")
    _add(platform, root, "ds")

    report = scan(platform, ctx, "ds@1")
    assert report["tables"]["events.jsonl"] == {
        "user.email": {"email": 1},
        "user.phone": {"phone": 1},
        "tags": {"email": 1},
    }
    assert report["tables"]["noheader.csv"] == {
        "(header)": {"email": 1, "phone": 1},
        "<EMAIL>": {"email": 1},
        "<PHONE>": {"phone": 1},
    }
    assert report["names"] == {"[EMAIL].txt": {"email": 1}}
    text = json.dumps(report)
    assert not any(v in text for v in VALUES)  # counts, never values: not as a column or file name either

    new = anonymize(platform, ctx, "ds@1")
    assert any("renamed 1 member" in w and "[EMAIL].txt" in w for w in new.warnings)
    assert not any(v in w for w in new.warnings for v in VALUES)
    out = tmp_path / "out"
    checkout(platform, ctx, "ds@2", out)
    dump = _all_bytes(out)
    assert not any(v.encode() in dump for v in VALUES)
    assert json.loads((out / "events.jsonl").read_text()) == {
        "id": 1,
        "user": {"email": "<EMAIL>", "phone": "<PHONE>"},
        "tags": ["<EMAIL>"],
    }
    assert (out / "noheader.csv").read_text() == "<EMAIL>,<PHONE>\n<EMAIL>,<PHONE>\n"
    assert (out / "[EMAIL].txt").read_text() == "hello\n"
    after = scan(platform, ctx, "ds@2")
    assert after["tables"] == {} and after["files"] == {} and after["names"] == {}


def test_unreadable_table_reason_does_not_quote_the_row(platform: Platform, tmp_path: Path) -> None:
    ctx = platform.context()
    root = tmp_path / "src"
    root.mkdir()
    (root / "broken.csv").write_text(
        "name,email\nAlice,alice@example.com\nBob,bob@example.com,4111 1111 1111 1111\n"
    )
    _add(platform, root, "b")
    reason = scan(platform, ctx, "b@1")["skipped"]["broken.csv"]
    assert reason.startswith("cannot read it as csv")
    assert "Bob" not in reason and "bob@" not in reason and "4111" not in reason


def test_anonymize_changes_only_what_it_redacts(platform: Platform, tmp_path: Path) -> None:
    ctx = platform.context()
    root = tmp_path / "src"
    (root / "clean").mkdir(parents=True)
    originals = {
        # No PII: leading zeros, decimals, timestamps, absent keys, CRLF and Latin-1 must all survive.
        "clean/items.csv": b"sku,zip,price\r\n00123,02139,1.50\r\n00456,00501,2.00\r\n",
        "clean/log.jsonl": b'{"id": 1, "ts": "2024-01-01T10:00:00", "note": "x"}\n{"id":2,"ts":"2024"}\n',
        "clean/readme.txt": b"caf\xe9\r\nno pii here\r\n",
        # PII: only the detected spans change.
        "orders.csv": b"\xef\xbb\xbfsku,note,email\r\n00123,1.50,al@example.com\r\n00456,x y,bob@example.io",
        "quoted.csv": b'sku,note,email\n00123,"x, ""y""",carol@example.net\n',
        "multiline.csv": b'email,note\r\nal@example.com,"one\ntwo"\r\nx,"a\rb"\r\n',
        "events.jsonl": b'{"id": 1.50, "n": 1e3}\r\n{"id": 2, "email": "bob@example.org", "n": 1e3}\n',
        "notes.txt": b"caf\xe9 owner: grace@example.com\r\nline two\r\n",
    }
    for name, data in originals.items():
        (root / name).write_bytes(data)
    _add(platform, root, "c")
    anonymize(platform, ctx, "c@1", allow_unprocessed=True)
    out = tmp_path / "out"
    checkout(platform, ctx, "c@2", out)
    for name in ("clean/items.csv", "clean/log.jsonl", "clean/readme.txt"):
        assert (out / name).read_bytes() == originals[name], name
    assert (out / "orders.csv").read_bytes() == (
        b"\xef\xbb\xbfsku,note,email\r\n00123,1.50,<EMAIL>\r\n00456,x y,<EMAIL>"
    )
    assert (out / "events.jsonl").read_bytes() == (
        b'{"id": 1.50, "n": 1e3}\r\n{"id": 2, "email": "<EMAIL>", "n": 1e3}\n'
    )
    assert (out / "notes.txt").read_bytes() == b"caf\xe9 owner: <EMAIL>\r\nline two\r\n"
    # Only values that need quotes get them (pyarrow quoted every value then), and a line break inside a
    # value is kept as it was (a CRLF file's "\n" in a value became "\r\n").
    assert (out / "quoted.csv").read_bytes() == b'sku,note,email\n00123,"x, ""y""",<EMAIL>\n'
    assert (out / "multiline.csv").read_bytes() == b'email,note\r\n<EMAIL>,"one\ntwo"\r\n***,"a\rb"\r\n'


def test_pii_outside_the_chosen_columns_is_reported(platform: Platform, tmp_path: Path) -> None:
    ctx = platform.context()
    root = tmp_path / "src"
    root.mkdir()
    (root / "tickets.csv").write_text(
        'email,phone,notes\na@example.com,+971 50 123 4567,"call +971 50 765 4321 or b@example.com"\n'
    )
    (root / "other.csv").write_text("contact\nc@example.com\n")
    _add(platform, root, "t")
    new = anonymize(platform, ctx, "t@1", columns=["email", "phone"], method="hash")
    remaining = [w for w in new.warnings if w.startswith("PII remains")]
    assert remaining == [
        "PII remains in other.csv, column contact: 1 email (not in --columns)",
        "PII remains in tickets.csv, column notes: 1 email, 1 phone (not in --columns)",
    ]
    # Every column chosen: nothing to warn about.
    assert not anonymize(platform, ctx, "t@1", method="hash").warnings


@pytest.mark.parametrize("line", [b"{not json}\n", b'{"a": "caf\xe9"}\n', b"[1, 2]\n"])
def test_bad_json_lines_are_refused_without_quoting_them(
    platform: Platform, tmp_path: Path, line: bytes
) -> None:
    ctx = platform.context()
    root = tmp_path / "src"
    root.mkdir()
    (root / "x.jsonl").write_bytes(b'{"ok": 1}\n' + line)
    _add(platform, root, "j")
    assert scan(platform, ctx, "j@1")["skipped"]["x.jsonl"] == (
        "cannot read it as jsonl: line 2 is not a JSON object in UTF-8"
    )


def test_one_file_per_person_or_host_is_renamed_with_numbers_not_refused(
    platform: Platform, tmp_path: Path
) -> None:
    """Every member redacted to one name ([EMAIL].txt) refused the whole anonymisation (helper-28)."""
    ctx = platform.context()
    root = tmp_path / "src"
    root.mkdir()
    for name, text in [
        ("alice@example.com.txt", "a\n"),
        ("bob@example.com.txt", "b\n"),
        ("10.0.0.1.log", "one\n"),
        ("10.0.0.2.log", "two\n"),
        ("[EMAIL].txt", "already\n"),
    ]:
        (root / name).write_text(text)
    add_version(platform, ctx, root, "people")
    new = anonymize(platform, ctx, "people@1")
    assert any("renamed 4 member" in w for w in new.warnings)
    out = tmp_path / "out"
    checkout(platform, ctx, "people@2", out)
    contents = {p.name: p.read_text() for p in out.iterdir()}
    assert contents == {
        "[EMAIL].txt": "already\n",  # an existing name is never taken over
        "[EMAIL]_2.txt": "a\n",
        "[EMAIL]_3.txt": "b\n",
        "[IP_ADDRESS].log": "one\n",
        "[IP_ADDRESS]_2.log": "two\n",
    }


def test_an_empty_table_file_is_not_refused_as_unparseable(platform: Platform, tmp_path: Path) -> None:
    """A 0-byte export holds no PII, but anonymise refused the whole version over it (a table that
    could not be parsed) and scan listed it as not scanned."""
    ctx = platform.context()
    root = tmp_path / "src"
    root.mkdir()
    for name in ("empty.csv", "empty.parquet", "empty.jsonl"):
        (root / name).write_bytes(b"")
    (root / "people.csv").write_bytes(b"email\nal@example.com\n")
    _add(platform, root, "e")
    assert scan(platform, ctx, "e@1")["skipped"] == {}
    new = anonymize(platform, ctx, "e@1")
    out = tmp_path / "out"
    checkout(platform, ctx, f"e@{new.version}", out)
    assert (out / "empty.csv").read_bytes() == b""
    assert (out / "people.csv").read_bytes() == b"email\n<EMAIL>\n"
