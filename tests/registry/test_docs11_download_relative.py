"""`yard models download NAME@V DIR --overwrite` with a relative DIR, as docs/registry.md shows it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from modelyard import registry
from modelyard.core import Platform


def test_overwrite_into_a_relative_directory(
    platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    (src / "tok").mkdir(parents=True)
    save_file({"w": np.zeros((2, 2), dtype=np.float32)}, str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps({"model_type": "t5"}))
    (src / "tok" / "tokenizer.json").write_text("{}")
    ctx = platform.context()
    registry.register(platform, ctx, src, "m")
    monkeypatch.chdir(tmp_path)
    registry.download(platform, ctx, "m@1", "dl")
    (tmp_path / "dl" / "config.json").write_text("damaged")
    # The temp directory beside a relative DIR was relative too, and the files' resolved paths were not
    # "relative to" it: an unexpected ValueError, the files left unreplaced.
    info, out = registry.download(platform, ctx, "m@1", "dl", overwrite=True)
    assert info.version == 1 and out == Path("dl")
    for f in ("model.safetensors", "config.json", "tok/tokenizer.json"):
        assert (tmp_path / "dl" / f).read_bytes() == (src / f).read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dl", "home", "src"]  # no temp directory left
