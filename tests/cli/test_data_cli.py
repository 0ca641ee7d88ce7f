"""`yard data ...` driven in-process through ``modelyard.cli.main``; the import check in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelyard.data import _manifest
from modelyard.testing import Yard


@pytest.fixture
def yard(yard: Yard, monkeypatch: pytest.MonkeyPatch) -> Yard:
    """The shared runner, in a home made by `yard init`; files written by the test are trusted at once."""
    monkeypatch.setattr(_manifest, "RACY_NS", 0)
    assert yard("init").code == 0
    return yard


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("alpha\n")
    (root / "sub" / "b.bin").write_bytes(os.urandom(2048))
    (root / "t.csv").write_text("id,city\n1,Paris\n2,Rome\n3,Paris\n")
    return root


def test_add_ls_show_diff_checkout_rm(yard: Yard, tree: Path, tmp_path: Path) -> None:
    r = yard("data", "add", tree, "--name", "ds", "-m", "first")
    assert r.code == 0, r.err
    assert "ds@1: 3 files" in r.out
    assert "unchanged" in yard("data", "add", tree, "--name", "ds").out
    (tree / "a.txt").write_text("changed\n")
    assert "ds@2" in yard("data", "add", tree, "--name", "ds").out

    listed = yard("data", "ls", "--json").json()
    assert [(d["name"], d["latest"], d["versions"]) for d in listed] == [("ds", 2, 2)]
    assert [v["version"] for v in yard("data", "ls", "ds", "--json").json()] == [1, 2]
    shown = yard("data", "show", "ds@1", "--json").json()
    assert shown["files"] == 3 and shown["message"] == "first"
    assert shown["profile"]["tables"]["t.csv"]["columns"]["city"]["top"] == [["Paris", 2], ["Rome", 1]]
    text = yard("data", "show", "ds@1").out
    assert "files    3" in text and "t.csv (3 rows)" in text and "first" in text

    d = yard("data", "diff", "ds@1", "ds@2", "--json").json()
    assert [c["path"] for c in d["changed"]] == ["a.txt"] and d["added"] == d["removed"] == []
    assert "~ a.txt" in yard("data", "diff", "ds@1", "ds@2").out

    r = yard("data", "checkout", "ds@1", tmp_path / "out")
    assert r.code == 0, r.err
    assert (tmp_path / "out" / "a.txt").read_text() == "alpha\n"
    r = yard("data", "checkout", "ds@1", tmp_path / "out")
    assert r.code == 2 and "not empty" in r.error

    # --files prints what sha256sum prints, so the checkout can be checked with the system's own tool
    listing = yard("data", "show", "ds@1", "--files").out
    assert [line.split("  ", 1)[1] for line in listing.splitlines()] == ["a.txt", "sub/b.bin", "t.csv"]
    checked = subprocess.run(
        ["sha256sum", "-c", "-"], input=listing, cwd=tmp_path / "out", capture_output=True, text=True
    )
    assert checked.returncode == 0 and checked.stdout.count(": OK") == 3, checked.stdout + checked.stderr
    (tmp_path / "out" / "a.txt").write_text("tampered\n")
    tampered = subprocess.run(
        ["sha256sum", "-c", "-"], input=listing, cwd=tmp_path / "out", capture_output=True, text=True
    )
    assert tampered.returncode == 1 and "a.txt: FAILED" in tampered.stdout
    members = yard("data", "show", "ds@2", "--files", "--json").json()
    assert (members[0]["path"], members[0]["size"], len(members)) == ("a.txt", len("changed\n"), 3)

    assert yard("data", "rm", "ds@1").code == 0
    assert [v["version"] for v in yard("data", "ls", "ds", "--json").json()] == [2]
    audit = yard("audit", "ls", "--json").json()
    assert [a["action"] for a in audit if a["action"].startswith("dataset")] == [
        "dataset.write",
        "dataset.write",
        "dataset.delete",
    ]


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (("data", "show", "ds@x"), 2, "invalid version"),
        (("data", "checkout", "ds", "out"), 2, "names no version"),
        (("data", "show", "nope@1"), 1, "not found"),
        (("data", "add", "missing-dir", "--name", "ds"), 2, "does not exist"),
        (("data", "add", "tree", "--name", "bad/name"), 2, "dataset name"),
        (("data", "add", "tree", "--name", "ds", "--region", "me-central-1"), 1, "region"),
        (("data", "rm", "ds"), 2, "names no version"),
    ],
)
def test_bad_input_is_one_error_line(
    yard: Yard, tree: Path, args: tuple[str, ...], code: int, needle: str
) -> None:
    r = yard(*args)
    assert r.code == code, (r.out, r.err)
    assert needle in r.error
    assert yard("data", "ls", "--json").json() == []


def test_checkout_into_a_directory_it_cannot_make_is_one_error_line(
    yard: Yard, tree: Path, tmp_path: Path
) -> None:
    """Was "unexpected OSError: [Errno 36] File name too long" (and PermissionError for a directory this
    user may not read or search); the modes case is in tests/data/test_checkout_unwritable.py."""
    assert yard("data", "add", tree, "--name", "ds").code == 0
    (tmp_path / "f").write_text("mine")
    for dest, needle in (
        (tmp_path / ("x" * 300), "too long"),
        (tmp_path / "f" / "sub", "is a file, not a directory"),
    ):
        r = yard("data", "checkout", "ds@1", dest)
        assert r.code == 2 and needle in r.error and "unexpected" not in r.err, r.err
        assert r.err.count("\n") == 1 and "Traceback" not in r.err


def test_malformed_table_warns_and_is_versioned(yard: Yard, tree: Path) -> None:
    (tree / "broken.parquet").write_bytes(b"PAR1 garbage")
    r = yard("data", "add", tree, "--name", "ds")
    assert r.code == 0
    assert "warning: broken.parquet: no statistics recorded" in r.err


def test_scan_and_anonymize(yard: Yard, tmp_path: Path) -> None:
    root = tmp_path / "pii"
    root.mkdir()
    (root / "users.csv").write_text("id,email\n1,alice.smith@example.com\n2,bob.jones@example.org\n")
    assert yard("data", "add", root, "--name", "users").code == 0
    r = yard("data", "scan", "users@1")
    assert r.code == 0 and "email" in r.out and "alice" not in r.out
    assert yard("data", "scan", "users@1", "--json").json()["tables"]["users.csv"]["email"]["email"] == 2
    for empty in (",,", " , ", ""):  # was read as "no --columns": every PII column, without a word
        r = yard("data", "anonymize", "users@1", "--columns", empty, "--method", "mask")
        assert r.code == 2 and "names no column" in r.err, (empty, r.err)
    r = yard("data", "anonymize", "users@1", "--columns", "email", "--method", "mask")
    assert r.code == 0, r.err
    assert "users@2: anonymized from users@1" in r.out
    assert yard("data", "scan", "users@2", "--json").json()["tables"] == {}


def test_scan_shows_file_names_redacted_and_anonymize_warns_of_pii_left(yard: Yard, tmp_path: Path) -> None:
    root = tmp_path / "pii"
    root.mkdir()
    (root / "t.csv").write_text("email,notes\na@example.com,call b@example.com\n")
    (root / "carol@example.com.txt").write_text("hi\n")
    assert yard("data", "add", root, "--name", "t").code == 0
    r = yard("data", "scan", "t@1")
    assert r.code == 0 and "[EMAIL].txt" in r.out and "(file name)" in r.out and "carol" not in r.out
    r = yard("data", "anonymize", "t@1", "--columns", "email")
    assert r.code == 0, r.err
    assert "warning: PII remains in t.csv, column notes: 1 email (not in --columns)" in r.err
    assert "b@example.com" not in r.err + r.out


def test_help_does_not_import_pyarrow() -> None:
    script = (
        "import sys\nfrom modelyard.cli import main\n"
        "try:\n    main(['data', '--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('pyarrow', 'torch', 'numpy') if m in sys.modules]\n"
        "assert not heavy, heavy\nprint('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("ok")
