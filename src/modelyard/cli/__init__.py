"""The ``yard`` command line. Each stage adds one module of commands; all of them call the services."""

# Importing a module registers its commands on the root app.
from modelyard.cli import core as _core  # noqa: F401
from modelyard.cli import data as _data  # noqa: F401
from modelyard.cli import evaluate as _evaluate  # noqa: F401
from modelyard.cli import examples as _examples  # noqa: F401
from modelyard.cli import jobs as _jobs  # noqa: F401
from modelyard.cli import lineage as _lineage  # noqa: F401
from modelyard.cli import monitor as _monitor  # noqa: F401
from modelyard.cli import optimize as _optimize  # noqa: F401
from modelyard.cli import quickstart as _quickstart  # noqa: F401
from modelyard.cli import registry as _registry  # noqa: F401
from modelyard.cli import serving as _serving  # noqa: F401
from modelyard.cli import tracking as _tracking  # noqa: F401
from modelyard.cli import training as _training  # noqa: F401
from modelyard.cli._app import app, main

__all__ = ["app", "main"]
