"""Names at the filesystem's length limit (255 bytes a name): what add accepts, checkout writes back."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard import data
from modelyard.core import Platform
from modelyard.errors import UsageError
from modelyard.testing import same_tree

LONGEST = "x" * 251 + ".bin"  # 255 bytes, the most a name may have
LONGEST_UTF8 = "é" * 125 + ".txt"  # 254 bytes in 129 characters
# What messages are written with: lines, tabs, no-break spaces, joined emoji (U+200D), any script.
TEXT = "first line\n\tprix\u00a0: 5 €, family \U0001f468\u200d\U0001f469\u200d\U0001f467, ünïcode ✓"


def test_members_with_the_longest_names_check_out(platform: Platform, tmp_path: Path) -> None:
    """The add accepted them, but checkout wrote each file through a temp file named ".NAME.XXXXXXXX",
    past the limit: the version could not be checked out at all ("File name too long")."""
    root = tmp_path / "src"
    (root / "sub").mkdir(parents=True)
    (root / LONGEST).write_bytes(b"one\n")
    (root / "sub" / LONGEST_UTF8).write_bytes(b"two\n")
    ctx = platform.context()
    data.add_version(platform, ctx, root, "long")
    data.checkout(platform, ctx, "long@1", tmp_path / "out")
    assert same_tree(tmp_path / "out", root)
    assert same_tree(data.get("long@1", platform=platform, ctx=ctx), root)


def test_checkout_into_a_directory_with_the_longest_name(
    platform: Platform, tree: Path, tmp_path: Path
) -> None:
    """The temp directory was named ".DEST.checkout-XXXXXXXX" next to (or inside) DEST: a valid DEST
    name of more than 237 bytes was refused with "cannot write into ...: File name too long"."""
    ctx = platform.context()
    data.add_version(platform, ctx, tree, "ds")
    new = tmp_path / ("n" * 255)
    data.checkout(platform, ctx, "ds@1", new)
    assert same_tree(new, tree)
    empty = tmp_path / ("e" * 255)
    empty.mkdir()
    data.checkout(platform, ctx, "ds@1", empty)
    assert same_tree(empty, tree)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp dir left


@pytest.mark.parametrize(
    "message",
    [
        "bad byte \udcff",  # a non-UTF-8 byte of a shell argument, as Python decodes it
        "nul \x00 inside",  # PostgreSQL text refuses NUL
        "\x1b]52;c;ZXZpbA==\x07 sets the clipboard of whoever runs `yard data show`",
        "\x1b[2J clears the screen",
    ],
)
def test_a_message_with_control_characters_is_refused(
    any_platform: Platform, tree: Path, message: str
) -> None:
    """The first died with an unexpected UnicodeEncodeError, NUL did on PostgreSQL, and escape sequences
    were stored and printed raw by `yard data show` and `yard data ls` to another user's terminal."""
    from sqlalchemy import func, select

    from modelyard.core import list_records
    from modelyard.core._models import DatasetVersion

    ctx = any_platform.context()
    with pytest.raises(UsageError, match="control"):
        data.add_version(any_platform, ctx, tree, "ds", message=message)
    with any_platform.db.read() as s:
        assert s.execute(select(func.count()).select_from(DatasetVersion)).scalar_one() == 0
    assert list_records(any_platform, ctx)[-1]["outcome"] == "refused"
    # Lines and tabs are what a message is written with.
    info = data.add_version(any_platform, ctx, tree, "ds", message=TEXT)
    assert data.show(any_platform, ctx, "ds@1").message == info.message == TEXT


def test_a_tree_that_holds_the_home_or_lies_in_it_is_refused(platform: Platform, tmp_path: Path) -> None:
    """A project folder with its home inside (YARD_HOME=./.yard, or ~ with ~/.modelyard) failed every
    time with "~staging/.../manifest.jsonl changed while it was being versioned; add it again", since
    the add wrote into the tree it walked; had it not, it would have published the keys and database."""
    from modelyard.core import list_records

    home = platform.settings.home
    assert home.parent == tmp_path
    (tmp_path / "data.csv").write_bytes(b"a\n1\n")
    ctx = platform.context()
    (home / "artifacts" / "objects").mkdir(exist_ok=True)
    for root in (tmp_path, home, home / "artifacts", home / "artifacts" / "objects", home / "keys"):
        with pytest.raises(UsageError, match="modelyard's own"):
            data.add_version(platform, ctx, root, "ds")
        assert list_records(platform, ctx)[-1]["outcome"] == "refused"
    assert data.list_datasets(platform, ctx) == []
    assert not list((home / "artifacts" / "~staging").iterdir())
    assert data.add_version(platform, ctx, tmp_path / "data.csv", "ds").version == 1  # beside it is fine
    (home / "data" / "normalise").mkdir(parents=True)  # where the quickstart keeps its data
    (home / "data" / "normalise" / "train.jsonl").write_text('{"source": "a", "target": "b"}\n')
    assert data.add_version(platform, ctx, home / "data" / "normalise", "normalise").version == 1


def test_a_tree_that_holds_a_store_outside_the_home_is_refused(tmp_path: Path) -> None:
    from modelyard.testing import make_platform

    store = tmp_path / "project" / "store"
    store.mkdir(parents=True)
    (tmp_path / "project" / "data.csv").write_bytes(b"a\n1\n")
    with make_platform(tmp_path / "home", artifact_uri=store.as_uri()) as platform:
        with pytest.raises(UsageError, match="modelyard's own"):
            data.add_version(platform, platform.context(), tmp_path / "project", "ds")
        assert data.list_datasets(platform, platform.context()) == []
