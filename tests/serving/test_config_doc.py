"""docs/serving.md lists every serve config key with its default; this keeps that list true."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from modelyard.serving._config import parse_config

DOC = Path(__file__).resolve().parents[2] / "docs" / "serving.md"


def test_the_documented_config_is_every_key_at_its_default() -> None:
    block = re.search(r"```yaml\n(models:.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert block, "docs/serving.md must show the serve config"
    documented = yaml.safe_load(block.group(1))
    defaults = parse_config({"models": documented["models"]}).model_dump(mode="json")
    assert documented == defaults
