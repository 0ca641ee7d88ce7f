"""Emails whose TLD is also a file extension (``x@notes.md``) or a name code uses after "@" (``x@self.run``):
file names and code are not addresses, while the same TLDs in prose, or in a column or key named for
e-mail, are."""

from __future__ import annotations

import pyarrow as pa
import pytest

from modelyard.data._anonymize import _name_findings
from modelyard.data._pii import anonymize_table, find_spans, redact_text, scan_records, scan_table
from modelyard.data._profile import profile_table

SALT = b"s" * 32


def found(text: str) -> list[tuple[str, str]]:
    return [(text[a:b], kind) for a, b, kind in find_spans(text)]


@pytest.mark.parametrize(
    "text",
    [
        "see x@notes.md for the steps",
        "x@notes.md",
        "x@y.py",
        "changes are in notes@v2.md",
        "Jane@Notes.MD",
        "read x@notes.md.Then go on",  # not cut back to x@notes.md as a run-on address would be
    ],
)
def test_a_file_name_whose_extension_is_a_cctld_is_not_an_email(text: str) -> None:
    assert found(text) == []
    assert redact_text(text) == text


def test_a_member_named_like_a_file_reference_is_not_renamed() -> None:
    assert _name_findings("docs/x@notes.md") == ("docs/x@notes.md", {})
    assert _name_findings("al@example.com.txt") == ("[EMAIL].txt", {"email": 1})


@pytest.mark.parametrize(
    "address",
    [
        "jane@mail.acme.md",  # a dotted host name is no file name
        "juan@empresa.com.py",
        "boris@comet.ml",  # ccTLDs whose countries and startups mail from one-word domains stay addresses
        "rob@lumino.so",
        "jan@wp.pl",
        "info@firma.rs",
        "hey@astral.sh",
        "team@tokio.rs",
        "jane@acme-studio.sh",  # a hyphen: a host name whatever its TLD
    ],
)
def test_addresses_at_extension_like_cctlds_are_still_found(address: str) -> None:
    assert found(f"write to {address}, thanks") == [(address, "email")]


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("write to jane@studio.run, thanks", "jane@studio.run"),
        ("Contact: jane@studio.data", "jane@studio.data"),
        ("Jane Doe <jane@studio.run>", "jane@studio.run"),
        ("reach us (hello@acme.show) today", "hello@acme.show"),
        ("mailto:jane@studio.run", "jane@studio.run"),
        ("Kontakt: Jörg@Studio.Run.", "Jörg@Studio.Run"),
    ],
)
def test_an_address_at_a_tld_code_uses_as_a_name_is_found_in_prose(text: str, address: str) -> None:
    assert found(text) == [(address, "email")]


@pytest.mark.parametrize(
    "text",
    [
        "x@self.run",
        "job@task.run",
        "return x@self.map",
        "return out@batch.target",
        "y = h@self.run(x)",
        "then call job@task.run() again",
        "then call job@task.run[0] again",
        "apply x@self.run here",  # a one-letter operand
        "Kotlin this@MainActivity.run { finish() }",
        "see `job@task.run` above",
        "a.b@task.run",
    ],
)
def test_code_at_a_tld_code_uses_as_a_name_is_not_an_email(text: str) -> None:
    assert found(text) == []


def test_an_email_column_counts_addresses_at_any_tld_of_the_root_zone() -> None:
    cells = ["jane@company.md", "jane@studio.run", "job@task.run", "x@y.py", "logo@2x.png", None]
    table = pa.table({"Email Address": cells, "file": cells, "e_mail": cells[:1] * 6})
    assert scan_table(table) == {"Email Address": {"email": 4}, "e_mail": {"email": 6}}
    out = anonymize_table(table, None, "mask", SALT)
    assert out.column("file").to_pylist() == cells  # not chosen
    assert out.column("Email Address").to_pylist() == ["***"] * 5 + [None]  # the whole cell is hidden


def test_an_email_key_counts_addresses_at_any_tld_of_the_root_zone() -> None:
    records = [
        {"email": "jane@studio.run", "path": "x@notes.md", "user": {"mail": "jane@company.md"}},
        {"email": "logo@2x.png", "path": "job@task.run"},
    ]
    report, keys = scan_records(records)
    assert report == {"email": {"email": 1}, "user.mail": {"email": 1}}
    assert keys == {"email", "user"}


def test_an_email_struct_field_counts_addresses_at_any_tld() -> None:
    table = pa.table({"u": pa.array([{"email": "jane@studio.run", "note": "job@task.run"}])})
    assert scan_table(table) == {"u.email": {"email": 1}}


def test_a_profile_does_not_show_the_values_of_an_email_column() -> None:
    """Top values are shown to every viewer: in a column named for e-mail, addresses at any TLD are hidden,
    not only those the text scan finds on their own."""
    cells = ["jane@studio.run", "bob@acme.md"] * 3
    cols = profile_table(pa.table({"email": cells, "file": cells}))["columns"]
    assert "top" not in cols["email"] and cols["email"]["count"] == 6
    assert cols["file"]["top"] == [["bob@acme.md", 3], ["jane@studio.run", 3]]
