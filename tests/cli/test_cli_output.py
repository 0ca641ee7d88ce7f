"""What the CLI prints is what the user typed or stored: Rich must not read names as markup or emoji codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.core import Platform
from modelyard.testing import Yard
from modelyard.tracking import Client


@pytest.fixture
def run_id(yard: Yard) -> str:
    assert yard("init").code == 0
    with (
        Platform() as platform,
        Client(platform=platform) as client,
        client.start_run("out", capture=False) as run,
    ):
        run.log_metrics({"loss": 0.5}, step=0)
    return run.id


def test_error_line_quotes_emoji_codes_as_typed(yard: Yard) -> None:
    assert yard("init").code == 0
    r = yard("data", "show", "x:smile:@1")
    assert r.code == 2
    assert "'x:smile:'" in r.error


def test_plot_path_printed_as_written(yard: Yard, run_id: str, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    for name in ("[red]curves.png", ":fire:.png"):
        r = yard("runs", "metrics", run_id, "--plot", "--output", name)
        assert r.code == 0, r.err
        assert (tmp_path / name).is_file()
        assert r.out.splitlines()[-1] == f"wrote {name}"


def test_metrics_output_alone_writes_the_plot(yard: Yard, run_id: str, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    r = yard("runs", "metrics", run_id, "--output", "curves.png")  # --output names the PNG: it asks for one
    assert r.code == 0, r.err
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")
    r = yard("runs", "metrics", run_id, "--plot", "--output", "both.png", "--json")
    assert r.code == 0, r.err
    assert list(r.json()) == ["loss"]  # stdout stays one JSON document
    assert (tmp_path / "both.png").is_file() and "wrote both.png" in r.err


def test_export_without_a_directory_says_so(yard: Yard) -> None:
    # The one argument was taken for DIR, and the error asked for the models the user had just named.
    r = yard("serve", "support-t5@production", "--export", "k8s")
    assert r.code == 2
    assert "--export k8s needs the directory" in r.error and "NAME@ALIAS --export k8s DIR" in r.error
