"""Pipelines that chain the stages: :func:`quickstart` runs the whole lifecycle once (``yard quickstart``)."""

from modelyard.pipelines._quickstart import Quickstart, Step
from modelyard.pipelines._quickstart import run as quickstart

__all__ = ["Quickstart", "Step", "quickstart"]
