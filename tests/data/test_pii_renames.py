"""Members whose path holds PII are renamed by anonymise; a redacted name that meets a directory (or a
file where it needs a directory) is numbered like any other collision, and every member is kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.core import Platform
from modelyard.data import add_version, anonymize, checkout


def _contents(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    ("before", "after"),
    [
        # A file redacted to the name of an existing directory.
        (
            {"[EMAIL]/x.txt": "kept\n", "bob@example.com": "bob\n"},
            {"[EMAIL]/x.txt": "kept\n", "[EMAIL]_2": "bob\n"},
        ),
        # A directory redacted to the name of an existing file.
        (
            {"[EMAIL]": "kept\n", "bob@example.com/x.txt": "bob\n"},
            {"[EMAIL]": "kept\n", "[EMAIL]_2/x.txt": "bob\n"},
        ),
        # Both inside the renamed members: a file and a directory redacted to one name.
        (
            {"al@example.com": "al\n", "bob@example.com/x.txt": "bob\n"},
            {"[EMAIL]": "al\n", "[EMAIL]_2/x.txt": "bob\n"},
        ),
    ],
)
def test_a_redacted_name_that_meets_a_directory_or_file_is_numbered(
    platform: Platform, tmp_path: Path, before: dict[str, str], after: dict[str, str]
) -> None:
    """The rename hit the other kind of entry: anonymise failed with an unexpected IsADirectoryError or
    FileExistsError whose message held the member's name, the e-mail address it was meant to hide."""
    ctx = platform.context()
    root = tmp_path / "src"
    for name, text in before.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    add_version(platform, ctx, root, "people")
    new = anonymize(platform, ctx, "people@1")
    checkout(platform, ctx, f"people@{new.version}", tmp_path / "out")
    assert _contents(tmp_path / "out") == after


def test_a_name_that_redaction_makes_too_long_is_cut_to_fit(platform: Platform, tmp_path: Path) -> None:
    """A placeholder can be longer than what it replaces ("a@b.io" is "[EMAIL]"): a member name near the
    255-byte limit became too long, and anonymise failed with an unexpected OSError quoting the name,
    the address included."""
    ctx = platform.context()
    root = tmp_path / "src"
    root.mkdir()
    email = "x" * 248 + " a@b.io"
    host = "y" * 240 + " 10.0.0.1.log"
    (root / email).write_text("mail\n")
    (root / host).write_text("log\n")
    (root / "ok.txt").write_text("plain\n")
    add_version(platform, ctx, root, "long")
    new = anonymize(platform, ctx, "long@1")
    checkout(platform, ctx, f"long@{new.version}", tmp_path / "out")
    got = _contents(tmp_path / "out")
    assert sorted(got.values()) == ["log\n", "mail\n", "plain\n"]
    names = sorted(got)
    assert all(len(n.encode()) <= 255 for n in names)
    assert names[0] == "ok.txt" and names[1].endswith(" [EMAIL]") and names[2].endswith(" [IP_ADDRESS].log")
    assert not any("a@b.io" in n or "10.0.0.1" in n for n in names)


def test_a_refused_anonymisation_is_audited(platform: Platform, tmp_path: Path) -> None:
    """Anonymise writes a version, but its refusals (a method it does not know, a column in no table, a
    table it cannot parse, a version that does not exist) left no record in the audit log, which holds
    every attempted mutation."""
    from modelyard.core import list_records
    from modelyard.errors import NotFoundError, UsageError

    ctx = platform.context()
    root = tmp_path / "src"
    root.mkdir()
    (root / "bad.parquet").write_bytes(b"PAR1 not parquet, but mentions eve@example.com")
    (root / "ok.csv").write_bytes(b"email\nal@example.com\n")
    add_version(platform, ctx, root, "broken")
    for kwargs, error, spec in [
        ({"method": "shred"}, UsageError, "broken@1"),
        ({"columns": ["nope"], "allow_unprocessed": True}, UsageError, "broken@1"),
        ({}, UsageError, "broken@1"),
        ({}, NotFoundError, "broken@7"),
    ]:
        before = len(list_records(platform, ctx))
        with pytest.raises(error) as raised:
            anonymize(platform, ctx, spec, **kwargs)  # type: ignore[arg-type]
        records = list_records(platform, ctx)[before:]
        assert [(r["action"], r["resource"], r["outcome"]) for r in records] == [
            ("dataset.write", "dataset:broken", "refused")
        ], kwargs
        assert records[0]["detail"]["message"] == raised.value.message
