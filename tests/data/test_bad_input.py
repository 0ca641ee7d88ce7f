"""Bad input gets a clear error and changes nothing: hostile names, symlinks, missing paths, bad specs,
unknown versions, roles, tenants, residency; and removal rules."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from modelyard.core import Platform, create_project, list_records
from modelyard.core._models import Blob, Dataset, DatasetVersion
from modelyard.data import add_version, checkout, diff, remove, show
from modelyard.errors import (
    NotFoundError,
    PermissionDeniedError,
    ResidencyError,
    UnsafePathError,
    UsageError,
)
from modelyard.testing import actor

MakeTree = Callable[[Path, dict[str, bytes]], Path]


def state(platform: Platform) -> tuple[int, int, int, int]:
    """Datasets, versions, blob rows and stored objects: what a refused add must leave untouched."""
    with platform.db.read() as s:
        counts = [
            s.execute(select(func.count()).select_from(t)).scalar_one()
            for t in (Dataset, DatasetVersion, Blob)
        ]
    objects = platform.settings.home / "artifacts" / "objects"
    n = sum(1 for p in objects.rglob("*") if p.is_file()) if objects.exists() else 0
    staging = platform.settings.home / "artifacts" / "~staging"
    left = [p for p in staging.rglob("*") if p.is_file()] if staging.exists() else []
    assert left == [], f"temp files left in staging: {left}"
    return counts[0], counts[1], counts[2], n


def last_audit(platform: Platform) -> dict[str, object]:
    return list_records(platform, platform.context())[-1]


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("back\\slash.txt", "backslash"),
        ("pct%2e%2e.txt", "percent-encoded"),
        ("ctl\x07.txt", "control"),
        ("frag#x.txt", "fragment"),
        ("...", "dots"),
    ],
)
def test_odd_member_names_are_refused(platform: Platform, tree: Path, name: str, problem: str) -> None:
    (tree / "sub" / name).write_bytes(b"x")
    before = state(platform)
    with pytest.raises(UnsafePathError, match=problem):
        add_version(platform, platform.context(), tree, "ds")
    assert state(platform) == before
    rec = last_audit(platform)
    assert rec["action"] == "dataset.write" and rec["outcome"] == "refused"


def test_symlink_escaping_the_tree_is_refused(platform: Platform, tree: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("outside")
    os.symlink(secret, tree / "sub" / "link.txt")
    before = state(platform)
    with pytest.raises(UnsafePathError, match=r"link\.txt is a symbolic link"):
        add_version(platform, platform.context(), tree, "ds")
    assert state(platform) == before


def test_symlinked_directory_and_root_are_refused(platform: Platform, tree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.txt").write_text("x")
    os.symlink(outside, tree / "escape")
    with pytest.raises(UnsafePathError, match="symbolic link"):
        add_version(platform, platform.context(), tree, "ds")
    os.unlink(tree / "escape")
    os.symlink(tree, tmp_path / "root-link")
    with pytest.raises(UnsafePathError, match="symbolic link"):
        add_version(platform, platform.context(), tmp_path / "root-link", "ds")
    assert state(platform)[:2] == (0, 0)


def test_failure_after_staging_some_chunks_removes_their_objects(
    platform: Platform, tmp_path: Path, make_tree: MakeTree, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelyard.data import _manifest

    monkeypatch.setattr(_manifest, "CHUNK", 4)
    files = {f"f{i:02d}.bin": os.urandom(100) for i in range(10)}
    root = make_tree(tmp_path / "t", files)
    os.symlink("/etc/passwd", root / "zz-last-link")  # sorted last: earlier chunks were staged
    before = state(platform)
    with pytest.raises(UnsafePathError):
        add_version(platform, platform.context(), root, "ds")
    assert state(platform) == before


def test_missing_path_and_empty_tree(platform: Platform, tmp_path: Path) -> None:
    ctx = platform.context()
    with pytest.raises(UsageError, match="does not exist"):
        add_version(platform, ctx, tmp_path / "nope", "ds")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no files"):
        add_version(platform, ctx, tmp_path / "empty", "ds")
    assert state(platform)[:2] == (0, 0)


@pytest.mark.parametrize("name", ["", "../x", "a/b", "-lead", "x" * 200, "sp ace", "ds\n"])
def test_bad_dataset_names(platform: Platform, tree: Path, name: str) -> None:
    with pytest.raises(UsageError):
        add_version(platform, platform.context(), tree, name)
    assert state(platform)[:2] == (0, 0)


def test_a_final_newline_makes_no_second_dataset(platform: Platform, tree: Path) -> None:
    """A regex `$` matches before a final newline: "ds\n" was a second dataset, listed as "ds", and the
    spec "ds\n" read dataset "ds"."""
    ctx = platform.context()
    add_version(platform, ctx, tree, "ds")
    with pytest.raises(UsageError, match="not valid"):
        add_version(platform, ctx, tree, "ds\n")
    with pytest.raises(UsageError, match="not valid"):
        show(platform, ctx, "ds\n")
    assert state(platform)[:2] == (1, 1)


@pytest.mark.parametrize("spec", ["ds", "ds@", "ds@x", "ds@0", "ds@-1", "ds@1@2", "@1", "ds@1.5", "ds@٣"])
def test_wrong_version_syntax(platform: Platform, tree: Path, tmp_path: Path, spec: str) -> None:
    ctx = platform.context()
    add_version(platform, ctx, tree, "ds")
    with pytest.raises(UsageError, match="NAME@VERSION"):
        checkout(platform, ctx, spec, tmp_path / "out")
    with pytest.raises(UsageError):
        remove(platform, ctx, spec)
    assert not (tmp_path / "out").exists()


def test_unknown_versions_are_not_found(platform: Platform, tree: Path, tmp_path: Path) -> None:
    ctx = platform.context()
    add_version(platform, ctx, tree, "ds")
    for call in (
        lambda: checkout(platform, ctx, "ds@9", tmp_path / "out"),
        lambda: diff(platform, ctx, "ds@1", "ds@9"),
        lambda: remove(platform, ctx, "ds@9"),
        lambda: show(platform, ctx, "other@1"),
    ):
        with pytest.raises(NotFoundError):
            call()
    assert not (tmp_path / "out").exists()
    assert state(platform)[1] == 1


def test_viewer_cannot_add_or_remove(platform: Platform, tree: Path) -> None:
    admin = platform.context()
    add_version(platform, admin, tree, "ds")
    viewer = actor(platform, admin, "vera", "viewer")
    before = state(platform)
    with pytest.raises(PermissionDeniedError, match=r"dataset\.write"):
        add_version(platform, viewer, tree, "ds2")
    with pytest.raises(PermissionDeniedError, match=r"dataset\.delete"):
        remove(platform, viewer, "ds@1")
    assert state(platform) == before
    assert show(platform, viewer, "ds@1").version == 1  # reading is allowed
    rec = last_audit(platform)
    assert rec["outcome"] == "denied" and rec["actor"] == "vera"


def test_another_projects_dataset_reads_as_not_found(platform: Platform, tree: Path, tmp_path: Path) -> None:
    admin = platform.context()
    add_version(platform, admin, tree, "secret-ds")
    create_project(platform, admin, "other")
    other = platform.context(project="other")
    for call in (
        lambda: show(platform, other, "secret-ds@1"),
        lambda: checkout(platform, other, "secret-ds@1", tmp_path / "out"),
        lambda: remove(platform, other, "secret-ds@1"),
    ):
        with pytest.raises(NotFoundError, match="not found in project 'other'"):
            call()
    # The same name in the other project is an independent dataset starting at version 1.
    assert add_version(platform, other, tree, "secret-ds").version == 1


# -- residency -------------------------------------------------------------------------------------------


def test_region_other_than_the_projects_is_refused_and_audited(platform: Platform, tree: Path) -> None:
    before = state(platform)
    with pytest.raises(ResidencyError, match="me-central-1"):
        add_version(platform, platform.context(), tree, "ds", region="me-central-1")
    assert state(platform) == before
    rec = last_audit(platform)
    assert rec["outcome"] == "refused" and rec["action"] == "dataset.write"


def test_store_of_another_region_is_refused(home: Path, tree: Path) -> None:
    from modelyard.core import Platform as P
    from modelyard.testing import make_platform

    make_platform(home).close()
    (home / "artifacts" / "store.json").write_text(json.dumps({"region": "eu-west-1"}))
    with P() as platform:
        before = state(platform)
        with pytest.raises(ResidencyError, match="eu-west-1"):
            add_version(platform, platform.context(), tree, "ds")
        assert state(platform) == before
        assert last_audit(platform)["outcome"] == "refused"


# -- remove ---------------------------------------------------------------------------------------------


def _depend(platform: Platform, ref: str) -> None:
    from modelyard.tracking._lineage import add_edges

    ctx = platform.context()
    with platform.db.write() as s:
        add_edges(s, ctx, [(ref, "run:" + "a" * 32, "input"), ("run:" + "a" * 32, "model:clf@1", "produced")])


def test_remove_is_refused_while_a_model_depends_on_it_unless_admin_forces(
    platform: Platform, tree: Path
) -> None:
    admin = platform.context()
    add_version(platform, admin, tree, "ds")
    (tree / "a.txt").write_text("v2")
    add_version(platform, admin, tree, "ds")
    _depend(platform, "dataset:ds@1")
    engineer = actor(platform, admin, "erin", "engineer")
    with pytest.raises(UsageError, match="model:clf@1"):
        remove(platform, engineer, "ds@1")
    with pytest.raises(PermissionDeniedError, match=r"dataset\.delete\.force"):
        remove(platform, engineer, "ds@1", force=True)
    assert state(platform)[1] == 2
    assert remove(platform, engineer, "ds@2").version == 2  # nothing depends on it
    assert remove(platform, admin, "ds@1", force=True).version == 1
    rec = last_audit(platform)
    assert (rec["action"], rec["outcome"], rec["resource"]) == ("dataset.delete.force", "ok", "dataset:ds@1")
    assert state(platform)[1] == 0
    # Numbers are never reused after a delete.
    (tree / "a.txt").write_text("v3")
    assert add_version(platform, admin, tree, "ds").version == 3
