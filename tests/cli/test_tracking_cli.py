"""``yard runs ...`` driven in-process through ``modelyard.cli.main``, on a home made by `yard init`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelyard.core import Platform
from modelyard.testing import Yard
from modelyard.tracking import Client


@pytest.fixture
def runs(yard: Yard) -> list[str]:
    assert yard("init").code == 0
    ids = []
    with Platform() as platform, Client(platform=platform) as client:
        for lr, rouge in (("1e-4", 0.35), ("1e-3", 0.5)):
            with client.start_run("cli", params={"lr": lr}, capture=False) as run:
                for step in range(5):
                    run.log_metrics({"rougeL": rouge * step / 4, "loss": 1 - step / 10}, step=step)
            ids.append(run.id)
    return ids


def test_ls_filter_and_json(yard: Yard, runs: list[str]) -> None:
    r = yard("runs", "ls")
    assert r.code == 0, r.err
    assert runs[0][:12] in r.out and runs[1][:12] in r.out and "rougeL" in r.out
    r = yard("runs", "ls", "--experiment", "cli", "--filter", "metrics.rougeL > 0.4", "--json")
    assert r.code == 0, r.err
    assert [x["id"] for x in json.loads(r.out)] == [runs[1]]
    r = yard("runs", "ls", "-o", "metrics.rougeL ASC", "--json")
    assert [x["id"] for x in json.loads(r.out)] == runs


def test_bad_filter_is_one_error_line_exit_2(yard: Yard, runs: list[str]) -> None:
    r = yard("runs", "ls", "--filter", "params.lr = ''; DROP TABLE runs")
    assert r.code == 2
    assert r.err.strip().startswith("error: invalid filter at position 15")
    assert len(r.err.strip().splitlines()) == 1
    assert yard("runs", "ls", "--json").code == 0


def test_show_by_prefix(yard: Yard, runs: list[str]) -> None:
    r = yard("runs", "show", runs[0][:8])
    assert r.code == 0, r.err
    assert runs[0] in r.out and "FINISHED" in r.out and "1e-4" in r.out and "rougeL" in r.out
    data = json.loads(yard("runs", "show", runs[0], "--json").out)
    assert data["params"] == {"lr": "1e-4"} and data["artifacts"] == []


@pytest.mark.parametrize(
    ("arg", "code", "message"),
    [("0" * 32, 1, "not found"), ("zz", 2, "not a run id"), ("abcdef", 1, "not found")],
)
def test_show_unknown_run(yard: Yard, runs: list[str], arg: str, code: int, message: str) -> None:
    r = yard("runs", "show", arg)
    assert r.code == code and message in r.err


def test_compare(yard: Yard, runs: list[str]) -> None:
    r = yard("runs", "compare", *runs)
    assert r.code == 0, r.err
    assert "params.lr *" in r.out and "metrics.rougeL" in r.out
    data = json.loads(yard("runs", "compare", *runs, "--json").out)
    assert data["params"]["lr"] == ["1e-4", "1e-3"]
    assert data["metrics"]["rougeL"] == [0.35, 0.5]
    r = yard("runs", "compare", runs[0])
    assert r.code == 2 and "two or more runs" in r.err


def test_a_bad_order_by_is_named_as_such(yard: Yard, runs: list[str]) -> None:
    r = yard("runs", "ls", "-o", "foo DESC")
    assert r.code == 2 and r.err.startswith("error: invalid order_by item at position 1: unknown field 'foo'")


def test_metrics_and_plot(yard: Yard, runs: list[str], tmp_path: Path) -> None:
    r = yard("runs", "metrics", runs[1])
    assert r.code == 0, r.err
    assert "rougeL" in r.out and "loss" in r.out
    data = json.loads(yard("runs", "metrics", runs[1], "--key", "loss", "--json").out)
    assert [p["step"] for p in data["loss"]] == [0, 1, 2, 3, 4] and set(data) == {"loss"}
    pytest.importorskip("matplotlib")
    out = tmp_path / "curves.png"
    r = yard("runs", "metrics", runs[1], "--plot", "--output", out)
    assert r.code == 0, r.err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    victim = tmp_path / "victim"  # a link planted at the output is replaced, not written through
    victim.write_text("keep me")
    out.unlink()
    out.symlink_to(victim)
    assert yard("runs", "metrics", runs[1], "--plot", "--output", out).code == 0
    assert victim.read_text() == "keep me" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = yard("runs", "metrics", runs[1], "--key", "nope")
    assert r.code == 2 and "no metric 'nope'" in r.err
    r = yard("runs", "metrics", runs[1], "--plot", "--output", tmp_path / "missing" / "curves.png")
    assert r.code == 2 and r.err.strip().splitlines() == [
        f"error: cannot write --output {tmp_path / 'missing' / 'curves.png'}: No such file or directory"
    ]


def test_help_lists_the_runs_commands(yard: Yard) -> None:
    r = yard("runs", "--help")
    assert r.code == 0
    for command in ("ls", "show", "compare", "metrics"):
        assert f" {command} " in r.out


def test_a_runs_values_reach_the_terminal_escaped(yard: Yard, runs: list[str]) -> None:
    """Params and tags are anyone's text (a config file, a CI variable): an escape sequence in one (here
    OSC 52, which sets the clipboard) reached the terminal of whoever ran `yard runs show`."""
    note = "a\x1b]52;c;cm0gLXJmIH4=\x07b"
    with (
        Platform() as platform,
        Client(platform=platform) as client,
        client.start_run("cli", params={"note": note}, capture=False) as run,
    ):
        run.set_tag("who", "x\u202ey")
    r = yard("runs", "show", run.id)
    assert r.code == 0, r.err
    assert "\x1b" not in r.out and "\x07" not in r.out and "\u202e" not in r.out
    assert "a\\x1b]52;c;cm0gLXJmIH4=\\x07b" in r.out and "x\\u202ey" in r.out


def test_lineage_takes_the_run_id_runs_ls_shows(yard: Yard, runs: list[str]) -> None:
    shown = runs[0][:12]  # the id column of `yard runs ls`
    for ref in (shown, f"run:{shown}", f"run:{runs[0][:6]}"):
        r = yard("lineage", "show", ref, "--json")
        assert r.code == 0, r.err
        assert r.json()["ref"] == f"run:{runs[0]}"
    r = yard("lineage", "show", "run:0000000")
    assert r.code == 1 and "run 0000000 not found" in r.error


@pytest.mark.parametrize("group", ["runs", "lineage"])
def test_group_without_command_shows_help(yard: Yard, group: str) -> None:
    r = yard(group)  # as `yard data` does: the help (on stderr, as click shows it), exit 0
    assert r.code == 0, r.err
    assert f"Usage: yard {group}" in r.err and "Commands:" in r.err
