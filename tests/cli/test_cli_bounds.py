"""Numbers given to the CLI that no run could honour are usage errors, refused before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.testing import Yard

RECIPE = Path(__file__).resolve().parents[2] / "examples" / "flan-t5" / "recipe-tiny.yaml"


@pytest.mark.parametrize("nproc", ["0", "-2"])
def test_train_nproc_below_one_is_refused(yard: Yard, nproc: str) -> None:
    # It was taken for one process: a typo such as --nproc 0 trained alone, without a word.
    r = yard("train", RECIPE, "--nproc", nproc)
    assert r.code == 2
    assert "--nproc" in r.error


@pytest.mark.parametrize("project", ["", "../x", "a b"])
def test_project_option_is_a_valid_name(yard: Yard, project: str) -> None:
    # -p "" acted in the default project (a script's unset $PROJECT reached it), and -p ../x was told
    # `yard projects create ../x makes it`, a name create refuses.
    assert yard("init").code == 0
    r = yard("--project", project, "data", "ls")
    assert r.code == 2
    assert r.error.startswith("error: --project: project name") and "is not valid" in r.error
    assert yard("-p", "default", "data", "ls").code == 0


@pytest.mark.parametrize(
    "args",
    [
        ["data", "add", "tree", "--name", "ds"],
        ["artifacts", "put", "tree/a.txt"],
        ["projects", "create", "p2"],
    ],
)
@pytest.mark.parametrize("region", ["", "Not A Region"])
def test_region_option_is_a_valid_region(yard: Yard, tmp_path: Path, args: list[str], region: str) -> None:
    # --region "" was read as no --region: the data (or a new project, for good) went to the default region
    # instead of being refused, as `yard init --region ""` is.
    assert yard("init").code == 0
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "a.txt").write_text("a")
    r = yard(*args, "--region", region)
    assert r.code == 2
    assert r.error.startswith(f"error: --region: region {region!r} must be")
    assert yard("data", "ls", "--json").json() == [] and yard("artifacts", "ls", "--json").json() == []
    assert [p for p in yard("projects", "ls").out.split() if p == "p2"] == []


def test_audit_ls_limit_is_bounded(yard: Yard) -> None:
    # Past SQLite's integers it was "unexpected OverflowError".
    assert yard("init").code == 0
    r = yard("audit", "ls", "--limit", "99999999999999999999")
    assert r.code == 2 and "--limit" in r.error and "unexpected" not in r.err
    assert yard("audit", "ls", "--limit", "1000000", "--json").code == 0


@pytest.mark.parametrize("seed", ["-1", "4294967296", "99999999999999999999"])
def test_tune_seed_outside_numpys_range_is_refused(yard: Yard, seed: str) -> None:
    # It reached the sampler: "unexpected ValueError: Seed must be between 0 and 2**32 - 1".
    r = yard("tune", RECIPE, "--seed", seed, "--trials", "1")
    assert r.code == 2 and "--seed" in r.error and "unexpected" not in r.err


def test_debug_works_where_the_hint_puts_it(yard: Yard) -> None:
    # "rerun with --debug" was taken at its word: `yard data show x@1 --debug` said "No such option".
    assert yard("init").code == 0
    r = yard("data", "show", "nope@1", "--debug")
    assert r.code == 1
    assert "Traceback" in r.err and r.err_lines[-1].startswith("error: dataset 'nope' not found")
    r = yard("jobs", "submit", "nope.yaml", "--", "--debug")  # after --, it is the job's own argument
    assert r.code == 2 and "Traceback" not in r.err


def test_project_option_after_the_command(yard: Yard) -> None:
    # docs/jobs.md: "`yard worker` runs the jobs of its project (`-p`)"; `yard worker -p research` and
    # `yard data ls --project research` were refused as "No such option".
    assert yard("init").code == 0
    assert yard("projects", "create", "research").code == 0
    assert yard("-p", "research", "artifacts", "put", "--name", "r.txt", RECIPE).code == 0
    for args in (["-p", "research"], ["--project", "research"], ["--project=research"]):
        r = yard("artifacts", "ls", *args, "--json")
        assert [a["name"] for a in r.json()] == ["r.txt"], args
    assert yard("artifacts", "ls", "--json").json() == []  # the default project's
    r = yard("data", "ls", "-p", "nope")
    assert r.code == 1 and "project 'nope' does not exist" in r.error
    # Another option's value that reads like a root option stays that option's value.
    data = Path("d")
    data.mkdir()
    (data / "a.txt").write_text("a")
    r = yard("data", "add", data, "--name", "ds", "--message", "-p", "-p", "research")
    assert r.code == 0, r.err
    r = yard("-p", "research", "data", "show", "ds@1", "--json")
    assert r.code == 0 and r.json()["message"] == "-p", r.out


def test_quickstart_home_that_is_a_file_is_refused(yard: Yard, tmp_path: Path) -> None:
    # It was "unexpected NotADirectoryError".
    (tmp_path / "notes").write_text("mine")
    r = yard("quickstart", "--home", "notes")
    assert r.code == 2 and "is not a directory; choose another --home" in r.error
    assert (tmp_path / "notes").read_text() == "mine"
