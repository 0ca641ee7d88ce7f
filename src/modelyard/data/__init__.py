"""Dataset versions: manifests, schema and statistics, diff, checkout, PII scan and anonymisation.

Every function takes a :class:`~modelyard.core.Platform` and a :class:`~modelyard.core.Context` first,
except :func:`get`, which opens the platform from the settings and acts as the current user.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from modelyard.data._anonymize import anonymize, scan
from modelyard.data._versions import (
    DatasetInfo,
    DiffResult,
    VersionInfo,
    add_version,
    checkout,
    diff,
    files,
    list_datasets,
    list_versions,
    load_profile,
    remove,
    show,
)

if TYPE_CHECKING:
    from modelyard.core import Context, Platform


def get(spec: str, *, platform: Platform | None = None, ctx: Context | None = None) -> Path:
    """Local path of a verified copy of dataset version ``spec`` ("name@3", or "name" for the latest),
    checked out into $YARD_HOME/cache/data and reused while it still matches its manifest."""
    from modelyard.core import Platform
    from modelyard.data._versions import get as _get

    if platform is not None:
        return _get(platform, ctx or platform.context(), spec)
    with Platform() as opened:
        return _get(opened, ctx or opened.context(), spec)


__all__ = [
    "DatasetInfo",
    "DiffResult",
    "VersionInfo",
    "add_version",
    "anonymize",
    "checkout",
    "diff",
    "files",
    "get",
    "list_datasets",
    "list_versions",
    "load_profile",
    "remove",
    "scan",
    "show",
]
