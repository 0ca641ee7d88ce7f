"""The trained tokenizer a run keeps beside its checkpoints (``tokenizer/`` and its ``done`` record of
digests), read again by a resume."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from modelyard.errors import IntegrityError
from modelyard.training import parse_recipe
from modelyard.training._train import _tokenizer_files

RECIPE = parse_recipe(
    {
        "data": {"train": "norm@1"},
        "tokenizer": {"train": "sentencepiece", "vocab_size": 120},
        "model": {"init": "scratch", "preset": "tiny"},
        "hyperparameters": {"lr": 1e-3, "max_steps": 1},
    }
)


def _kept(root: Path, files: dict[str, bytes]) -> Path:
    tok = root / "tokenizer"
    tok.mkdir(parents=True)
    for name, data in files.items():
        (tok / name).write_bytes(data)
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    (tok / "done").write_text(json.dumps(digests), encoding="utf-8")
    return tok


def test_a_leftover_temp_file_of_the_done_record_is_not_part_of_the_tokenizer(tmp_path: Path) -> None:
    # done is written to a temp file and renamed; a crash between the two leaves the temp file behind.
    tok = _kept(tmp_path, {"tokenizer.json": b"{}", "spiece.model": b"model"})
    (tok / ".done.x1y2.tmp").write_text('{"tokenizer.json": ', encoding="utf-8")
    assert _tokenizer_files(RECIPE, [], tmp_path) == {"spiece.model": b"model", "tokenizer.json": b"{}"}


@pytest.mark.parametrize("done", ['{"tokenizer.json": ', "[1, 2]", '{"tokenizer.json": 5}'])
def test_a_malformed_done_record_is_refused_as_an_altered_tokenizer(tmp_path: Path, done: str) -> None:
    tok = _kept(tmp_path, {"tokenizer.json": b"{}"})
    (tok / "done").write_text(done, encoding="utf-8")  # was an "unexpected JSONDecodeError"
    with pytest.raises(IntegrityError, match=r"tokenizer/done: not a record of the tokenizer's files"):
        _tokenizer_files(RECIPE, [], tmp_path)
