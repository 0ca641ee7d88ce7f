"""The ``yard`` command line. Each stage adds one module of commands; all of them call the services.

Importing this package is cheap: the console script first asks a running ``yard agent`` to run the
command (see :mod:`modelyard.cli._agent`) and loads the commands only when it runs them itself.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modelyard.cli._app import app

__all__ = ["app", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """The ``yard`` console script (see :func:`modelyard.cli._app.main`). Without ``argv`` a running agent
    runs the command; with it, this process does (as ``python -m modelyard.cli`` always does)."""
    if argv is None:
        from modelyard.cli import _agent

        code = _agent.forward(sys.argv[1:])
        if code is not None:
            return code
    from modelyard.cli import _app

    return _app.main(argv)


def __getattr__(name: str) -> Any:
    if name == "app":
        from modelyard.cli._app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
