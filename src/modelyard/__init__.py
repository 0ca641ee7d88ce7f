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

_LAZY = {
    "Settings": "modelyard.config",
    "load_settings": "modelyard.config",
    "Context": "modelyard.core",
    "Platform": "modelyard.core",
    "Role": "modelyard.core",
    "init_home": "modelyard.core",
}

__all__ = [
    "Context",
    "Platform",
    "Role",
    "Settings",
    "YardError",
    "__version__",
    "init_home",
    "load_settings",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'modelyard' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
