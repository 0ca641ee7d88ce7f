"""Drive the real ``yard`` command line in-process from tests (fast; subprocesses where exit codes or
imports are the point)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]

    @property
    def error(self) -> str:
        """The one `error: ...` line a failing command prints."""
        assert len(self.err_lines) == 1, f"expected one error line, got:\n{self.err}"
        line = self.err_lines[0]
        assert line.startswith("error: "), line
        return line

    def json(self) -> Any:
        assert self.code == 0, self.err
        return json.loads(self.out)


Yard = Callable[..., CliResult]


def cli_runner(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, cwd: Path) -> Yard:
    """A function running ``yard ARGS`` in this process from ``cwd``; its ``env`` sets (or with None,
    unsets) variables for that call."""
    from modelyard.cli import main

    monkeypatch.chdir(cwd)  # relative paths in arguments land in the test's folder
    monkeypatch.setenv("COLUMNS", "250")  # Rich tables: no wrapping of paths and digests
    monkeypatch.setenv("NO_COLOR", "1")

    def run(*args: str | Path, env: dict[str, str | None] | None = None) -> CliResult:
        capsys.readouterr()
        with monkeypatch.context() as m:
            for key, value in (env or {}).items():
                if value is None:
                    m.delenv(key, raising=False)
                else:
                    m.setenv(key, value)
            code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run
