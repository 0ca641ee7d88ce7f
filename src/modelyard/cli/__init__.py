"""The ``yard`` command line. Each stage adds one module of commands; all of them call the services."""

from modelyard.cli import core as _core  # noqa: F401  (registers the core commands)
from modelyard.cli._app import app, main

__all__ = ["app", "main"]
