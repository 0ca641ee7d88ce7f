"""Root Typer app, shared options and the one error handler.

Commands import the services they call lazily, so ``yard --help`` stays fast and never imports torch.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import functools
import json
import os
import sys
import traceback
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from modelyard import __version__
from modelyard.errors import UsageError, YardError

if TYPE_CHECKING:
    from modelyard.core import Context, Platform

app = typer.Typer(
    name="yard",
    help="modelyard: data, experiments, training, registry, optimisation, serving and monitoring.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    add_completion=False,
)
# soft_wrap: piped or captured output keeps its lines whole (Rich cuts at 80). emoji off: Rich would show a
# name or path holding ':fire:' as the emoji, even with markup=False, so errors misquoted what was typed.
_CONSOLE: dict[str, Any] = {"soft_wrap": True, "emoji": False}
console = Console(**_CONSOLE)
err_console = Console(stderr=True, highlight=False, **_CONSOLE)
_PIPED_WIDTH = 1000  # the widest a piped table grows before its cells wrap


def reset_consoles() -> None:
    """Read the terminal and the environment again (Rich reads them when a Console is made): a command run
    by ``yard agent`` is forked from a process that had neither the caller's terminal nor environment."""
    console.__init__(**_CONSOLE)  # type: ignore[misc]
    err_console.__init__(stderr=True, highlight=False, **_CONSOLE)  # type: ignore[misc]


@dataclass
class State:
    debug: bool = False
    project: str | None = None


# Root options for the commands of one invocation; main() resets it, so nothing leaks between calls.
_STATE: contextvars.ContextVar[State | None] = contextvars.ContextVar("yard_cli_state", default=None)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"modelyard {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors.", envvar="YARD_DEBUG"),
    project: str | None = typer.Option(
        None, "--project", "-p", help="Project to act in (default YARD_PROJECT)."
    ),
) -> None:
    if project is not None:
        # Checked here, not when the project is looked up: -p "" (a script's unset variable) fell back to the
        # default project, and a name no project can have was answered `yard projects create NAME makes it`.
        from modelyard.config import check_name

        try:
            check_name(project, "project")
        except ValueError as exc:
            raise UsageError(f"--project: {exc}") from None
    _STATE.set(State(debug=debug, project=project))


def state() -> State:
    return _STATE.get() or State()


@contextlib.contextmanager
def acting() -> Iterator[tuple[Platform, Context]]:
    """Open the platform and resolve who is acting (YARD_TOKEN, else the OS user)."""
    from modelyard.core import Platform

    with Platform() as platform:
        yield platform, platform.context(project=state().project)


# What is shown is never obeyed: a CSV header, a run's tag or a stored message could hold escape sequences
# that set the terminal's title or clipboard (OSC 52), or bidi controls that reorder what is read.
_HIDDEN = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def plain(value: object) -> str:
    """``value`` with control and invisible characters written as escapes (\\x1b, \\u202e)."""
    text = str(value)
    if text.isascii() and text.isprintable():
        return text
    import unicodedata

    return "".join(
        c.encode("unicode_escape").decode() if c not in "\n\t" and unicodedata.category(c) in _HIDDEN else c
        for c in text
    )


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    from rich.table import Table  # on first use: most commands print no table
    from rich.text import Text

    # Text everywhere: stored names are never read as markup ([red]) or emoji codes (:fire:).
    t = Table(title=None if title is None else Text(plain(title), style="table.title"), show_lines=False)
    for col in columns:
        t.add_column(Text(plain(col)))
    for row in rows:
        t.add_row(*(Text("" if v is None else plain(v)) for v in row))
    print_whole(t)


def print_whole(renderable: Any) -> None:
    """Print a table or tree; piped or captured, as wide as it needs (Rich would cut it at 80 columns)."""
    out = console
    if not console.is_terminal:
        from rich.measure import Measurement

        natural = Measurement.get(console, console.options.update(max_width=_PIPED_WIDTH), renderable).maximum
        out = Console(width=max(console.width, natural), emoji=False)
    out.print(renderable)


def print_json(data: Any) -> None:
    def default(o: Any) -> Any:
        return o.isoformat() if isinstance(o, datetime) else str(o)

    typer.echo(json.dumps(data, default=default, indent=2))


def _fail(message: str, code: int, debug: bool) -> int:
    try:
        if debug:
            traceback.print_exc()
        err_console.print(f"error: {message}", markup=False)
    except (BrokenPipeError, SystemExit) as exc:  # `2>&1 | head`, reader gone: the code still tells
        if not _broken_pipe(exc):
            raise
        _silence_stdio()
    return code


_DISK_FULL = "free some space there, or use a home on another filesystem (YARD_HOME)"
_NO_WRITE = "check the permissions of that path and of the user running yard"
# What to do about the OSErrors a command meets most (a full disk, a read-only mount, permissions).
_OS_REMEDIES = {
    errno.ENOSPC: _DISK_FULL,
    errno.EDQUOT: _DISK_FULL,
    errno.EROFS: "the filesystem is read-only: remount it read-write, or use a home elsewhere (YARD_HOME)",
    errno.EACCES: _NO_WRITE,
    errno.EPERM: _NO_WRITE,
    errno.EIO: "the device reported a read or write failure: check the disk and filesystem before retrying",
}


def _path_text(name: object) -> str:
    return os.fsdecode(name) if isinstance(name, bytes) else str(name)


def os_error_message(exc: OSError, debug: bool) -> str:
    """An OSError that escaped a command as "<reason>: <path> (<remedy>)", without Python's "[Errno N]";
    the disk, not modelyard, is usually what has to change."""
    message = str(exc.strerror)
    if exc.filename is not None:
        message += f": {_path_text(exc.filename)}"
        if exc.filename2 is not None:  # rename, link: both sides
            message += f" -> {_path_text(exc.filename2)}"
    remedy = _OS_REMEDIES.get(exc.errno or 0)
    if remedy is None:
        return message if debug else f"{message} (rerun with --debug for the traceback)"
    return f"{message} ({remedy})"


# A reader that stops early (`yard runs ls | head -1`) is not a failure: exit quietly with 141 (128 + SIGPIPE,
# what git and the shell report when SIGPIPE ends a command), never 1 (Typer's choice, the code of a failure)
# and never an error line. SIGPIPE is not set back to its default to get this: a closed socket (the
# PostgreSQL server, an HTTP peer) would then kill the process without a word.
EXIT_BROKEN_PIPE = 141


def _silence_stdio() -> None:
    """Point stdout and stderr at /dev/null, so the flush at interpreter exit cannot raise BrokenPipeError
    again (the Python docs' "Note on SIGPIPE")."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for stream in (sys.stdout, sys.stderr):
            try:
                os.dup2(devnull, stream.fileno())
            except (AttributeError, OSError, ValueError):  # in-process callers may capture into memory
                pass
    finally:
        os.close(devnull)


def _broken_pipe(exc: BaseException | None) -> bool:
    """A write to a closed pipe, or the SystemExit(1) that Typer and Rich raise while handling one."""
    if isinstance(exc, SystemExit):
        exc = exc.__context__
    return isinstance(exc, OSError) and exc.errno == errno.EPIPE


_ROOT_OPTIONS = ("--debug", "-p", "--project")


def _root_options_first(args: list[str]) -> list[str]:
    """The root options (--debug, -p/--project NAME) moved before the command, from anywhere before `--`.
    Errors say "rerun with --debug" and docs/jobs.md gives `yard worker` a project with -p, and users
    append them, but the subcommands' parsers refused both as "No such option" (no command has its own).
    The value of another option is left alone (`--message -p` is a message)."""
    end = args.index("--") if "--" in args else len(args)
    if not any(a in _ROOT_OPTIONS or a.startswith("--project=") for a in args[:end]):
        return args  # the usual case: no command tree to build
    valued = _value_options(args[:end])
    debug: list[str] = []
    project: list[str] = []
    rest: list[str] = []
    i = 0
    while i < end:
        arg = args[i]
        if arg == "--debug":
            debug = [arg]
        elif arg in ("-p", "--project") and i + 1 < end:
            project = [arg, args[i + 1]]
            i += 1
        elif arg.startswith("--project="):
            project = [arg]
        elif arg in valued and i + 1 < end:
            rest += [arg, args[i + 1]]
            i += 1
        else:
            rest.append(arg)
        i += 1
    return [*debug, *project, *rest, *args[end:]]


def _value_options(args: list[str]) -> set[str]:
    """The options that take a value (``--message TEXT``) of the commands ``args`` name, root's aside."""
    command: Any = click_command()
    valued: set[str] = set()
    for arg in args:
        sub = None if arg.startswith("-") else getattr(command, "commands", {}).get(arg)
        if sub is None:
            continue
        command = sub
        for param in command.params:
            if getattr(param, "param_type_name", "") == "option" and not (param.is_flag or param.count):
                valued.update(param.opts + param.secondary_opts)
    return valued - set(_ROOT_OPTIONS)


@functools.cache
def click_command() -> Any:
    """The command tree of ``app``, built once per process (Typer builds it on every call, and building
    all the commands took longer than running a short one); ``yard agent`` builds it before it forks."""
    return typer.main.get_command(app)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point. Exit 2 for usage errors, 1 for failures, 141 when the reader of the output went
    away (see EXIT_BROKEN_PIPE); traceback only with --debug."""
    args = _root_options_first(list(sys.argv[1:] if argv is None else argv))
    debug = args[:1] == ["--debug"] or os.environ.get("YARD_DEBUG", "").lower() in {"1", "true", "yes"}
    token = _STATE.set(State(debug=debug))
    try:
        result = click_command()(args=args, prog_name="yard", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except (BrokenPipeError, SystemExit) as exc:
        # Typer and Rich answer a write to a closed pipe with SystemExit(1), raised while handling it.
        if not _broken_pipe(exc):
            raise
        _silence_stdio()
        return EXIT_BROKEN_PIPE
    except YardError as exc:
        return _fail(exc.message, exc.exit_code, debug)
    except KeyboardInterrupt:
        return _fail("interrupted", 130, debug)
    except Exception as exc:
        # Typer vendors its own click, so its exceptions are matched by shape, not by class.
        kind = type(exc).__name__
        if kind == "Exit" or isinstance(exc, typer.Exit):
            return int(getattr(exc, "exit_code", 0))
        if kind == "NoArgsIsHelpError":
            getattr(exc, "show")()  # noqa: B009
            return 0
        if kind == "Abort" or isinstance(exc, typer.Abort):
            return _fail("aborted", 1, debug)
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            message = exc.format_message()
            if exc.exit_code == 2:  # click.UsageError and its subclasses
                cctx = getattr(exc, "ctx", None)
                where = cctx.command_path if cctx is not None else "yard"
                return _fail(f"{message} (see `{where} --help`)", 2, debug)
            return _fail(message, int(exc.exit_code), debug)
        if isinstance(exc, OSError) and exc.strerror:
            return _fail(os_error_message(exc, debug), 1, debug)
        hint = "" if debug else " (rerun with --debug for the traceback)"
        return _fail(f"unexpected {kind}: {exc}{hint}", 1, debug)
    finally:
        _STATE.reset(token)


def region_option(region: str | None) -> str | None:
    """A --region as given, checked: the services read '' as no region (the default one), so a script's
    unset $REGION put data, or a new project for good, in the default region instead of being refused."""
    if region is None:
        return None
    from modelyard.config import check_region

    try:
        return check_region(region)
    except ValueError as exc:  # a bad option value is a usage error (exit 2)
        raise UsageError(f"--region: {exc}") from None


def usage(message: str) -> UsageError:
    return UsageError(message)


# Importing a module registers its commands on the root app; every command is there once this module is.
from modelyard.cli import agent as _agent_cli  # noqa: E402, F401
from modelyard.cli import core as _core  # noqa: E402, F401
from modelyard.cli import data as _data  # noqa: E402, F401
from modelyard.cli import evaluate as _evaluate  # noqa: E402, F401
from modelyard.cli import examples as _examples  # noqa: E402, F401
from modelyard.cli import jobs as _jobs  # noqa: E402, F401
from modelyard.cli import lineage as _lineage  # noqa: E402, F401
from modelyard.cli import monitor as _monitor  # noqa: E402, F401
from modelyard.cli import optimize as _optimize  # noqa: E402, F401
from modelyard.cli import quickstart as _quickstart  # noqa: E402, F401
from modelyard.cli import registry as _registry  # noqa: E402, F401
from modelyard.cli import serving as _serving  # noqa: E402, F401
from modelyard.cli import tracking as _tracking  # noqa: E402, F401
from modelyard.cli import training as _training  # noqa: E402, F401
