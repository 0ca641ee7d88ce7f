from __future__ import annotations

import builtins
import os
import pathlib
from pathlib import Path
from typing import Any

import pytest

from modelyard.core._paths import safe_join, safe_key
from modelyard.errors import UnsafePathError

HOSTILE = [
    # emptiness and size
    "",
    "a" * 1025,
    "/".join(["a" * 255] * 4) + "/b",
    "a/" + "b" * 256,
    "a/" + "\u00e9" * 128,
    # parent directory
    "..",
    "../x",
    "a/../b",
    "a/..",
    "../../../../etc/passwd",
    # absolute paths
    "/x",
    "//x",
    "/etc/passwd",
    "C:\\x",
    "C:x",
    "c:/x",
    # backslashes
    "a\\b",
    "..\\x",
    # NUL and control or invisible characters
    "a\x00b",
    "a\nb",
    "a\rb",
    "a\x1bb",
    "a\x7fb",
    "a\u0085b",
    "a\u200bb",
    "a\u202eb",
    "a\u2028b",
    # percent encoding, single and repeated
    "%2e%2e%2f",
    "%2e%2e/x",
    "%2E%2E%2Fx",
    "a%2fb",
    "a%5cb",
    "a%00b",
    "%252e%252e%252f",
    "%25252e%25252e%25252f",
    "..%c0%af",
    "%u002e%u002e/x",
    # URL fragments, queries and path parameters
    "a#b",
    "a?b",
    "a;b",
    "weights.bin;.txt",
    # home directories
    "~",
    "~/x",
    "~root/x",
    # dot-only and empty segments
    ".",
    "./x",
    "a/./b",
    "...",
    "a/..../b",
    ".. ",
    ". .",
    " ",
    "a//b",
    "a/",
    # Unicode look-alikes
    "a\uff0fb",
    "\uff0e\uff0e/x",
    "\u2024\u2024/x",
    "\u2025/x",
    "a/\u2026",
    "\ufe52\ufe52/x",
    "a\uff3cb",
    "a\ufe68b",
    "a\u2215b",
    "a\u2044b",
    "\uff5e/x",
    "C\uff1ax",
    "a\uff05" + "2e",
    "a\uff03b",
]

SAFE = [
    "a",
    "models/v1/weights.safetensors",
    "data/train-00001-of-00004.parquet",
    ".hidden",
    "a/.b/c",
    "a..b",
    "a~",
    "x/~y",
    "100%.txt",
    "50% off",
    "%zz",
    "file (1).txt",
    "checkpoints/2024-01-01T12:00:00",
    "\u03c4/\u6a21\u578b.bin",
    "/".join(["a" * 255] * 4),
    "a/" + "b" * 255,
]


@pytest.mark.parametrize("key", HOSTILE)
def test_hostile_keys_are_refused(key: str) -> None:
    with pytest.raises(UnsafePathError) as caught:
        safe_key(key)
    message = str(caught.value)
    assert "unsafe key" in message and "expected a relative POSIX path" in message
    assert caught.value.code == "unsafe_path"


@pytest.mark.parametrize("key", [b"a", None, 1, Path("a")])
def test_non_strings_are_refused(key: Any) -> None:
    with pytest.raises(UnsafePathError, match="must be a string"):
        safe_key(key)


@pytest.mark.parametrize("key", SAFE)
def test_safe_keys_pass_unchanged(key: str) -> None:
    assert safe_key(key) == key


def test_keys_are_normalised_to_nfc() -> None:
    assert safe_key("caf" + "e\u0301/x") == "caf\u00e9/x"


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("../x", "'..' (parent directory)"),
        ("/x", "absolute path"),
        ("a\\b", "backslash"),
        ("%252e%252e%252f", "percent-encoded sequence '%25'"),
        ("a#b", "URL fragment"),
        ("a\uff0fb", "U+FF0F (FULLWIDTH SOLIDUS) is a look-alike of '/'"),
        ("\u2024\u2024/x", "U+2024 (ONE DOT LEADER) is a look-alike of '.'"),
        ("a\x00b", "U+0000"),
        ("a//b", "empty segment"),
    ],
)
def test_messages_say_what_is_wrong(key: str, reason: str) -> None:
    with pytest.raises(UnsafePathError) as caught:
        safe_key(key, what="dataset member")
    assert reason in str(caught.value)
    assert str(caught.value).startswith("unsafe dataset member")


def test_long_keys_are_shortened_in_messages() -> None:
    with pytest.raises(UnsafePathError) as caught:
        safe_key("a" * 5000)
    assert len(str(caught.value)) < 300


# Every way safe_join could touch the filesystem; each one fails the test if called.
_FS_CALLS: list[tuple[Any, str]] = [
    (os, "lstat"),
    (os, "stat"),
    (os, "open"),
    (os, "scandir"),
    (os, "listdir"),
    (os.path, "realpath"),
    (os.path, "exists"),
    (os.path, "islink"),
    (builtins, "open"),
    (pathlib.Path, "exists"),
    (pathlib.Path, "resolve"),
    (pathlib.Path, "stat"),
    (pathlib.Path, "lstat"),
    (pathlib.Path, "is_symlink"),
]


def _fs_calls_during(monkeypatch: pytest.MonkeyPatch, key: str) -> tuple[list[str], BaseException | None]:
    calls: list[str] = []

    def spy(name: str) -> Any:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            calls.append(name)
            raise RuntimeError(f"filesystem call {name}")

        return refuse

    outcome: BaseException | None = None
    with monkeypatch.context() as patch:
        for target, name in _FS_CALLS:
            patch.setattr(target, name, spy(name))
        try:
            safe_join(Path("/srv/yard/artifacts"), key)
        except BaseException as exc:  # checked after the patches are gone
            outcome = exc
    return calls, outcome


@pytest.mark.parametrize("key", HOSTILE)
def test_string_attacks_are_refused_before_any_filesystem_call(
    monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    calls, outcome = _fs_calls_during(monkeypatch, key)
    assert calls == []
    assert isinstance(outcome, UnsafePathError)


def test_filesystem_spies_do_fire_for_a_safe_key(monkeypatch: pytest.MonkeyPatch) -> None:
    calls, outcome = _fs_calls_during(monkeypatch, "models/w.bin")
    assert calls, "the spies must catch safe_join's filesystem checks, or the test above proves nothing"
    assert isinstance(outcome, RuntimeError)


def test_safe_join_stays_inside_root(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    assert safe_join(tmp_path, "a/b/c.bin") == tmp_path.resolve() / "a" / "b" / "c.bin"
    assert safe_join(tmp_path, "new/dir/x") == tmp_path.resolve() / "new" / "dir" / "x"


def test_symlinked_directory_escape_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret").write_text("s")
    (root / "evil").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        safe_join(root, "evil/secret")
    with pytest.raises(UnsafePathError, match="symbolic link"):
        safe_join(root, "evil/not-yet-written")


def test_symlinks_pointing_inside_the_root_are_refused_too(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "f").write_text("x")
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    (tmp_path / "real" / "link").symlink_to(tmp_path / "real" / "f")
    with pytest.raises(UnsafePathError):
        safe_join(tmp_path, "alias/f")
    with pytest.raises(UnsafePathError):
        safe_join(tmp_path, "real/link")


def test_dangling_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere" / "x")
    with pytest.raises(UnsafePathError):
        safe_join(tmp_path, "dangling")


def test_a_symlinked_root_is_trusted(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert safe_join(tmp_path / "link", "x/y") == (tmp_path / "real" / "x" / "y").resolve()


def test_a_file_in_the_middle_of_a_key_is_not_an_error_here(tmp_path: Path) -> None:
    # safe_join only guards the boundary; opening "f/x" later fails with NotADirectoryError.
    (tmp_path / "f").write_text("x")
    assert safe_join(tmp_path, "f/x") == tmp_path.resolve() / "f" / "x"


# -- safe_child: the walk's per-segment check must agree with safe_key on the whole name -------------------

_CHILD_NAMES = [
    "x",
    "file (1).txt",
    "weights.bin",
    "-dash",
    "a b",
    "~tilde",
    "C:x",
    "..",
    ".",
    "...",
    " ",
    "",
    "a%2fb",
    "100%.txt",
    "a#b",
    "a\\b",
    "a\x00b",
    "a\u200bb",
    "a\uff0fb",
    "caf\u00e9",
    "cafe\u0301",
    "\u6a21\u578b.bin",
    "b" * 255,
    "b" * 256,
    "\u00e9" * 128,
]


@pytest.mark.parametrize("parent", ["a", "data/train", "/".join(["x" * 250] * 4)])
@pytest.mark.parametrize("name", _CHILD_NAMES)
def test_safe_child_agrees_with_safe_key(parent: str, name: str) -> None:
    from modelyard.core._paths import safe_child

    try:
        expected: str | None = safe_key(f"{parent}/{name}")
    except UnsafePathError:
        expected = None
    if expected is None:
        with pytest.raises(UnsafePathError):
            safe_child(parent, name)
    else:
        assert safe_child(parent, name) == expected


@pytest.mark.parametrize("name", _CHILD_NAMES)
def test_safe_child_of_the_root_is_safe_key(name: str) -> None:
    from modelyard.core._paths import safe_child

    try:
        expected: str | None = safe_key(name)
    except UnsafePathError:
        expected = None
    if expected is None:
        with pytest.raises(UnsafePathError):
            safe_child("", name)
    else:
        assert safe_child("", name) == expected


def test_safe_child_takes_one_segment() -> None:
    from modelyard.core._paths import safe_child

    with pytest.raises(UnsafePathError, match="contains '/'"):
        safe_child("a", "b/c")


def test_a_file_with_a_name_of_255_bytes_is_written_atomically(tmp_path: Path) -> None:
    """The temp file beside it was named after it in full (".NAME.xxxxxxxx.tmp"), past the 255 bytes a
    name may have: a valid name could not be written."""
    from modelyard.core._paths import write_file

    for name in ("b" * 255, "\u00e9" * 127):  # 255 and 254 bytes
        write_file(tmp_path / name, "x")
        assert (tmp_path / name).read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["b" * 255, "\u00e9" * 127])
