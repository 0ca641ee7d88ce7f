"""modelyard: the whole model lifecycle in one package, secure by default, laptop to cluster.

The top level is deliberately small and imports nothing heavy: stages load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from modelyard.errors import YardError

__version__ = "0.1.0"

if TYPE_CHECKING:
    from modelyard.config import Settings, load_settings
    from modelyard.core import Context, Platform, Role, init_home
    from modelyard.tracking import (
        Client,
        end_run,
        log_artifact,
        log_dict,
        log_figure,
        log_metric,
        log_metrics,
        log_param,
        log_params,
        set_tag,
        set_tags,
        start_run,
    )

_LAZY = {
    "Settings": "modelyard.config",
    "load_settings": "modelyard.config",
    "Context": "modelyard.core",
    "Platform": "modelyard.core",
    "Role": "modelyard.core",
    "init_home": "modelyard.core",
    "Client": "modelyard.tracking",
    "start_run": "modelyard.tracking",
    "end_run": "modelyard.tracking",
    "log_param": "modelyard.tracking",
    "log_params": "modelyard.tracking",
    "log_metric": "modelyard.tracking",
    "log_metrics": "modelyard.tracking",
    "set_tag": "modelyard.tracking",
    "set_tags": "modelyard.tracking",
    "log_artifact": "modelyard.tracking",
    "log_dict": "modelyard.tracking",
    "log_figure": "modelyard.tracking",
}

__all__ = [
    "Client",
    "Context",
    "Platform",
    "Role",
    "Settings",
    "YardError",
    "__version__",
    "end_run",
    "init_home",
    "load_settings",
    "log_artifact",
    "log_dict",
    "log_figure",
    "log_metric",
    "log_metrics",
    "log_param",
    "log_params",
    "set_tag",
    "set_tags",
    "start_run",
]


# Stages reachable as attributes after a bare `import modelyard` (`modelyard.data.get("tickets@3")`, as the
# README writes it), imported on first use like the names above.
_STAGES = frozenset(
    {"config", "core", "data", "evaluation", "models", "monitoring", "optimize", "registry", "serving"}
    | {"tracking", "training"}
)


def __getattr__(name: str) -> Any:
    if name in _STAGES:
        return importlib.import_module(f"modelyard.{name}")  # the import binds it here too
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'modelyard' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
