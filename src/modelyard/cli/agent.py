"""``yard agent start|stop|status``: a warm process that runs this user's ``yard`` commands (Linux).

Each command then skips the interpreter start and the imports (most of a short command's time); it still
runs in its own fresh process, with the caller's folder, environment and terminal. See
:mod:`modelyard.cli._agent` for how, and for what keeps another user out.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import typer

from modelyard.cli._app import app, console, print_json
from modelyard.errors import UsageError

agent_app = typer.Typer(
    help="A warm background process that runs your yard commands faster (Linux).", no_args_is_help=True
)
app.add_typer(agent_app, name="agent")


def _describe(info: dict[str, object]) -> str:
    since = float(info["since"])  # type: ignore[arg-type]
    return (
        f"agent pid {info['pid']} at {info['socket']}, up {time.time() - since:.0f} s, "
        f"{info['served']} command(s) run, {info['running']} running"
        + (" (stopping)" if info.get("stopping") else "")
    )


@contextlib.contextmanager
def _usage_errors() -> Iterator[None]:
    """The agent's refusals (a folder that is not private, a path too long) are the user's to fix: exit 2."""
    from modelyard.cli._agent import AgentError

    try:
        yield
    except AgentError as exc:
        raise UsageError(str(exc)) from None


@agent_app.command("start")
def start(
    idle: float = typer.Option(
        900.0, "--idle", min=1.0, max=7 * 86400.0, help="Exit after this many seconds without a command."
    ),
) -> None:
    """Start the agent (or find the running one). Commands use it while it runs; YARD_AGENT=0 skips it."""
    from modelyard.cli import _agent

    with _usage_errors():
        info = _agent.start(idle)
    assert info is not None
    said = "already running: " if info.get("already") else "started "
    console.print(said + _describe(info), markup=False)


@agent_app.command("stop")
def stop() -> None:
    """Stop the agent: it takes no new command and exits when the running ones end."""
    from modelyard.cli import _agent

    with _usage_errors():
        info = _agent.stop()
    console.print("no agent is running" if info is None else "stopping " + _describe(info), markup=False)


@agent_app.command("status")
def status(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Whether an agent runs for this installation (exit 1 when none does)."""
    from modelyard.cli import _agent

    with _usage_errors():
        info = _agent.status()
    if as_json:
        print_json(info)
    else:
        console.print("no agent is running" if info is None else _describe(info), markup=False)
    if info is None:
        raise typer.Exit(1)
