"""The lineage graph service and `yard lineage show`: trees both ways, cycles, depth, tenants, bad refs."""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

import pytest
from sqlalchemy import func, select

from modelyard.cli import main
from modelyard.core import Context, Platform, Role, create_project
from modelyard.core._models import LineageEdge
from modelyard.errors import NotFoundError, UsageError
from modelyard.testing import actor, make_platform
from modelyard.tracking import lineage, parse_ref
from modelyard.tracking._lineage import add_edges, downstream_refs

RUN = "a" * 32
DIGEST = "b" * 64


@pytest.fixture
def admin(platform: Platform) -> Context:
    return platform.context()


def _edges(platform: Platform, ctx: Context, edges: list[tuple[str, str, str]]) -> None:
    with platform.db.write() as s:
        add_edges(s, ctx, edges)


def _refs(node: object) -> list[str]:
    return [c.ref for c in node.children]  # type: ignore[attr-defined]


def test_upstream_and_downstream_trees(platform: Platform, admin: Context) -> None:
    _edges(
        platform,
        admin,
        [
            ("dataset:raw@1", "dataset:clean@1", "anonymized"),
            ("dataset:clean@1", f"run:{RUN}", "input"),
            (f"run:{RUN}", f"artifact:{DIGEST}", "output"),
            (f"run:{RUN}", "model:t5@1", "registered"),
        ],
    )
    up, down = lineage(platform, admin, f"run:{RUN}")
    assert _refs(up) == ["dataset:clean@1"]
    assert _refs(up.children[0]) == ["dataset:raw@1"]
    assert up.children[0].relation == "input"
    assert sorted(_refs(down)) == [f"artifact:{DIGEST}", "model:t5@1"]
    # shorthand forms resolve to the same object
    assert parse_ref(RUN) == f"run:{RUN}"
    assert parse_ref(DIGEST) == f"artifact:{DIGEST}"
    assert parse_ref("raw@1") == "dataset:raw@1"
    with platform.db.read() as s:
        assert downstream_refs(s, admin.project_id, "dataset:raw@1") == {
            "dataset:clean@1",
            f"run:{RUN}",
            f"artifact:{DIGEST}",
            "model:t5@1",
        }


def test_edges_are_idempotent_and_cycles_terminate(platform: Platform, admin: Context) -> None:
    cycle = [("dataset:a@1", "dataset:b@1", "x"), ("dataset:b@1", "dataset:a@1", "x")]
    _edges(platform, admin, cycle)
    _edges(platform, admin, cycle)  # recorded once
    up, down = lineage(platform, admin, "dataset:a@1")
    with platform.db.read() as s:
        assert s.scalar(select(func.count()).select_from(LineageEdge)) == 2
    assert _refs(up) == ["dataset:b@1"]
    assert _refs(down) == ["dataset:b@1"]
    assert _refs(down.children[0]) == ["dataset:a@1"]
    assert down.children[0].children[0].truncated  # shown once, not followed again


def test_depth_limit_marks_truncation(platform: Platform, admin: Context) -> None:
    chain = [(f"dataset:d@{i}", f"dataset:d@{i + 1}", "derived") for i in range(1, 6)]
    _edges(platform, admin, chain)
    _, down = lineage(platform, admin, "dataset:d@1", depth=2)
    assert _refs(down) == ["dataset:d@2"]
    leaf = down.children[0].children[0]
    assert leaf.ref == "dataset:d@3" and leaf.truncated and not leaf.children
    with pytest.raises(UsageError, match="depth"):
        lineage(platform, admin, "dataset:d@1", depth=0)
    for bad in ("3", 2.5, True, None):  # a raw TypeError ("'<=' not supported") or taken as 1
        with pytest.raises(UsageError, match="depth must be an integer"):
            lineage(platform, admin, "dataset:d@1", depth=bad)  # type: ignore[arg-type]


@pytest.mark.postgres
@pytest.mark.slow
def test_a_dataset_read_by_more_runs_than_one_query_can_bind_still_walks(
    postgres_url: str, home: Path
) -> None:
    # The next level's 66,000 runs went into one IN list: PostgreSQL binds at most 65,535 parameters, so
    # `yard lineage show` and `yard data rm` of a widely used dataset version failed with a BackendError.
    p = make_platform(home, database_url=postgres_url)
    try:
        ctx = p.context()
        runs = [f"run:{i:032x}" for i in range(66_000)]
        _edges(
            p, ctx, [("dataset:d@1", r, "input") for r in runs] + [(runs[-1], f"artifact:{DIGEST}", "output")]
        )
        _, down = lineage(p, ctx, "dataset:d@1", depth=2)
        assert _refs(down) == runs  # in the order the edges were recorded
        assert _refs(down.children[-1]) == [f"artifact:{DIGEST}"]
        _, cut = lineage(p, ctx, "dataset:d@1", depth=1)
        assert [c.ref for c in cut.children if c.truncated] == [runs[-1]]  # only it has more
        with p.db.read() as s:
            assert len(downstream_refs(s, ctx.project_id, "dataset:d@1")) == 66_001
    finally:
        p.close()


def test_other_projects_see_nothing(platform: Platform, admin: Context) -> None:
    _edges(platform, admin, [("dataset:x@1", f"run:{RUN}", "input")])
    create_project(platform, admin, "tenant-b")
    me = pwd.getpwuid(os.geteuid()).pw_name
    other = platform.context(project="tenant-b")
    assert other.user == me
    with pytest.raises(NotFoundError, match=f"run:{RUN} not found in project 'tenant-b'"):
        lineage(platform, other, f"run:{RUN}")  # its edges are the default project's, and so is the run


def test_an_unknown_object_is_not_found_but_a_removed_one_keeps_its_history(
    platform: Platform, admin: Context, tmp_path: Path
) -> None:
    from modelyard.data import add_version, remove

    (tmp_path / "a.txt").write_text("a")
    for typo in ("dataset:tickest@1", "tickest@1", "model:t5@1", "run:" + "0" * 32):
        with pytest.raises(NotFoundError, match="not found in project 'default'; list what exists with"):
            lineage(platform, admin, typo)
    add_version(platform, admin, tmp_path / "a.txt", "tickets")  # not tmp_path: it holds the home
    up, down = lineage(platform, admin, "tickets@1")  # exists, nothing recorded yet: empty trees
    assert up.children == [] and down.children == []
    _edges(platform, admin, [("dataset:tickets@1", f"run:{RUN}", "input")])
    remove(platform, admin, "tickets@1")
    _, down = lineage(platform, admin, "tickets@1")  # gone, but what was made from it is still shown
    assert _refs(down) == [f"run:{RUN}"]
    up, down = lineage(platform, admin, f"artifact:{DIGEST}")  # no row of its own to look up
    assert up.children == [] and down.children == []


def test_viewer_reads_lineage(platform: Platform, admin: Context) -> None:
    _edges(platform, admin, [("dataset:x@1", f"run:{RUN}", "input")])
    viewer = actor(platform, admin, "vera", Role.VIEWER)
    up, _ = lineage(platform, viewer, f"run:{RUN}")
    assert _refs(up) == ["dataset:x@1"]


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "run:",
        "dataset:../../etc@1",
        "nosuchkind:abc",
        "dataset:a b@1",
        "run:abc'; DROP TABLE lineage_edges; --",
        "artifact:" + "x" * 400,
        "dataset:\x00@1",
        "../etc/passwd",
    ],
)
def test_bad_references_are_usage_errors(platform: Platform, admin: Context, bad: str) -> None:
    with pytest.raises(UsageError):
        lineage(platform, admin, bad)
    with pytest.raises(UsageError), platform.db.write() as s:
        add_edges(s, admin, [(bad, f"run:{RUN}", "input")])
    with platform.db.read() as s:
        assert downstream_refs(s, admin.project_id, f"run:{RUN}") == set()


def test_cli_lineage_show(platform: Platform, admin: Context, capsys: pytest.CaptureFixture[str]) -> None:
    _edges(
        platform,
        admin,
        [("dataset:raw@2", f"run:{RUN}", "input"), (f"run:{RUN}", f"artifact:{DIGEST}", "output")],
    )
    capsys.readouterr()
    assert main(["lineage", "show", RUN, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ref"] == f"run:{RUN}"
    assert [n["ref"] for n in out["upstream"]] == ["dataset:raw@2"]
    assert [n["ref"] for n in out["downstream"]] == [f"artifact:{DIGEST}"]
    assert main(["lineage", "show", f"run:{RUN}"]) == 0
    text = capsys.readouterr().out
    assert "upstream" in text and "dataset:raw@2" in text and "(input)" in text
    assert main(["lineage", "show", "nosuchkind:x"]) == 2
    assert "is not an object reference" in capsys.readouterr().err


def test_cli_lineage_show_takes_the_run_id_prefix_that_runs_ls_shows(
    platform: Platform, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # `yard runs ls` shows 12 characters of a run id and `yard runs show` takes them; `yard lineage show`
    # refused them as "not an object reference".
    from modelyard.tracking import Client

    src = tmp_path / "report.txt"
    src.write_text("r")
    with Client(platform=platform) as client, client.start_run("prefix", capture=False) as run:
        (digest,) = run.log_artifact(src)
    capsys.readouterr()
    for arg in (run.id[:12], f"run:{run.id[:12]}"):
        assert main(["lineage", "show", arg, "--json"]) == 0, capsys.readouterr().err
        out = json.loads(capsys.readouterr().out)
        assert out["ref"] == f"run:{run.id}"
        assert [n["ref"] for n in out["downstream"]] == [f"artifact:{digest}"]
    assert main(["lineage", "show", "0123456789ab"]) == 1  # a prefix of no run: not found
    assert "not found" in capsys.readouterr().err
