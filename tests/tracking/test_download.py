"""Downloading a run's artifacts: verified reads through the artifact store, safe paths, no partial trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.core._models import RunArtifact
from modelyard.errors import IntegrityError, NotFoundError, UnsafePathError, UsageError
from modelyard.tracking import Client
from modelyard.tracking._store import download_artifacts


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def run_id(client: Client, tmp_path: Path) -> str:
    model = tmp_path / "src" / "model"
    (model / "sub").mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"\x00weights" * 500)
    (model / "config.json").write_text('{"model_type": "t5"}')
    (model / "sub" / "spiece.model").write_bytes(b"sp" * 100)
    recipe = tmp_path / "src" / "recipe.yaml"
    recipe.write_text("data: {train: x@1}\n")
    with client.start_run("dl", capture=False) as run:
        run.log_artifact(model, artifact_path="model")
        run.log_artifact(recipe)
        run.log_dict({"rougeL": 0.5}, "eval/report.json")
    return run.id


def test_a_folder_keeps_relative_paths_and_matches_the_logged_bytes(
    client: Client, run_id: str, tmp_path: Path
) -> None:
    dest = tmp_path / "out" / "model"
    got = client.download_artifacts(run_id, "model", dest)
    assert got == dest
    assert _tree(dest) == _tree(tmp_path / "src" / "model")
    # a trailing slash names the same folder; an existing empty directory is fine
    again = tmp_path / "again"
    again.mkdir()
    assert client.download_artifacts(run_id, "model/", again) == again
    assert _tree(again) == _tree(dest)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_one_file_and_everything(client: Client, run_id: str, tmp_path: Path) -> None:
    got = client.download_artifacts(run_id, "recipe.yaml", tmp_path / "r")
    assert got == tmp_path / "r" / "recipe.yaml"
    assert got.read_text() == "data: {train: x@1}\n"
    assert client.download_artifacts(run_id, "eval/report.json", tmp_path / "e").name == "report.json"
    everything = client.download_artifacts(run_id, "", tmp_path / "all")
    assert sorted(_tree(everything)) == [
        "eval/report.json",
        "model/config.json",
        "model/model.safetensors",
        "model/sub/spiece.model",
        "recipe.yaml",
    ]


def test_default_destination_is_a_new_temp_directory(client: Client, run_id: str) -> None:
    import shutil

    got = client.download_artifacts(run_id, "model")
    try:
        assert got.is_dir() and (got / "config.json").is_file()
    finally:
        shutil.rmtree(got)


def test_a_non_empty_destination_is_refused_unless_overwrite(
    client: Client, run_id: str, tmp_path: Path
) -> None:
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / "config.json").write_text("old")
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="is not empty"):
        client.download_artifacts(run_id, "model", dest)
    assert (dest / "config.json").read_text() == "old"
    client.download_artifacts(run_id, "model", dest, overwrite=True)
    assert (dest / "config.json").read_text() == '{"model_type": "t5"}'
    assert (dest / "keep.txt").read_text() == "mine"
    assert (dest / "sub" / "spiece.model").is_file()
    # a file where a directory belongs, and a symlinked destination
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError, match="not a directory"):
        client.download_artifacts(run_id, "model", tmp_path / "f")
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        client.download_artifacts(run_id, "model", tmp_path / "link")
    assert not (tmp_path / "elsewhere").exists()


def test_missing_paths_and_runs_are_clear_errors(client: Client, run_id: str, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match=r"no artifact 'weights' and none under 'weights/'.*model/config"):
        client.download_artifacts(run_id, "weights", tmp_path / "w")
    with pytest.raises(NotFoundError, match="not found"):
        client.download_artifacts("0" * 32, "model", tmp_path / "w")
    with pytest.raises(UsageError, match="run id"):
        client.download_artifacts("nope", "model", tmp_path / "w")
    with client.start_run("dl", capture=False) as empty:
        pass
    with pytest.raises(NotFoundError, match="has no artifacts"):
        client.download_artifacts(empty.id, "", tmp_path / "w")
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("prefix", ["../model", "/model", "model/../recipe.yaml", "%2e%2e/x", "a\\b"])
def test_unsafe_prefixes_are_refused(client: Client, run_id: str, tmp_path: Path, prefix: str) -> None:
    with pytest.raises(UnsafePathError):
        client.download_artifacts(run_id, prefix, tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_a_hostile_recorded_path_writes_nothing_outside(client: Client, run_id: str, tmp_path: Path) -> None:
    """Defence in depth: even a row written around the services cannot steer a download out of dest."""
    ((_, digest, _),) = [a for a in client.list_artifacts(run_id) if a[0] == "recipe.yaml"]
    from modelyard.core._platform import utcnow

    with client.platform.db.write() as s:
        s.add(
            RunArtifact(
                run_id=run_id, path="model/../../evil.txt", digest=digest, size=1, created_at=utcnow()
            )
        )
    with pytest.raises(UnsafePathError, match=r"'\.\.'"):
        client.download_artifacts(run_id, "model", tmp_path / "out" / "d")
    assert not list(tmp_path.rglob("evil.txt"))
    assert not (tmp_path / "out" / "d").exists()


def test_a_tampered_object_fails_verification_and_writes_nothing(
    client: Client, run_id: str, tmp_path: Path
) -> None:
    objects = [p for p in (client.platform.settings.home / "artifacts").rglob("*") if p.is_file()]
    objects = [p for p in objects if "objects" in p.parts]
    assert objects
    for p in objects:
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0x01
        p.write_bytes(bytes(data))
    dest = tmp_path / "d"
    with pytest.raises(IntegrityError, match="failed verification"):
        client.download_artifacts(run_id, "model", dest)
    assert not dest.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".d.download-")]


def test_another_projects_run_reads_as_not_found(client: Client, run_id: str, tmp_path: Path) -> None:
    from modelyard.core import create_project

    platform = client.platform
    create_project(platform, client.ctx, "other")
    other = platform.context(project="other")
    with pytest.raises(NotFoundError, match="not found in project 'other'"):
        download_artifacts(platform, other, run_id, "model", tmp_path / "x")
    assert not (tmp_path / "x").exists()
