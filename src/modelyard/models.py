"""``modelyard.models``: the registry's SDK verbs for scripts and services.

``modelyard.models.load("support-t5@production")`` returns the verified version in memory; the other
names are the registry's services (see :mod:`modelyard.registry`).
"""

from modelyard.registry import (
    LoadedModel,
    download,
    list_models,
    list_versions,
    load,
    promote,
    register,
    rollback,
    show,
    verify,
)

__all__ = [
    "LoadedModel",
    "download",
    "list_models",
    "list_versions",
    "load",
    "promote",
    "register",
    "rollback",
    "show",
    "verify",
]
